package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tandem-project/tandem/internal/testpki"
)

func TestLoadRevocations(t *testing.T) {
	dir := t.TempDir()
	ca, other := testpki.NewCA(t, "peers"), testpki.NewCA(t, "other")
	revoked, kept := ca.Issue("n1", "127.0.0.1"), ca.Issue("n2", "127.0.0.2")
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		testpki.WriteFile(t, p, b)
		return p
	}
	caFile := write("ca.pem", ca.PEM())
	bundle := write("bundle.pem", append(other.PEM(), ca.PEM()...))
	crl := write("crl.pem", ca.CRL(revoked))
	for _, tc := range []struct {
		name, crl, ca, wantErr string
	}{
		{"one CA", crl, caFile, ""},
		{"issuer second in the bundle", crl, bundle, ""},
		{"two lists, one file", write("two.pem", append(other.CRL(), ca.CRL(revoked)...)), bundle, ""},
		{"another CA's list", write("other.pem", other.CRL(revoked)), caFile, "not signed by a CA of the bundle"},
		{"a certificate, not a list", caFile, caFile, "no PEM revocation list"},
		{"no such file", filepath.Join(dir, "none.pem"), caFile, "no such file"},
		{"no CA file", crl, filepath.Join(dir, "none.pem"), "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rev, err := LoadRevocations(tc.crl, tc.ca)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !rev.Has(revoked.Cert(t)) || rev.Has(kept.Cert(t)) || rev.Has(other.Issue("n1").Cert(t)) {
				t.Error("wrong certificates revoked")
			}
			if rev.NextUpdate.IsZero() {
				t.Error("no next update")
			}
		})
	}
	var none *Revocations
	if none.Has(revoked.Cert(t)) {
		t.Error("no list revokes a certificate")
	}
}

func TestNotAfter(t *testing.T) {
	leaf := testpki.NewCA(t, "peers").Issue("n1", "127.0.0.1")
	cert := leaf.TLS(t)
	cert.Leaf = nil // as a certificate built by hand has it
	id := &Identity{Cert: cert}
	if got, want := id.NotAfter(), leaf.Cert(t).NotAfter; !got.Equal(want) {
		t.Errorf("NotAfter %v, want %v", got, want)
	}
}

// TestRevokedPeer checks what VerifyConnection remembers of the peers it
// saw: the names of a revoked certificate are revoked peers until a
// certificate naming them passes (the host got a new one); the names of a
// certificate that passed are not, nor are names never seen, which it
// says it has not seen.
func TestRevokedPeer(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "peers")
	n3, n3new, n2 := ca.Issue("n3", "10.77.0.3", "N3.example"), ca.Issue("n3", "10.77.0.3"), ca.Issue("n2", "10.77.0.2")
	testpki.WriteFile(t, filepath.Join(dir, "ca.pem"), ca.PEM())
	testpki.WriteFile(t, filepath.Join(dir, "crl.pem"), ca.CRL(n3))
	rev, err := LoadRevocations(filepath.Join(dir, "crl.pem"), filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	id := &Identity{Revoked: rev}
	verify := func(l testpki.Leaf) error {
		c := l.Cert(t)
		return id.VerifyConnection(tls.ConnectionState{PeerCertificates: []*x509.Certificate{c}, VerifiedChains: [][]*x509.Certificate{{c, ca.Cert}}})
	}
	// want maps hosts to "revoked", "passed" or "unseen".
	check := func(when string, want map[string]string) {
		t.Helper()
		for host, w := range want {
			revoked, seen := id.RevokedPeer(host)
			got := map[[2]bool]string{{true, true}: "revoked", {false, true}: "passed", {false, false}: "unseen"}[[2]bool{revoked, seen}]
			if got != w {
				t.Errorf("%s: RevokedPeer(%q) = %v, %v: %s, want %s", when, host, revoked, seen, got, w)
			}
		}
	}
	check("before any peer", map[string]string{"10.77.0.3": "unseen"})
	if err := verify(n2); err != nil {
		t.Fatal(err)
	}
	if err := verify(n3); err == nil || !strings.Contains(err.Error(), "is revoked") {
		t.Fatalf("n3's revoked certificate passed: %v", err)
	}
	check("after n3's revoked certificate", map[string]string{"10.77.0.3": "revoked", "n3.example": "revoked", "N3.EXAMPLE": "revoked", "10.77.0.2": "passed", "10.77.0.4": "unseen"})
	if err := verify(n3new); err != nil {
		t.Fatal(err)
	}
	check("after n3's new certificate", map[string]string{"10.77.0.3": "passed", "n3.example": "revoked"})
}
