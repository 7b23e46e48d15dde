package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/internal/testbin"
	"github.com/tandem-project/tandem/internal/testpki"
	"github.com/tandem-project/tandem/nbd/nbdclient"
	"github.com/tandem-project/tandem/raftlog"
	"github.com/tandem-project/tandem/raftlog/mux"
)

// TestMutualTLS runs three agents the way the deployment guide advises
// for untrusted networks: NBD only over TLS with client certificates
// (--tls-required, --tls-client-ca) and mutual TLS on the replication
// port (--peer-tls-*), each host with a certificate of its own.
//   - A client with a certificate writes through a follower: the follower
//     forwards to the leader over the replication port (it needs no NBD
//     client certificate) and every host reads the data back; qemu-io
//     does the same over QEMU's TLS.
//   - The forwarding views are not served on the clients' NBD port, and
//     the replication port refuses a connection without a certificate, one
//     with a certificate of another CA (the clients' CA) and one with a
//     peer certificate the CA revoked (--peer-tls-crl).
//   - A follower down long enough for the log to be trimmed catches up
//     from a volume streamed over the replication port.
func TestMutualTLS(t *testing.T) {
	testbin.Require(t, "qemu-io")
	r := newRand(seed(t), 11)
	clientCA := testpki.NewCA(t, "tandem clients")
	clientCAFile := filepath.Join(t.TempDir(), "client-ca.pem")
	testpki.WriteFile(t, clientCAFile, clientCA.PEM())
	client := clientCA.Issue("a client")
	cfg := testbin.ClusterConfig{
		Volumes: []string{fmt.Sprintf("%s=%d", vol, volSize)},
		Args: append(fastArgs,
			"--checkpoint-interval", "200ms", "--checkpoint-entries", "64", "--trailing-entries", "128"),
	}
	peers := testbin.WithPeerTLS(t, &cfg)
	peerCA := peers.CA
	// A retired host's certificate, revoked.
	retired := peerCA.Issue("retired", "127.0.0.1")
	crlFile := filepath.Join(t.TempDir(), "peer-crl.pem")
	testpki.WriteFile(t, crlFile, peerCA.CRL(retired))
	// Each host's peer certificate serves its NBD port too here; it could
	// come from another CA.
	nbdArgs := cfg.HostArgs
	cfg.HostArgs = func(i int) []string {
		return append(nbdArgs(i), "--peer-tls-crl", crlFile,
			"--tls-cert", peers.Certs[i], "--tls-key", peers.Keys[i], "--tls-client-ca", clientCAFile, "--tls-required")
	}
	cfg.NBDTLS = &tls.Config{
		RootCAs:      peerCA.Pool(),
		Certificates: []tls.Certificate{client.TLS(t)},
		MinVersion:   tls.VersionTLS12,
	}
	c := testbin.StartCluster(t, cfg)
	l := c.Leader(vol)
	fs := c.Followers(l)
	k := r.IntN(2)
	f, o := fs[k], fs[1-k]
	t.Logf("leader n%d; writing through follower n%d", l+1, f+1)
	ctx := context.Background()

	// Through a follower, which forwards over the replication port.
	conn := dial(t, c, f)
	m := newModel()
	write := m.writer(t)
	for blk := range int64(256) {
		write(conn, blk)
	}
	verifyThrough(t, c, m)

	// qemu-io, with QEMU's TLS credentials (ca-cert.pem, client-cert.pem,
	// client-key.pem), through the other follower. QEMU checks its own
	// certificate against ca-cert.pem too.
	qdir := t.TempDir()
	testpki.WriteFile(t, filepath.Join(qdir, "ca-cert.pem"), append(peerCA.PEM(), clientCA.PEM()...))
	client.Write(t, qdir, "client-cert.pem", "client-key.pem")
	host, port, _ := net.SplitHostPort(c.Nodes[o].NBDAddr)
	const qoff = 8 << 20 // past the stamped blocks
	out, err := testbin.RunErr(30*time.Second, "qemu-io",
		"--object", "tls-creds-x509,id=tls0,endpoint=client,dir="+qdir,
		"--image-opts", "driver=nbd,host="+host+",port="+port+",export="+vol+",tls-creds=tls0",
		"-c", "write -P 0x5c "+strconv.Itoa(qoff)+" 1M", "-c", "read -P 0x5c "+strconv.Itoa(qoff)+" 1M")
	if err != nil || strings.Contains(out, "Pattern verification failed") || !strings.Contains(out, "read 1048576/1048576") {
		t.Fatalf("qemu-io over TLS through n%d: %v\n%s", o+1, err, out)
	}
	lconn := dial(t, c, l)
	got := make([]byte, 1<<20)
	if err := lconn.ReadAt(ctx, got, qoff, 0); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{0x5c}, 1<<20)) {
		t.Fatalf("qemu-io's write read back through the leader n%d: %v", l+1, err)
	}

	// Where the forwarding views are not served.
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if fc, err := c.Dial(dctx, l, raftlog.ForwardPrefix+vol); err == nil {
		fc.Close()
		t.Errorf("the leader's forwarding view was served on its NBD port")
	}
	stranger := mux.TLS{Cert: clientCA.Issue("stranger", "127.0.0.1").TLS(t), CA: peerCA.Pool()}
	revoked := mux.TLS{Cert: retired.TLS(t), CA: peerCA.Pool()}
	for what, d := range map[string]mux.Dialer{
		"without TLS":                           {},
		"with a certificate of the clients' CA": {TLS: &stranger},
		"with a revoked peer certificate":       {TLS: &revoked},
	} {
		nc, err := d.Dial(dctx, c.Nodes[l].RaftAddr, mux.KindNBD, "")
		if err == nil {
			var fc *nbdclient.Conn
			if fc, err = nbdclient.Handshake(dctx, nc, nbdclient.Options{Export: raftlog.ForwardPrefix + vol}); err == nil {
				fc.Close()
			}
			nc.Close()
		}
		if err == nil {
			t.Errorf("the replication port served a forwarding view to a connection %s", what)
		}
	}
	if fc, err := c.DialForward(dctx, l, raftlog.ForwardPrefix+vol); err != nil {
		t.Errorf("the replication port refused a peer certificate: %v", err)
	} else {
		fc.Close()
	}

	// A long outage: the returned follower gets the volume streamed.
	c.Kill(f)
	offs := map[int]int{l: c.Nodes[l].LogLen(), o: c.Nodes[o].LogLen()}
	oconn := dial(t, c, o)
	deadline := time.Now().Add(60 * time.Second)
	for n := 0; !trimmedPast(c, l, offs[l]) || !trimmedPast(c, o, offs[o]); n++ {
		if time.Now().After(deadline) {
			t.Fatalf("the log was not trimmed after %d writes in 60 s", n)
		}
		write(oconn, r.Int64N(256))
	}
	c.Start(f)
	if _, err := c.Nodes[f].WaitLog(copiedRE, 0, 60*time.Second); err != nil {
		t.Fatalf("n%d did not copy the volume after a long outage: %v", f+1, err)
	}
	waitReplicaFile(t, c, f, m, 30*time.Second)
}

// TestRevokedHostHealed revokes the peer certificate of a host that holds
// a replica, in a managed cluster of four with mutual TLS on the
// replication port. The revoked host still gossips (the gossip key is
// shared), but the control leader records it revoked; self-healing then
// moves its replica, after --heal-after, to the fourth host (offered too
// little room to be chosen at first), and every acknowledged write is on
// the three replicas left.
func TestRevokedHostHealed(t *testing.T) {
	cfg := testbin.ClusterConfig{
		Hosts:    4,
		Managed:  true,
		Args:     append(fastArgs, "--heal-after", "5s"),
		HostArgs: smallLast(4, "100M"),
	}
	peers := testbin.WithPeerTLS(t, &cfg)
	crl := filepath.Join(t.TempDir(), "peer-crl.pem")
	testpki.WriteFile(t, crl, peers.CA.CRL())
	more := cfg.HostArgs
	cfg.HostArgs = func(i int) []string { return append(more(i), "--peer-tls-crl", crl) }
	c := testbin.StartCluster(t, cfg)
	c.WaitManaged(time.Minute)
	ctx := context.Background()
	api := c.Admin(0)
	v, err := api.CreateVolume(ctx, admin.CreateVolume{Name: vol, Size: volSize, Replicas: 3})
	if err != nil {
		t.Fatal(err)
	}
	if hosts := slices.Sorted(slices.Values(v.Hosts)); !slices.Equal(hosts, []string{"n1", "n2", "n3"}) {
		t.Fatalf("volume placed on %v, want n1, n2 and n3", hosts)
	}
	m := newModel()
	write := m.writer(t)
	conn := dial(t, c, 0)
	for blk := range int64(64) {
		write(conn, blk)
	}

	// n3's certificate is revoked.
	n3, err := os.ReadFile(peers.Certs[2])
	if err != nil {
		t.Fatal(err)
	}
	testpki.WriteFile(t, crl, peers.CA.CRL(testpki.Leaf{CertPEM: n3}))
	revoked := time.Now()
	testbin.WaitFor(t, 30*time.Second, "n3 revoked in the catalog", func() error {
		hs, err := api.Hosts(ctx)
		if err != nil {
			return err
		}
		for _, h := range hs {
			if h.Name == "n3" && h.State != admin.HostRevoked {
				return fmt.Errorf("n3 is %s", h.State)
			}
		}
		return nil
	})
	t.Logf("n3 recorded revoked %v after its certificate was", time.Since(revoked).Round(time.Millisecond))
	for blk := int64(64); blk < 128; blk++ {
		write(conn, blk)
	}
	waitReplicasOn(t, api, 2*time.Minute, "n3's replica to move to n4", "n1", "n2", "n4")
	t.Logf("n3's replica moved to n4 %v after the revocation (--heal-after 5s)", time.Since(revoked).Round(time.Millisecond))
	for blk := int64(128); blk < 160; blk++ {
		write(conn, blk)
	}
	verifyThrough(t, c, m, 0, 1, 3)
	waitReplicaFile(t, c, 3, m, time.Minute)
}
