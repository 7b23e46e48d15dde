package mux

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/tandem-project/tandem/internal/tlsfiles"
)

// TLS is a host's identity among its peers: its certificate, the CA that
// signed every peer's certificate and, optionally, that CA's revocation
// list: a peer presenting a revoked certificate is refused, as a listener
// and as a dialer. Each certificate must name its host's replication
// address (an IP address or DNS name) and may be used both to serve and
// to dial. With Files set it follows its files (renewed certificates and
// new revocations take effect without a restart).
type TLS = tlsfiles.Identity

// TLSFiles are the PEM files of a TLS identity.
type TLSFiles = tlsfiles.Files

// serverConfig is the listener's side: the client must present a
// certificate of the CA.
func serverConfig(t *TLS, log *slog.Logger) *tls.Config {
	cert, ca := t.Current(log)
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientCAs:    ca,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
		// A method value: t's revocation list as it is at the handshake.
		VerifyConnection: t.VerifyConnection,
	}
}

// clientConfig is the dialer's side, to the host named host.
func clientConfig(t *TLS, log *slog.Logger, host string) *tls.Config {
	cert, ca := t.Current(log)
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      ca,
		ServerName:   host,
		MinVersion:   tls.VersionTLS13,
		// A method value: t's revocation list as it is at the handshake.
		VerifyConnection: t.VerifyConnection,
	}
}

// recheckEvery is how often an open connection checks its peer's
// certificate against the revocation list in force.
const recheckEvery = time.Second

// errRevoked fails the I/O of a connection whose peer was revoked.
var errRevoked = errors.New("mux: the peer's certificate was revoked")

// revocable is a TLS connection that closes itself once the revocation
// list in force names its peer's certificate, so that revoking a host cuts
// it off at once, not only from its next connections: raft and forwarding
// connections last as long as the hosts do. It checks on its reads and
// writes, at most once per recheckEvery (raft's heartbeats keep even an
// idle group's connections reading).
type revocable struct {
	*tls.Conn
	id    *TLS
	log   *slog.Logger
	state tls.ConnectionState
	next  atomic.Int64 // when to check next, Unix nanoseconds
	gone  atomic.Bool  // revoked: closed
}

// withRevocation wraps an established c when id has a revocation list
// (which its files may change), and returns c as it is otherwise.
func withRevocation(c *tls.Conn, id *TLS, log *slog.Logger) net.Conn {
	if id.Files == nil || id.Files.CRL == "" {
		return c
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &revocable{Conn: c, id: id, log: log, state: c.ConnectionState()}
	r.next.Store(time.Now().Add(recheckEvery).UnixNano())
	return r
}

// check closes the connection if its peer is now revoked.
func (r *revocable) check() error {
	if r.gone.Load() {
		return errRevoked
	}
	now := time.Now().UnixNano()
	next := r.next.Load()
	if now < next || !r.next.CompareAndSwap(next, now+int64(recheckEvery)) {
		return nil
	}
	r.id.Current(r.log) // reads the files again if they changed
	if err := r.id.VerifyConnection(r.state); err != nil {
		if !r.gone.Swap(true) {
			r.log.Warn("mux: closing a connection to a revoked peer", "remote", r.RemoteAddr().String(), "err", err)
			r.Conn.Close()
		}
		return errRevoked
	}
	return nil
}

func (r *revocable) Read(b []byte) (int, error) {
	if err := r.check(); err != nil {
		return 0, err
	}
	return r.Conn.Read(b)
}

func (r *revocable) Write(b []byte) (int, error) {
	if err := r.check(); err != nil {
		return 0, err
	}
	return r.Conn.Write(b)
}
