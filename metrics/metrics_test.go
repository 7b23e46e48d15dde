package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestWatchCertificate(t *testing.T) {
	m := New()
	peer := time.Unix(1900000000, 0)
	m.WatchCertificate("peer", func() time.Time { return peer })
	m.WatchCertificate("admin", func() time.Time { return time.Unix(1800000000, 0) })
	scrape := func() string {
		rec := httptest.NewRecorder()
		m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		b, _ := io.ReadAll(rec.Body)
		return string(b)
	}
	out := scrape()
	for _, want := range []string{
		`tandem_tls_certificate_expiry_timestamp_seconds{role="admin"} 1.8e+09`,
		`tandem_tls_certificate_expiry_timestamp_seconds{role="peer"} 1.9e+09`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in:\n%s", want, out)
		}
	}
	peer = time.Unix(2000000000, 0) // renewed
	if out := scrape(); !strings.Contains(out, `tandem_tls_certificate_expiry_timestamp_seconds{role="peer"} 2e+09`) {
		t.Errorf("the renewal does not show:\n%s", out)
	}
}
