package admin

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"time"
)

// Peers is how an agent reaches the other agents' admin APIs: over plain
// HTTP, or over HTTPS when the cluster's admin APIs use TLS, checking each
// agent's certificate against the CA in the TLS configuration. Its
// connections are pooled and it is safe for concurrent use.
type Peers struct {
	https bool
	tr    *http.Transport
}

// NewPeers returns Peers that use HTTPS with the configuration tlsCfg
// returns for each new connection (its RootCAs: the CA of the agents'
// admin certificates, which may change; the server name is the address
// dialed), or plain HTTP if tlsCfg is nil.
func NewPeers(tlsCfg func() *tls.Config) *Peers {
	p := &Peers{https: tlsCfg != nil, tr: &http.Transport{
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
	}}
	if tlsCfg != nil {
		p.tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			cfg := tlsCfg().Clone()
			cfg.ServerName = host
			d := tls.Dialer{Config: cfg}
			return d.DialContext(ctx, network, addr)
		}
	}
	return p
}

// URL returns the base URL of the admin API at addr (host:port).
func (p *Peers) URL(addr string) string {
	if p.https {
		return "https://" + addr
	}
	return "http://" + addr
}

// Client returns an HTTP client for the agents' admin APIs whose requests
// timeout bounds (0: only their contexts).
func (p *Peers) Client(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: p.tr}
}
