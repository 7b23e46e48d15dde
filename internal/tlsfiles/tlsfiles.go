// Package tlsfiles keeps a TLS identity (a certificate, its key, a CA
// pool) in step with the PEM files it was read from, so that renewed
// certificates take effect without restarting the agent.
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// Identity is a certificate (with its key) and a CA pool, as a TLS
// endpoint uses them.
//
// With Files set, the identity follows its files: when one of them
// changes (looked at by Current, at most once per CheckEvery), they are
// read again, so that renewed certificates take effect without a
// restart. Files that do not load (a key that does not match its
// certificate yet, half-written) leave the previous identity in force
// until they do. Use an Identity by pointer once in use.
type Identity struct {
	Cert tls.Certificate
	CA   *x509.CertPool
	// Files are the PEM files Cert and CA were read from, or nil.
	Files *Files
	// CheckEvery bounds how often the files are looked at (0: a second).
	CheckEvery time.Duration

	mu      sync.Mutex
	checked time.Time
	stamp   string // the files' sizes and modification times when read
	failed  string // the stamp that last failed to load, not logged again
}

// Files are the PEM files of an identity: a certificate, its key and a
// CA bundle ("" for none).
type Files struct {
	Cert, Key, CA string
}

// Current returns the certificate and CA in force, reading the files
// again first if they changed (and logging that to log, if not nil).
func (t *Identity) Current(log *slog.Logger) (tls.Certificate, *x509.CertPool) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	every := t.CheckEvery
	if every <= 0 {
		every = time.Second
	}
	if t.Files == nil || time.Since(t.checked) < every {
		return t.Cert, t.CA
	}
	t.checked = time.Now()
	stamp := t.Files.stamp()
	if stamp == t.stamp || stamp == t.failed {
		return t.Cert, t.CA
	}
	cert, ca, err := t.Files.load()
	if err != nil {
		t.failed = stamp
		log.Warn("TLS files changed but do not load; keeping the previous certificate", "cert", t.Files.Cert, "err", err)
		return t.Cert, t.CA
	}
	if t.stamp != "" {
		log.Info("TLS certificate reloaded", "cert", t.Files.Cert)
	}
	t.Cert, t.CA, t.stamp, t.failed = cert, ca, stamp, ""
	return t.Cert, t.CA
}

// stamp describes the files' current versions ("" parts for missing ones).
func (f *Files) stamp() string {
	var s string
	for _, p := range []string{f.Cert, f.Key, f.CA} {
		if p == "" {
			s += ";"
		} else if fi, err := os.Stat(p); err == nil {
			s += fmt.Sprintf("%d/%d;", fi.Size(), fi.ModTime().UnixNano())
		} else {
			s += "-;"
		}
	}
	return s
}

// load reads the files.
func (f *Files) load() (tls.Certificate, *x509.CertPool, error) {
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("certificate %s and key %s: %w", f.Cert, f.Key, err)
	}
	if f.CA == "" {
		return cert, nil, nil
	}
	pool, err := LoadCAPool(f.CA)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	return cert, pool, nil
}

// LoadCAPool reads the PEM CA bundle at path.
func LoadCAPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("no certificate in " + path)
	}
	return pool, nil
}
