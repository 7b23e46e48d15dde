package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testbin"
	"github.com/tandem-project/tandem/internal/testpki"
)

// writeTLSFiles makes a CA and a server certificate for 127.0.0.1 and writes
// them where libnbd (tls-certificates=DIR: ca-cert.pem) and QEMU
// (tls-creds-x509 dir=DIR: ca-cert.pem) look for them.
func writeTLSFiles(t *testing.T) (dir, cert, key string) {
	t.Helper()
	ca := testpki.NewCA(t, "tandem test CA")
	dir = t.TempDir()
	testpki.WriteFile(t, filepath.Join(dir, "ca-cert.pem"), ca.PEM())
	cert, key = ca.Issue("127.0.0.1", "127.0.0.1", "localhost").Write(t, t.TempDir(), "server-cert.pem", "server-key.pem")
	return dir, cert, key
}

// TestTLS serves a volume with --tls-required and reaches it over TLS with
// nbdinfo (libnbd/GnuTLS) and qemu-io (QEMU's tls-creds-x509), while a
// client without TLS is refused.
func TestTLS(t *testing.T) {
	t.Parallel()
	testbin.Require(t, "nbdinfo", "qemu-io")
	caDir, cert, key := writeTLSFiles(t)
	a := startAgent(t, "--volume", "vol0=16M", "--tls-cert", cert, "--tls-key", key, "--tls-required")
	_, port, _ := net.SplitHostPort(a.NBDAddr)

	out := testbin.Run(t, toolTimeout, "nbdinfo", "nbds://127.0.0.1:"+port+"/vol0?tls-certificates="+caDir)
	if !strings.Contains(out, "with TLS") || !strings.Contains(out, "export-size: 16777216") {
		t.Errorf("nbdinfo over TLS:\n%s", out)
	}
	if out, err := testbin.RunErr(toolTimeout, "nbdinfo", a.URI("vol0")); err == nil {
		t.Errorf("a client without TLS was served by a --tls-required server:\n%s", out)
	}

	opts := "driver=nbd,host=127.0.0.1,port=" + port + ",export=vol0,tls-creds=tls0"
	out = testbin.Run(t, toolTimeout, "qemu-io",
		"--object", "tls-creds-x509,id=tls0,endpoint=client,dir="+caDir,
		"--image-opts", opts,
		"-c", "write -P 0x7e 0 1M", "-c", "read -P 0x7e 0 1M")
	if strings.Contains(out, "Pattern verification failed") || !strings.Contains(out, "read 1048576/1048576") {
		t.Errorf("qemu-io over TLS:\n%s", out)
	}
}

// TestTLSClientRevocation: with --tls-client-crl, NBD clients whose
// certificate the clients' CA revoked are refused (nbdinfo, with libnbd's
// GnuTLS), others served, and a new list takes effect without a restart.
func TestTLSClientRevocation(t *testing.T) {
	t.Parallel()
	testbin.Require(t, "nbdinfo")
	serverCADir, cert, key := writeTLSFiles(t)
	serverCA, err := os.ReadFile(filepath.Join(serverCADir, "ca-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	clients := testpki.NewCA(t, "tandem clients")
	dir := t.TempDir()
	caFile, crlFile := filepath.Join(dir, "clients.pem"), filepath.Join(dir, "clients-crl.pem")
	testpki.WriteFile(t, caFile, clients.PEM())
	alice, bob := clients.Issue("alice"), clients.Issue("bob")
	testpki.WriteFile(t, crlFile, clients.CRL(bob))
	a := startAgent(t, "--volume", "vol0=16M", "--tls-cert", cert, "--tls-key", key, "--tls-required",
		"--tls-client-ca", caFile, "--tls-client-crl", crlFile)
	_, port, _ := net.SplitHostPort(a.NBDAddr)
	// served runs nbdinfo as the holder of leaf (libnbd's tls-certificates
	// directory: ca-cert.pem, client-cert.pem, client-key.pem).
	served := func(leaf testpki.Leaf) bool {
		d := t.TempDir()
		testpki.WriteFile(t, filepath.Join(d, "ca-cert.pem"), serverCA)
		leaf.Write(t, d, "client-cert.pem", "client-key.pem")
		out, err := testbin.RunErr(toolTimeout, "nbdinfo", "--size", "nbds://127.0.0.1:"+port+"/vol0?tls-certificates="+d)
		return err == nil && strings.TrimSpace(out) == "16777216"
	}
	if !served(alice) {
		t.Fatal("a client the list does not name was refused")
	}
	if served(bob) {
		t.Fatal("a revoked client was served")
	}
	testpki.WriteFile(t, crlFile, clients.CRL(bob, alice))
	deadline := time.Now().Add(10 * time.Second)
	for served(alice) {
		if time.Now().After(deadline) {
			t.Fatal("a client revoked by a new list was still served 10 s after it was written")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !served(clients.Issue("carol")) {
		t.Fatal("a new client was refused")
	}
}

// TestAdminTLS: with --admin-tls-cert the admin API speaks HTTPS only, and
// follows its certificate files when they are renewed.
// (The CLI's --admin-ca is tested in cmd/tandem and, against a cluster,
// in e2e/deploy.)
func TestAdminTLS(t *testing.T) {
	t.Parallel()
	caDir, cert, key := writeTLSFiles(t)
	a := startAgent(t, "--volume", "vol0=16M", "--admin-listen", "127.0.0.1:0", "--admin-tls-cert", cert, "--admin-tls-key", key)
	m := regexp.MustCompile(`msg="serving admin API" addr=(\S+) tls=true`).FindStringSubmatch(a.Log())
	if m == nil {
		t.Fatalf("no HTTPS admin API in the log:\n%s", a.Log())
	}
	pem, err := os.ReadFile(filepath.Join(caDir, "ca-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	get := func(hc *http.Client, url string) (int, string) {
		t.Helper()
		resp, err := hc.Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	if code, body := get(hc, "https://"+m[1]+"/v1/volumes"); code != http.StatusOK || !strings.Contains(body, `"vol0"`) {
		t.Errorf("GET /v1/volumes over HTTPS: %d %s", code, body)
	}
	if code, body := get(&http.Client{Timeout: 10 * time.Second}, "http://"+m[1]+"/v1/volumes"); code != http.StatusBadRequest {
		t.Errorf("GET /v1/volumes over plain HTTP: %d %s", code, body)
	}
	// The certificate's expiry, in the metrics and (a day away, as the
	// test CA makes them) in a warning.
	certPEM, err := os.ReadFile(cert)
	if err != nil {
		t.Fatal(err)
	}
	expiry := testpki.Leaf{CertPEM: certPEM}.Cert(t).NotAfter.Unix()
	want := fmt.Sprintf(`tandem_tls_certificate_expiry_timestamp_seconds{role="admin"} %g`, float64(expiry))
	if _, body := get(hc, "https://"+m[1]+"/metrics"); !strings.Contains(body, want) {
		t.Errorf("no %q in the metrics", want)
	}
	if !strings.Contains(a.Log(), `msg="TLS certificate expires soon`) {
		t.Errorf("no expiry warning in the agent's log:\n%s", a.Log())
	}

	// A renewed certificate, from another CA, replaces the files: the
	// running agent serves it from its next connections on.
	renewed := testpki.NewCA(t, "renewed CA")
	leaf := renewed.Issue("127.0.0.1", "127.0.0.1")
	testpki.WriteFile(t, cert, leaf.CertPEM)
	testpki.WriteFile(t, key, leaf.KeyPEM)
	hc2 := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: renewed.Pool()}}}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := hc2.Get("https://" + m[1] + "/v1/volumes")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the renewed certificate was not served 10 s after the files changed: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(a.Log(), `msg="TLS certificate reloaded"`) {
		t.Errorf("no reload in the agent's log:\n%s", a.Log())
	}
}

// TestTLSFlags: bad TLS flag combinations are refused with a clear message.
func TestTLSFlags(t *testing.T) {
	t.Parallel()
	dir, cert, key := writeTLSFiles(t)
	ca := filepath.Join(dir, "ca-cert.pem")
	otherCRL := filepath.Join(dir, "other-crl.pem") // a revocation list of another CA
	testpki.WriteFile(t, otherCRL, testpki.NewCA(t, "other").CRL())
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--tls-required"}, "--tls-required, --tls-client-ca and --tls-client-crl need --tls-cert"},
		{[]string{"--tls-cert", cert, "--tls-key", key, "--tls-client-crl", otherCRL}, "--tls-client-crl needs --tls-client-ca"},
		{[]string{"--tls-cert", cert, "--tls-key", key, "--tls-client-ca", ca, "--tls-client-crl", ca}, "--tls-client-crl: no PEM revocation list"},
		{[]string{"--tls-cert", cert, "--tls-key", key, "--tls-client-ca", ca, "--tls-client-crl", otherCRL}, "--tls-client-crl: revocation list in " + otherCRL + ": not signed by a CA of the bundle"},
		{[]string{"--peer-tls-cert", cert, "--peer-tls-key", key, "--peer-tls-ca", ca, "--peer-tls-crl", otherCRL}, "--peer-tls-crl: revocation list"},
		{[]string{"--peer-tls-crl", otherCRL}, "--peer-tls-cert, --peer-tls-key and --peer-tls-ca go together"},
		{[]string{"--admin-tls-cert", cert, "--admin-tls-key", key, "--admin-listen", "127.0.0.1:0", "--admin-tls-crl", otherCRL}, "--admin-tls-crl needs --admin-tls-ca"},
		{[]string{"--tls-cert", cert}, "--tls-cert and --tls-key go together"},
		{[]string{"--tls-cert", cert, "--tls-key", "/nonexistent"}, "--tls-cert/--tls-key:"},
		{[]string{"--peer-tls-cert", cert}, "--peer-tls-cert, --peer-tls-key and --peer-tls-ca go together"},
		{[]string{"--peer-tls-cert", cert, "--peer-tls-key", key, "--peer-tls-ca", "/nonexistent"}, "--peer-tls-ca: open /nonexistent"},
		{[]string{"--peer-tls-cert", cert, "--peer-tls-key", key, "--peer-tls-ca", cert + "x"}, "--peer-tls-ca: open"},
		{[]string{"--peer-tls-cert", cert, "--peer-tls-key", key, "--peer-tls-ca", key}, "--peer-tls-ca: no certificate in"},
		{[]string{"--peer-tls-cert", cert, "--peer-tls-key", key, "--peer-tls-ca", ca}, "it needs --raft-listen"},
		{[]string{"--admin-tls-key", key}, "--admin-tls-cert and --admin-tls-key go together"},
		{[]string{"--admin-tls-cert", cert, "--admin-tls-key", key}, "it needs --admin-listen"},
		{[]string{"--admin-tls-cert", cert, "--admin-tls-key", key, "--admin-tls-ca", ca, "--admin-listen", "127.0.0.1:0"}, "--admin-tls-ca is for cluster mode"},
		{[]string{"--admin-tls-cert", cert, "--admin-tls-key", "/nonexistent", "--admin-listen", "127.0.0.1:0"}, "--admin-tls-cert/--admin-tls-key:"},
	} {
		full := append([]string{"agent", "--data", t.TempDir(), "--nbd-listen", "127.0.0.1:0", "--volume", "v=1M"}, tc.args...)
		out, err := testbin.RunErr(10*time.Second, testbin.Binary(t), full...)
		if err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("tandem %v: %v, want an error with %q:\n%s", tc.args, err, tc.want, out)
		}
	}
}
