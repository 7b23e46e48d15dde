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

func TestWatchDisk(t *testing.T) {
	for _, tc := range []struct {
		name      string
		view      DiskView
		want, not []string
	}{
		{"room", DiskView{Free: 10 << 30, Reserve: 256 << 20},
			[]string{"tandem_disk_free_bytes 1.073741824e+10", "tandem_disk_reserve_bytes 2.68435456e+08", "tandem_disk_short 0"}, nil},
		{"short", DiskView{Free: 300 << 20, Reserve: 256 << 20, Short: true},
			[]string{"tandem_disk_free_bytes 3.145728e+08", "tandem_disk_short 1"}, nil},
		{"free not known", DiskView{Free: -1, Reserve: 0},
			[]string{"tandem_disk_reserve_bytes 0", "tandem_disk_short 0"}, []string{"tandem_disk_free_bytes "}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := New()
			m.WatchDisk(func() DiskView { return tc.view })
			rec := httptest.NewRecorder()
			m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
			out := rec.Body.String()
			for _, want := range tc.want {
				if !strings.Contains(out, "\n"+want+"\n") {
					t.Errorf("no %q in:\n%s", want, out)
				}
			}
			for _, not := range tc.not {
				if strings.Contains(out, "\n"+not) {
					t.Errorf("%q in:\n%s", not, out)
				}
			}
		})
	}
}

func TestWatchClusterVerified(t *testing.T) {
	m := New()
	at := time.Unix(1900000000, 0)
	m.WatchCluster(func() ClusterView {
		return ClusterView{Verified: map[string]VerifyView{"good": {OK: true, Finished: at}, "bad": {Finished: at}}}
	})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	out := rec.Body.String()
	for _, want := range []string{
		`tandem_volume_last_verify_ok{volume="good"} 1`,
		`tandem_volume_last_verify_ok{volume="bad"} 0`,
		`tandem_volume_last_verify_timestamp_seconds{volume="good"} 1.9e+09`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in:\n%s", want, out)
		}
	}
}
