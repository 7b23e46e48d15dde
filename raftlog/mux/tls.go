package mux

import (
	"crypto/tls"
	"log/slog"

	"github.com/tandem-project/tandem/internal/tlsfiles"
)

// TLS is a host's identity among its peers: its certificate and the CA
// that signed every peer's certificate. Each certificate must name its
// host's replication address (an IP address or DNS name) and may be used
// both to serve and to dial. With Files set it follows its files
// (renewed certificates take effect without a restart).
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
	}
}
