// Package tlsfiles keeps a TLS identity (a certificate, its key, a CA
// pool, the CA's revocation list) in step with the PEM files it was read
// from, so that renewed certificates and new revocations take effect
// without restarting the agent.
package tlsfiles

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
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
	// Revoked lists the certificates the CA revoked, or is nil (no list).
	// Peers presenting one are refused by VerifyConnection.
	Revoked *Revocations
	// Files are the PEM files Cert, CA and Revoked were read from, or nil.
	Files *Files
	// CheckEvery bounds how often the files are looked at (0: a second).
	CheckEvery time.Duration

	mu      sync.Mutex
	checked time.Time
	stamp   string // the files' sizes and modification times when read
	failed  string // the stamp that last failed to load, not logged again
	// peerNames maps the names (DNS names, IP addresses) of the peer
	// certificates VerifyConnection saw to whether the last one naming
	// each was refused as revoked.
	peerNames map[string]bool
}

// Files are the PEM files of an identity: a certificate, its key, a CA
// bundle and a certificate revocation list of that CA ("" for none).
type Files struct {
	Cert, Key, CA, CRL string
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
	cert, ca, rev, err := t.Files.load()
	if err != nil {
		t.failed = stamp
		log.Warn("TLS files changed but do not load; keeping the previous certificate", "cert", t.Files.Cert, "err", err)
		return t.Cert, t.CA
	}
	if t.stamp != "" {
		log.Info("TLS certificate reloaded", "cert", t.Files.Cert, "crl", t.Files.CRL)
	}
	if end := notAfter(cert); time.Until(end) < ExpiryWarning {
		log.Warn("TLS certificate expires soon: renew it (the new files are read without a restart)", "cert", t.Files.Cert, "not_after", end, "left", time.Until(end).Round(time.Hour))
	}
	if rev != nil && !rev.NextUpdate.IsZero() && time.Now().After(rev.NextUpdate) {
		log.Warn("TLS revocation list is past its next update; its revocations still apply", "crl", t.Files.CRL, "next_update", rev.NextUpdate)
	}
	t.Cert, t.CA, t.Revoked, t.stamp, t.failed = cert, ca, rev, stamp, ""
	return t.Cert, t.CA
}

// ExpiryWarning is how long before its certificate expires an identity
// warns, each time it reads its files.
const ExpiryWarning = 30 * 24 * time.Hour

// NotAfter returns when the certificate in force expires (reading the
// files again first if they changed).
func (t *Identity) NotAfter() time.Time {
	cert, _ := t.Current(nil)
	return notAfter(cert)
}

// notAfter returns when c expires (the zero time if it cannot tell).
func notAfter(c tls.Certificate) time.Time {
	if c.Leaf != nil {
		return c.Leaf.NotAfter
	}
	if len(c.Certificate) > 0 {
		if leaf, err := x509.ParseCertificate(c.Certificate[0]); err == nil {
			return leaf.NotAfter
		}
	}
	return time.Time{}
}

// VerifyConnection refuses a connection whose peer presented a certificate
// that the revocation list in force lists (tls.Config.VerifyConnection).
// It checks the chains the handshake verified, so it has nothing to check
// where peers are not asked for certificates.
func (t *Identity) VerifyConnection(cs tls.ConnectionState) error {
	t.mu.Lock()
	rev := t.Revoked
	t.mu.Unlock()
	var err error
	for _, chain := range cs.VerifiedChains {
		for _, c := range chain {
			if err == nil && rev.Has(c) {
				err = fmt.Errorf("tls: certificate %q (serial %s) is revoked", c.Subject.CommonName, c.SerialNumber)
			}
		}
	}
	if len(cs.PeerCertificates) > 0 {
		t.notePeer(cs.PeerCertificates[0], err != nil)
	}
	return err
}

// notePeer records whether the names of peer certificate c are revoked.
func (t *Identity) notePeer(c *x509.Certificate, revoked bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.peerNames == nil {
		t.peerNames = map[string]bool{}
	}
	for _, name := range certNames(c) {
		t.peerNames[name] = revoked
	}
}

// certNames returns the names c is for: its DNS names (in lower case) and
// IP addresses.
func certNames(c *x509.Certificate) []string {
	names := make([]string, 0, len(c.DNSNames)+len(c.IPAddresses))
	for _, d := range c.DNSNames {
		names = append(names, strings.ToLower(d))
	}
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	return names
}

// RevokedPeer reports whether the last peer certificate VerifyConnection
// saw for host (a DNS name or an IP address) was refused as revoked: the
// host was shut out. seen is false for a host none of whose certificates
// it has seen (revoked is then false too).
func (t *Identity) RevokedPeer(host string) (revoked, seen bool) {
	if ip := net.ParseIP(host); ip != nil {
		host = ip.String()
	} else {
		host = strings.ToLower(host)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	revoked, seen = t.peerNames[host]
	return revoked, seen
}

// stamp describes the files' current versions ("" parts for missing ones).
func (f *Files) stamp() string {
	var s string
	for _, p := range []string{f.Cert, f.Key, f.CA, f.CRL} {
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
func (f *Files) load() (tls.Certificate, *x509.CertPool, *Revocations, error) {
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return tls.Certificate{}, nil, nil, fmt.Errorf("certificate %s and key %s: %w", f.Cert, f.Key, err)
	}
	if f.CA == "" {
		return cert, nil, nil, nil
	}
	ca, err := readCABundle(f.CA) // read once for the pool and the list's issuers
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	pool, err := ca.pool()
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	var rev *Revocations
	if f.CRL != "" {
		data, err := os.ReadFile(f.CRL)
		if err != nil {
			return tls.Certificate{}, nil, nil, err
		}
		if rev, err = parseRevocations(f.CRL, data, ca.issuers()); err != nil {
			return tls.Certificate{}, nil, nil, err
		}
	}
	return cert, pool, rev, nil
}

// Revocations are the certificates a CA revoked, from its certificate
// revocation lists (CRLs). A nil *Revocations revokes nothing.
type Revocations struct {
	// NextUpdate is the earliest next update of the lists (zero if none
	// says).
	NextUpdate time.Time
	serials    map[string]bool // issuer's raw subject + "/" + serial
}

// Has reports whether c is revoked.
func (r *Revocations) Has(c *x509.Certificate) bool {
	return r != nil && r.serials[revocationKey(c.RawIssuer, c.SerialNumber.String())]
}

func revocationKey(issuer []byte, serial string) string { return string(issuer) + "/" + serial }

// LoadRevocations reads the PEM certificate revocation lists at path and
// checks that each is signed by a CA of the PEM bundle at caPath.
func LoadRevocations(path, caPath string) (*Revocations, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	ca, err := readCABundle(caPath)
	if err != nil {
		return nil, err
	}
	return parseRevocations(path, data, ca.issuers())
}

// parseRevocations decodes the PEM revocation lists data (read from path)
// and checks that each is signed by one of issuers.
func parseRevocations(path string, data []byte, issuers []*x509.Certificate) (*Revocations, error) {
	r := &Revocations{serials: map[string]bool{}}
	lists := pemBlocks(data, "X509 CRL")
	for _, der := range lists {
		crl, err := x509.ParseRevocationList(der)
		if err != nil {
			return nil, fmt.Errorf("revocation list in %s: %w", path, err)
		}
		if err := checkIssuer(crl, issuers); err != nil {
			return nil, fmt.Errorf("revocation list in %s: %w", path, err)
		}
		for _, e := range crl.RevokedCertificateEntries {
			r.serials[revocationKey(crl.RawIssuer, e.SerialNumber.String())] = true
		}
		if !crl.NextUpdate.IsZero() && (r.NextUpdate.IsZero() || crl.NextUpdate.Before(r.NextUpdate)) {
			r.NextUpdate = crl.NextUpdate
		}
	}
	if len(lists) == 0 {
		return nil, errors.New("no PEM revocation list (X509 CRL) in " + path)
	}
	return r, nil
}

// pemBlocks returns the contents of data's PEM blocks of type typ.
func pemBlocks(data []byte, typ string) [][]byte {
	var out [][]byte
	for {
		var b *pem.Block
		if b, data = pem.Decode(data); b == nil {
			return out
		}
		if b.Type == typ {
			out = append(out, b.Bytes)
		}
	}
}

// checkIssuer checks that one of issuers signed crl.
func checkIssuer(crl *x509.RevocationList, issuers []*x509.Certificate) error {
	for _, ca := range issuers {
		if bytes.Equal(ca.RawSubject, crl.RawIssuer) && crl.CheckSignatureFrom(ca) == nil {
			return nil
		}
	}
	return fmt.Errorf("not signed by a CA of the bundle (issuer %q)", crl.Issuer)
}

// LoadCAPool reads the PEM CA bundle at path.
func LoadCAPool(path string) (*x509.CertPool, error) {
	ca, err := readCABundle(path)
	if err != nil {
		return nil, err
	}
	return ca.pool()
}

// caBundle is a PEM CA bundle as read from path.
type caBundle struct {
	path string
	pem  []byte
}

func readCABundle(path string) (caBundle, error) {
	b, err := os.ReadFile(path)
	return caBundle{path: path, pem: b}, err
}

// pool returns the bundle's certificates as a pool.
func (b caBundle) pool() (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b.pem) {
		return nil, errors.New("no certificate in " + b.path)
	}
	return pool, nil
}

// issuers returns the bundle's certificates that parse.
func (b caBundle) issuers() []*x509.Certificate {
	var out []*x509.Certificate
	for _, der := range pemBlocks(b.pem, "CERTIFICATE") {
		if c, err := x509.ParseCertificate(der); err == nil {
			out = append(out, c)
		}
	}
	return out
}
