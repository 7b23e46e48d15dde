package admin

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tandem-project/tandem/metrics"
	"github.com/tandem-project/tandem/raftlog"
)

// testHost opens a single-host replication layer, closed at cleanup.
func testHost(t *testing.T) *raftlog.Host {
	t.Helper()
	cfg := raftlog.DefaultConfig()
	cfg.ID, cfg.DataDir = "h1", t.TempDir()
	h, err := raftlog.OpenHost(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func testServer(t *testing.T) *httptest.Server {
	t.Helper()
	h := testHost(t)
	if _, err := h.OpenVolume(raftlog.VolumeSpec{Name: "vol0", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	m := metrics.New()
	m.WatchHost(h)
	srv := httptest.NewServer(Handler(Config{Host: h, Metrics: m.Handler(), Version: "test"}))
	t.Cleanup(srv.Close)
	return srv
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestEndpoints(t *testing.T) {
	srv := testServer(t)
	// Ready once the volume elected its (only) replica; serving once that
	// leader's barrier applied (a moment later: a busy machine showed the
	// gap).
	deadline := time.Now().Add(10 * time.Second)
	for {
		if code, _ := get(t, srv.URL+"/readyz"); code == http.StatusOK {
			if _, body := get(t, srv.URL+"/v1/local/volumes"); strings.Contains(body, `"serving": true`) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("never ready")
		}
		time.Sleep(20 * time.Millisecond)
	}
	tests := []struct {
		path string
		code int
		want string
	}{
		{"/healthz", 200, `"ok"`},
		{"/v1/cluster", 200, `"host": "h1"`},
		{"/v1/hosts", 200, `"state": "alive"`},
		{"/v1/volumes", 200, `"name": "vol0"`},
		{"/v1/volumes/vol0", 200, `"leader": "h1"`},
		{"/v1/local/volumes", 200, `"serving": true`},
		{"/v1/volumes/nope", 404, `"error": "no volume named \"nope\""`},
		{"/v1/nothing", 404, `"error"`},
		{"/metrics", 200, `tandem_volume_leader{volume="vol0"} 1`},
	}
	for _, tc := range tests {
		code, body := get(t, srv.URL+tc.path)
		if code != tc.code || !strings.Contains(body, tc.want) {
			t.Errorf("GET %s: %d %s\nwant %d containing %s", tc.path, code, body, tc.code, tc.want)
		}
	}
	// The bodies are cluster mode's, which the CLI reads.
	var vols []Volume
	_, body := get(t, srv.URL+"/v1/volumes")
	if err := json.Unmarshal([]byte(body), &vols); err != nil || len(vols) != 1 || vols[0].Size != 1<<20 || vols[0].State != VolumeReady ||
		vols[0].Leader != "h1" || len(vols[0].Replicas) != 1 || vols[0].Replicas[0].Host != "h1" || vols[0].Replicas[0].State != "Leader" {
		t.Fatalf("volumes: %v %+v", err, vols)
	}
	var hosts []Host
	_, body = get(t, srv.URL+"/v1/hosts")
	if err := json.Unmarshal([]byte(body), &hosts); err != nil || len(hosts) != 1 || hosts[0].Name != "h1" || hosts[0].Replicas != 1 {
		t.Fatalf("hosts: %v %+v", err, hosts)
	}
	var cs ClusterStatus
	_, body = get(t, srv.URL+"/v1/cluster")
	if err := json.Unmarshal([]byte(body), &cs); err != nil || cs.Host != "h1" || cs.Volumes != 1 || cs.Hosts != 1 {
		t.Fatalf("cluster: %v %+v", err, cs)
	}
	// What a managed cluster would do is refused, saying why.
	for _, path := range []string{"/v1/volumes", "/v1/volumes/vol0/verify", "/v1/vms"} {
		resp, err := http.Post(srv.URL+path, "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(b), "fixed configuration") {
			t.Errorf("POST %s: %d %s, want 404 naming the fixed configuration", path, resp.StatusCode, b)
		}
	}
}

// TestControlFailed checks what an agent that left the control plane (its
// control write log failed) answers: not ready, saying why, and a 503
// naming the failure at once for requests it would forward to the leader.
func TestControlFailed(t *testing.T) {
	f := &fakeCluster{controlErr: errors.New("control: write log: wal: failed: disk gone")}
	srv := httptest.NewServer(Handler(Config{Host: testHost(t), Cluster: f, Token: "tok"}))
	t.Cleanup(srv.Close)
	tests := []struct {
		path string
		code int
		want string
	}{
		{"/healthz", 200, `"ok"`},
		{"/readyz", 503, `"control_error": "control: write log: wal: failed: disk gone"`},
		{"/v1/volumes", 503, `this agent left the control plane (control: write log: wal: failed: disk gone)`},
	}
	for _, tc := range tests {
		start := time.Now()
		code, body := get(t, srv.URL+tc.path)
		if code != tc.code || !strings.Contains(body, tc.want) {
			t.Errorf("GET %s: %d %s, want %d with %s", tc.path, code, body, tc.code, tc.want)
		}
		if d := time.Since(start); d >= leaderWait {
			t.Errorf("GET %s took %v: it waited for a leader", tc.path, d)
		}
	}
}
