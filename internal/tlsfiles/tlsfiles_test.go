package tlsfiles

import (
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
