package mux

import (
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testpki"
	"github.com/tandem-project/tandem/internal/tlsfiles"
)

func dial(t *testing.T, d Dialer, addr string, kind byte, name string) (net.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return d.Dial(ctx, addr, kind, name)
}

func TestRouting(t *testing.T) {
	l, err := Listen("127.0.0.1:0", nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go l.Serve()
	a, err := l.Layer("vol-a")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := l.Layer("vol-b")
	if _, err := l.Layer("vol-a"); err == nil {
		t.Fatal("a second layer for the same group was allowed")
	}
	streams := make(chan string, 1)
	l.Handle(KindStream, func(name string, c net.Conn) {
		defer c.Close()
		msg, _ := io.ReadAll(c)
		streams <- name + ":" + string(msg)
	})

	send := func(kind byte, name, msg string) {
		c, err := dial(t, Dialer{}, l.Addr().String(), kind, name)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(msg))
		c.Close()
	}
	recv := func(y *Layer) string {
		c, err := y.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		msg, _ := io.ReadAll(c)
		return string(msg)
	}
	send(KindRaft, "vol-b", "to b")
	send(KindRaft, "vol-a", "to a")
	send(KindStream, "vol-a", "stream")
	if got := recv(a); got != "to a" {
		t.Errorf("layer a got %q", got)
	}
	if got := recv(b); got != "to b" {
		t.Errorf("layer b got %q", got)
	}
	if got := <-streams; got != "vol-a:stream" {
		t.Errorf("stream handler got %q", got)
	}

	// Unknown groups and garbage are closed without harm.
	c, _ := dial(t, Dialer{}, l.Addr().String(), KindRaft, "nope")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("connection for an unknown group was not closed")
	}
	g, _ := net.Dial("tcp", l.Addr().String())
	g.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	g.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := g.Read(make([]byte, 1)); err == nil {
		t.Error("garbage connection was not closed")
	}

	// A closed layer stops accepting and is unregistered.
	a.Close()
	if _, err := a.Accept(); err != ErrClosed {
		t.Errorf("accept after close: %v", err)
	}
	if _, err := l.Layer("vol-a"); err != nil {
		t.Errorf("re-registering a closed group: %v", err)
	}
}

// TestTLS: a port with a TLS identity serves only hosts whose certificate
// its CA signed, and a dialer accepts only a listener whose certificate
// names the address it dialed.
func TestTLS(t *testing.T) {
	ca := testpki.NewCA(t, "peers")
	id := &TLS{Cert: ca.Issue("n1", "127.0.0.1").TLS(t), CA: ca.Pool()}
	l, err := Listen("127.0.0.1:0", id, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go l.Serve()
	got := make(chan string, 8)
	l.Handle(KindNBD, func(name string, c net.Conn) {
		defer c.Close()
		msg, _ := io.ReadAll(c)
		got <- name + ":" + string(msg)
	})
	addr := l.Addr().String()
	_, port, _ := net.SplitHostPort(addr)

	// refused reports whether the listener dropped a connection after a
	// message was sent on it, instead of routing it.
	refused := func(c net.Conn) bool {
		c.Write([]byte("hello"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := c.Read(make([]byte, 1))
		c.Close()
		select {
		case m := <-got:
			t.Errorf("routed: %q", m)
			return false
		case <-time.After(100 * time.Millisecond):
		}
		return err != nil
	}

	peer := Dialer{TLS: &TLS{Cert: ca.Issue("n2", "127.0.0.2").TLS(t), CA: ca.Pool()}}
	c, err := dial(t, peer, addr, KindNBD, "vol")
	if err != nil {
		t.Fatalf("a peer with a certificate of the CA: %v", err)
	}
	c.Write([]byte("over tls"))
	c.Close()
	if m := <-got; m != "vol:over tls" {
		t.Errorf("handler got %q", m)
	}

	// Without TLS, the header is taken for a bad TLS handshake.
	if c, err := dial(t, Dialer{}, addr, KindNBD, "vol"); err == nil && !refused(c) {
		t.Error("a plain connection was served on a TLS port")
	}
	// A certificate of another CA.
	other := testpki.NewCA(t, "other")
	stranger := Dialer{TLS: &TLS{Cert: other.Issue("n9", "127.0.0.2").TLS(t), CA: ca.Pool()}}
	if c, err := dial(t, stranger, addr, KindNBD, "vol"); err == nil && !refused(c) {
		t.Error("a certificate of another CA was accepted")
	}
	// The listener's certificate does not name 127.0.0.1 under this name.
	if _, err := dial(t, peer, "localhost:"+port, KindNBD, "vol"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("dialing by a name the listener's certificate lacks: %v", err)
	}
	// The dialer does not trust a listener of another CA.
	lost := Dialer{TLS: &TLS{Cert: ca.Issue("n2", "127.0.0.2").TLS(t), CA: other.Pool()}}
	if _, err := dial(t, lost, addr, KindNBD, "vol"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("dialing a listener of another CA: %v", err)
	}
}

// nameServer listens with identity id on loopback and answers KindNBD
// connections with the name they asked for; it closes with the test.
func nameServer(t *testing.T, id *TLS) *Listener {
	t.Helper()
	l, err := Listen("127.0.0.1:0", id, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go l.Serve()
	l.Handle(KindNBD, func(name string, c net.Conn) {
		defer c.Close()
		c.Write([]byte(name))
	})
	return l
}

// servedBy reports whether l, a nameServer, answered d's connection.
func servedBy(t *testing.T, l *Listener, d Dialer) bool {
	t.Helper()
	c, err := dial(t, d, l.Addr().String(), KindNBD, "vol")
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(c)
	return string(b) == "vol"
}

// TestTLSReload: a listener whose identity has Files follows them: a new
// certificate and CA take effect without a restart, and files that do not
// load leave the previous identity in force.
func TestTLSReload(t *testing.T) {
	dir := t.TempDir()
	files := &TLSFiles{Cert: filepath.Join(dir, "n1.pem"), Key: filepath.Join(dir, "n1-key.pem"), CA: filepath.Join(dir, "ca.pem")}
	install := func(ca *testpki.CA, leaf testpki.Leaf) {
		testpki.WriteFile(t, files.Cert, leaf.CertPEM)
		testpki.WriteFile(t, files.Key, leaf.KeyPEM)
		testpki.WriteFile(t, files.CA, ca.PEM())
	}
	old := testpki.NewCA(t, "old peers")
	leaf := old.Issue("n1", "127.0.0.1")
	install(old, leaf)
	id := &TLS{Cert: leaf.TLS(t), CA: old.Pool(), Files: files, CheckEvery: time.Millisecond}
	l := nameServer(t, id)
	served := func(d Dialer) bool { return servedBy(t, l, d) }
	peerOf := func(ca *testpki.CA) Dialer {
		return Dialer{TLS: &TLS{Cert: ca.Issue("n2", "127.0.0.2").TLS(t), CA: ca.Pool()}}
	}
	if !served(peerOf(old)) {
		t.Fatal("a peer of the CA was refused")
	}

	// The cluster moves to a new CA: the files change under the listener.
	renewed := testpki.NewCA(t, "new peers")
	install(renewed, renewed.Issue("n1", "127.0.0.1"))
	time.Sleep(10 * time.Millisecond)
	if !served(peerOf(renewed)) {
		t.Fatal("a peer of the new CA was refused after the files changed")
	}
	if served(peerOf(old)) {
		t.Fatal("a peer of the old CA was served after the files changed")
	}

	// A certificate written before its key: the files do not load, the
	// identity in force stays.
	testpki.WriteFile(t, files.Cert, renewed.Issue("n1", "127.0.0.1").CertPEM)
	time.Sleep(10 * time.Millisecond)
	if !served(peerOf(renewed)) {
		t.Fatal("files that do not load replaced the identity in force")
	}
}

// TestTLSRevocation: a listener refuses peers whose certificate its CA's
// revocation list names, a dialer refuses such a listener, and a new list
// takes effect without a restart.
func TestTLSRevocation(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "peers")
	n1, n2, n3 := ca.Issue("n1", "127.0.0.1"), ca.Issue("n2", "127.0.0.2"), ca.Issue("n3", "127.0.0.3")
	files := &TLSFiles{CA: filepath.Join(dir, "ca.pem"), CRL: filepath.Join(dir, "crl.pem")}
	files.Cert, files.Key = n1.Write(t, dir, "n1.pem", "n1-key.pem")
	testpki.WriteFile(t, files.CA, ca.PEM())
	testpki.WriteFile(t, files.CRL, ca.CRL(n3))
	id := &TLS{Cert: n1.TLS(t), CA: ca.Pool(), Files: files, CheckEvery: time.Millisecond}
	l := nameServer(t, id)
	served := func(leaf testpki.Leaf, rev *tlsfiles.Revocations) bool {
		return servedBy(t, l, Dialer{TLS: &TLS{Cert: leaf.TLS(t), CA: ca.Pool(), Revoked: rev}})
	}
	if !served(n2, nil) {
		t.Fatal("a peer the list does not name was refused")
	}
	if served(n3, nil) {
		t.Fatal("a revoked peer was served")
	}
	// A connection of n2 that stays open, echoed.
	l.Handle(KindStream, func(_ string, c net.Conn) {
		defer c.Close()
		io.Copy(c, c)
	})
	open, err := dial(t, Dialer{TLS: &TLS{Cert: n2.TLS(t), CA: ca.Pool()}}, l.Addr().String(), KindStream, "")
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	echo := func() error {
		open.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := open.Write([]byte("ping")); err != nil {
			return err
		}
		_, err := io.ReadFull(open, make([]byte, 4))
		return err
	}
	if err := echo(); err != nil {
		t.Fatal(err)
	}

	// n2 is revoked too: the new list takes effect on the running
	// listener, for new connections and for the one open.
	testpki.WriteFile(t, files.CRL, ca.CRL(n3, n2))
	time.Sleep(10 * time.Millisecond)
	if served(n2, nil) {
		t.Fatal("a peer revoked by the new list was served")
	}
	deadline := time.Now().Add(10 * time.Second)
	for echo() == nil {
		if time.Now().After(deadline) {
			t.Fatal("a revoked peer's open connection still served 10 s after the list was written")
		}
		time.Sleep(100 * time.Millisecond)
	}

	// A dialer whose list names the listener's certificate refuses it.
	crl := filepath.Join(dir, "n1-revoked.pem")
	testpki.WriteFile(t, crl, ca.CRL(n1))
	rev, err := tlsfiles.LoadRevocations(crl, files.CA)
	if err != nil {
		t.Fatal(err)
	}
	if served(ca.Issue("n4", "127.0.0.4"), rev) {
		t.Fatal("a dialer reached a listener its list revokes")
	}
	if !served(ca.Issue("n4", "127.0.0.4"), nil) {
		t.Fatal("a new peer was refused")
	}
}
