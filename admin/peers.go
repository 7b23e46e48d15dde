package admin

import (
	"crypto/tls"
	"net/http"
	"time"
)

// Peers is how an agent reaches the other agents' admin APIs: over plain
// HTTP, or over HTTPS when the cluster's admin APIs use TLS, checking each
// agent's certificate against the CA in the TLS configuration. Its
// connections are pooled and it is safe for concurrent use.
type Peers struct {
	tls *tls.Config
	tr  *http.Transport
}

// NewPeers returns Peers that use HTTPS with tlsCfg (its RootCAs: the CA
// of the agents' admin certificates; the server name is the address
// dialed), or plain HTTP if tlsCfg is nil.
func NewPeers(tlsCfg *tls.Config) *Peers {
	return &Peers{tls: tlsCfg, tr: &http.Transport{
		TLSClientConfig:     tlsCfg,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
	}}
}

// URL returns the base URL of the admin API at addr (host:port).
func (p *Peers) URL(addr string) string {
	if p.tls != nil {
		return "https://" + addr
	}
	return "http://" + addr
}

// Client returns an HTTP client for the agents' admin APIs whose requests
// timeout bounds (0: only their contexts).
func (p *Peers) Client(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: p.tr}
}
