// Package control tests catalog-managed clusters end to end: real "tandem
// agent" processes in cluster mode (gossip, control plane, admin API) on
// 127.x.y.z addresses, driven through the "tandem" CLI, the HTTP API and
// real NBD clients.
package control

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/internal/testbin"
)

// startManaged starts n agents in cluster mode and waits until the control
// plane records every one alive.
func startManaged(t *testing.T, n int) *testbin.Cluster {
	t.Helper()
	c := testbin.StartCluster(t, testbin.ClusterConfig{Hosts: n, Managed: true})
	waitFor(t, 30*time.Second, "every host alive in the catalog", func() error {
		var hs []admin.Host
		if err := getJSON(c.Nodes[0].AdminAddr, "/v1/hosts", &hs); err != nil {
			return err
		}
		alive := 0
		for _, h := range hs {
			if h.State == admin.HostAlive && h.Control != "" {
				alive++
			}
		}
		if alive != n {
			return fmt.Errorf("%d of %d hosts alive members: %+v", alive, n, hs)
		}
		return nil
	})
	return c
}

// cli runs the tandem CLI against agent i's admin API with the token.
func cli(t *testing.T, c *testbin.Cluster, i int, args ...string) (string, error) {
	t.Helper()
	full := append(args, "--admin", c.Nodes[i].AdminAddr, "--token-file", c.TokenFile)
	cmd := exec.Command(testbin.Binary(t), full...)
	cmd.Env = testbin.CleanEnv()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func mustCLI(t *testing.T, c *testbin.Cluster, i int, args ...string) string {
	t.Helper()
	out, err := cli(t, c, i, args...)
	if err != nil {
		t.Fatalf("tandem %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func getJSON(addr, path string, v any) error {
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, b)
	}
	return json.Unmarshal(b, v)
}

// do sends a request and returns the status and the error message of an
// error body.
func do(t *testing.T, method, url, token, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e admin.Error
	_ = json.Unmarshal(b, &e)
	if resp.StatusCode >= 400 && e.Error == "" {
		t.Errorf("%s %s: %s with a body that is not a JSON error: %s", method, url, resp.Status, b)
	}
	return resp.StatusCode, e.Error
}

func waitFor(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func showVolume(t *testing.T, c *testbin.Cluster, i int, name string) admin.Volume {
	t.Helper()
	v, err := tryShowVolume(t, c, i, name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// tryShowVolume is showVolume for use inside waitFor: an error (an agent
// that just restarted, a control leader that just moved) is retried.
func tryShowVolume(t *testing.T, c *testbin.Cluster, i int, name string) (admin.Volume, error) {
	t.Helper()
	var v admin.Volume
	out, err := cli(t, c, i, "volume", "show", name, "-o", "json")
	if err != nil {
		return v, fmt.Errorf("tandem volume show %s: %v\n%s", name, err, out)
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return v, fmt.Errorf("volume show -o json: %v\n%s", err, out)
	}
	return v, nil
}

func nbdSize(t *testing.T, uri string) string {
	t.Helper()
	return strings.TrimSpace(testbin.Run(t, 30*time.Second, "nbdinfo", "--size", uri))
}

// TestVolumeLifecycle creates, inspects, writes, grows and deletes a volume
// through the CLI of different agents of a 3-agent cluster, with real NBD
// clients in between.
func TestVolumeLifecycle(t *testing.T) {
	testbin.Require(t, "qemu-io", "nbdinfo")
	c := startManaged(t, 3)

	out := mustCLI(t, c, 1, "volume", "create", "disk1", "--size", "64M")
	if !strings.Contains(out, "disk1") {
		t.Fatalf("volume create printed:\n%s", out)
	}
	v := showVolume(t, c, 2, "disk1")
	hosts := slices.Clone(v.Hosts)
	slices.Sort(hosts)
	if v.Size != 64<<20 || !slices.Equal(hosts, []string{"n1", "n2", "n3"}) || v.Leader == "" || len(v.Replicas) != 3 {
		t.Fatalf("volume show: %+v", v)
	}
	if _, err := cli(t, c, 0, "volume", "create", "disk1", "--size", "1M"); err == nil {
		t.Fatal("creating an existing volume succeeded")
	}

	// Every replica's agent serves it; data written through one is read
	// through another.
	testbin.Run(t, 30*time.Second, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M", "-c", "write -P 0x11 63M 1M", c.URI(0, "disk1"))
	testbin.Run(t, 30*time.Second, "qemu-io", "-f", "raw", "-c", "read -P 0x5a 0 1M", "-c", "read -P 0x11 63M 1M", c.URI(2, "disk1"))

	// Grow: every agent's new connections see the new size at once.
	mustCLI(t, c, 2, "volume", "resize", "disk1", "--size", "128M")
	for i := range 3 {
		if got := nbdSize(t, c.URI(i, "disk1")); got != fmt.Sprint(128<<20) {
			t.Fatalf("size through n%d after the resize: %s", i+1, got)
		}
	}
	testbin.Run(t, 30*time.Second, "qemu-io", "-f", "raw", "-c", "write -P 0x22 100M 1M", c.URI(1, "disk1"))
	testbin.Run(t, 30*time.Second, "qemu-io", "-f", "raw", "-c", "read -P 0x22 100M 1M", "-c", "read -P 0x5a 0 1M", c.URI(2, "disk1"))
	// Prometheus metrics: members, I/O and replica lag on n1 (which served
	// NBD above), commits on the agents that led the volume (the first
	// leader may have handed leadership to the preferred host since).
	scrape := func(i int) string {
		page, err := c.Nodes[i].Metrics()
		if err != nil {
			t.Fatal(err)
		}
		return page
	}
	mb := scrape(0)
	for _, want := range []string{`tandem_member_state{member="n2",state="alive"} 1`, `tandem_control_applied_index`, `tandem_control_failed 0`,
		`tandem_nbd_requests_total{`, `tandem_raft_apply_lag_entries{volume="disk1"}`} {
		if !strings.Contains(mb, want) {
			t.Errorf("/metrics of n1 lacks %s", want)
		}
	}
	const commits = `tandem_raft_commit_seconds_bucket{volume="disk1"`
	if !slices.ContainsFunc([]int{0, 1, 2}, func(i int) bool { return strings.Contains(scrape(i), commits) }) {
		t.Errorf("no agent's /metrics has %s", commits)
	}
	if _, err := cli(t, c, 0, "volume", "resize", "disk1", "--size", "64M"); err == nil {
		t.Fatal("shrinking a volume succeeded")
	}

	// Delete is refused while a client is attached, unless forced; the
	// forced delete disconnects the client and removes every replica.
	ctx := context.Background()
	conn, err := c.Dial(ctx, 1, "disk1")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	waitFor(t, 10*time.Second, "the attachment to show", func() error {
		v, err := tryShowVolume(t, c, 0, "disk1")
		if err == nil && v.Attached != 1 {
			err = fmt.Errorf("attached %d", v.Attached)
		}
		return err
	})
	if out, err := cli(t, c, 0, "volume", "delete", "disk1"); err == nil || !strings.Contains(out, "attached") {
		t.Fatalf("delete of an attached volume: %v\n%s", err, out)
	}
	mustCLI(t, c, 0, "volume", "delete", "disk1", "--force")
	waitFor(t, 10*time.Second, "the client to be disconnected", func() error {
		if conn.Err() == nil {
			return fmt.Errorf("connection still up")
		}
		return nil
	})
	waitFor(t, 10*time.Second, "the replicas to be removed", func() error {
		for i := range 3 {
			if _, err := exec.Command("test", "-e", c.VolumePath(i, "disk1")).CombinedOutput(); err == nil {
				return fmt.Errorf("n%d still holds %s", i+1, c.VolumePath(i, "disk1"))
			}
		}
		return nil
	})
	if out, err := cli(t, c, 1, "volume", "show", "disk1"); err == nil {
		t.Fatalf("volume show after delete succeeded:\n%s", out)
	}
	// The name is free again: a new volume starts empty.
	mustCLI(t, c, 2, "volume", "create", "disk1", "--size", "64M", "--replicas", "2")
	v = showVolume(t, c, 0, "disk1")
	if len(v.Hosts) != 2 || v.Hosts[0] == v.Hosts[1] {
		t.Fatalf("2-replica volume placed on %v", v.Hosts)
	}
	idx := slices.IndexFunc(c.Nodes, func(n *testbin.Node) bool { return n.Name == v.Hosts[0] })
	testbin.Run(t, 30*time.Second, "qemu-io", "-f", "raw", "-c", "read -P 0 0 1M", c.URI(idx, "disk1"))

	if out := mustCLI(t, c, 2, "volume", "list"); !strings.Contains(out, "disk1") {
		t.Fatalf("volume list:\n%s", out)
	}
	if out := mustCLI(t, c, 1, "host", "list"); strings.Count(out, "alive") != 3 {
		t.Fatalf("host list:\n%s", out)
	}
	if out := mustCLI(t, c, 0, "cluster", "status"); !strings.Contains(out, "n1") {
		t.Fatalf("cluster status:\n%s", out)
	}
}

// TestAPIValidationAndToken checks the API's answers to bad input and
// that every state-changing endpoint refuses a missing or wrong token.
func TestAPIValidationAndToken(t *testing.T) {
	c := startManaged(t, 3)
	base := "http://" + c.Nodes[1].AdminAddr // a follower of the control plane, most likely
	if code, msg := do(t, "POST", base+"/v1/volumes", c.Token, `{"name":"ok","size":"16M","replicas":3}`); code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, msg)
	}
	changes := []struct{ method, path, body string }{
		{"POST", "/v1/volumes", `{"name":"new","size":"1M"}`},
		{"PATCH", "/v1/volumes/ok", `{"size":"32M"}`},
		{"DELETE", "/v1/volumes/ok", ``},
		{"DELETE", "/v1/volumes/ok?force=true", ``},
	}
	for _, ch := range changes {
		for _, tok := range []string{"", "wrong-token", c.Token + "x"} {
			if code, msg := do(t, ch.method, base+ch.path, tok, ch.body); code != http.StatusUnauthorized || msg == "" {
				t.Errorf("%s %s with token %q: %d %q, want 401 with a message", ch.method, ch.path, tok, code, msg)
			}
		}
	}
	bad := []struct {
		name, method, path, body string
		want                     int
	}{
		{"bad name", "POST", "/v1/volumes", `{"name":"Bad Name!","size":"1M"}`, 400},
		{"long name", "POST", "/v1/volumes", `{"name":"` + strings.Repeat("a", 64) + `","size":"1M"}`, 400},
		{"bad size", "POST", "/v1/volumes", `{"name":"x","size":"12 parsecs"}`, 400},
		{"zero size", "POST", "/v1/volumes", `{"name":"x","size":0}`, 400},
		{"no size", "POST", "/v1/volumes", `{"name":"x"}`, 400},
		{"six replicas", "POST", "/v1/volumes", `{"name":"x","size":"1M","replicas":6}`, 400},
		{"more replicas than hosts", "POST", "/v1/volumes", `{"name":"x","size":"1M","replicas":4}`, 409},
		{"bad json", "POST", "/v1/volumes", `{"name":`, 400},
		{"unknown field", "POST", "/v1/volumes", `{"name":"x","size":"1M","colour":"red"}`, 400},
		{"empty body", "POST", "/v1/volumes", ``, 400},
		{"exists", "POST", "/v1/volumes", `{"name":"ok","size":"1M"}`, 409},
		{"shrink", "PATCH", "/v1/volumes/ok", `{"size":"1M"}`, 400},
		{"resize missing", "PATCH", "/v1/volumes/nope", `{"size":"1G"}`, 404},
		{"resize bad size", "PATCH", "/v1/volumes/ok", `{"size":"big"}`, 400},
		{"delete missing", "DELETE", "/v1/volumes/nope", ``, 404},
		{"bad force", "DELETE", "/v1/volumes/ok?force=maybe", ``, 400},
		{"show missing", "GET", "/v1/volumes/nope", ``, 404},
		{"unknown endpoint", "GET", "/v1/teapots", ``, 404},
	}
	for _, b := range bad {
		code, msg := do(t, b.method, base+b.path, c.Token, b.body)
		if code != b.want || msg == "" {
			t.Errorf("%s: %d %q, want %d with a message", b.name, code, msg, b.want)
		}
	}
	// Nothing above changed the volume.
	var v admin.Volume
	if err := getJSON(c.Nodes[2].AdminAddr, "/v1/volumes/ok", &v); err != nil || v.Size != 16<<20 {
		t.Fatalf("volume after the refused requests: %+v, %v", v, err)
	}
	var vs []admin.Volume
	if err := getJSON(c.Nodes[0].AdminAddr, "/v1/volumes", &vs); err != nil || len(vs) != 1 {
		t.Fatalf("volumes after the refused requests: %+v, %v", vs, err)
	}
}

// TestFiveAgents runs 5 agents (3 control voters, 2 non-voters): volumes
// land on distinct hosts, non-voters follow the catalog, the API keeps
// answering from every agent after the control leader is killed, and a
// killed host is marked failed and comes back.
func TestFiveAgents(t *testing.T) {
	testbin.Require(t, "qemu-io")
	c := startManaged(t, 5)
	var st admin.ClusterStatus
	if err := getJSON(c.Nodes[4].AdminAddr, "/v1/cluster", &st); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(st.ControlVoters, []string{"n1", "n2", "n3"}) || st.Hosts != 5 {
		t.Fatalf("cluster status: %+v", st)
	}
	// Placement: distinct hosts, leaders spread.
	leaders := map[string]int{}
	for i := range 5 {
		name := fmt.Sprintf("p%d", i)
		mustCLI(t, c, i, "volume", "create", name, "--size", "8M")
		v := showVolume(t, c, (i+1)%5, name)
		if len(v.Hosts) != 3 || len(slices.Compact(slices.Sorted(slices.Values(v.Hosts)))) != 3 {
			t.Fatalf("%s placed on %v", name, v.Hosts)
		}
		leaders[v.PreferredLeader]++
	}
	if len(leaders) < 3 {
		t.Errorf("preferred leaders of 5 volumes on %d hosts only: %v", len(leaders), leaders)
	}
	// Every agent serves every volume: the two without a replica of p0
	// proxy to its replicas' agents.
	v0 := showVolume(t, c, 0, "p0")
	var outside []int
	for i, n := range c.Nodes {
		if !slices.Contains(v0.Hosts, n.Name) {
			outside = append(outside, i)
		}
	}
	if len(outside) != 2 {
		t.Fatalf("p0 on %v", v0.Hosts)
	}
	testbin.Run(t, 30*time.Second, "qemu-io", "-f", "raw", "-c", "write -P 0x3c 1M 1M", c.URI(outside[0], "p0"))
	testbin.Run(t, 30*time.Second, "qemu-io", "-f", "raw", "-c", "read -P 0x3c 1M 1M", c.URI(outside[1], "p0"))
	inside := slices.IndexFunc(c.Nodes, func(n *testbin.Node) bool { return n.Name == v0.Hosts[1] })
	testbin.Run(t, 30*time.Second, "qemu-io", "-f", "raw", "-c", "read -P 0x3c 1M 1M", c.URI(inside, "p0"))
	var hs []admin.Host
	if err := getJSON(c.Nodes[3].AdminAddr, "/v1/hosts", &hs); err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		want := "nonvoter"
		if h.Name <= "n3" {
			want = "voter"
		}
		if h.Control != want && !(h.Control == "leader" && want == "voter") {
			t.Errorf("host %s control role %q, want %s", h.Name, h.Control, want)
		}
		if h.Replicas != 3 && h.Replicas != 2 && h.Replicas != 4 {
			t.Errorf("host %s holds %d replicas of 5 volumes × 3: unbalanced", h.Name, h.Replicas)
		}
	}

	// Kill the control leader: every other agent answers within seconds.
	lead := slices.IndexFunc(c.Nodes, func(n *testbin.Node) bool { return n.Name == st.ControlLeader })
	killed := time.Now()
	c.Kill(lead)
	for i := range 5 {
		if i == lead {
			continue
		}
		waitFor(t, 15*time.Second, fmt.Sprintf("n%d to answer with a new control leader", i+1), func() error {
			var s admin.ClusterStatus
			if err := getJSON(c.Nodes[i].AdminAddr, "/v1/cluster", &s); err != nil {
				return err
			}
			if s.ControlLeader == "" || s.ControlLeader == st.ControlLeader {
				return fmt.Errorf("control leader %q", s.ControlLeader)
			}
			return nil
		})
	}
	t.Logf("API answering from every agent with a new control leader %v after the kill", time.Since(killed).Round(time.Millisecond))
	// The killed host is marked failed; changes still go through.
	waitFor(t, 20*time.Second, "the killed host to be marked failed", func() error {
		var hs []admin.Host
		if err := getJSON(c.Nodes[(lead+1)%5].AdminAddr, "/v1/hosts", &hs); err != nil {
			return err
		}
		for _, h := range hs {
			if h.Name == c.Nodes[lead].Name && h.State != admin.HostFailed {
				return fmt.Errorf("%s is %s", h.Name, h.State)
			}
		}
		return nil
	})
	mustCLI(t, c, (lead+2)%5, "volume", "create", "after", "--size", "8M")
	// It comes back.
	c.Start(lead)
	waitFor(t, 20*time.Second, "the restarted host to be alive again", func() error {
		var hs []admin.Host
		if err := getJSON(c.Nodes[(lead+1)%5].AdminAddr, "/v1/hosts", &hs); err != nil {
			return err
		}
		for _, h := range hs {
			if h.Name == c.Nodes[lead].Name && h.State != admin.HostAlive {
				return fmt.Errorf("%s is %s", h.Name, h.State)
			}
		}
		return nil
	})
	// Its replicas are served again, with their data.
	for i := range 5 {
		var v admin.Volume
		waitFor(t, 10*time.Second, "volume show", func() error {
			var err error
			v, err = tryShowVolume(t, c, (lead+1)%5, fmt.Sprintf("p%d", i))
			return err
		})
		if !slices.Contains(v.Hosts, c.Nodes[lead].Name) {
			continue
		}
		waitFor(t, 20*time.Second, "the restarted replica to catch up", func() error {
			v, err := tryShowVolume(t, c, lead, fmt.Sprintf("p%d", i))
			if err != nil {
				return err
			}
			for _, r := range v.Replicas {
				if r.Host == c.Nodes[lead].Name && (r.State != "Follower" && r.State != "Leader" || r.Lag > 0) {
					return fmt.Errorf("replica on %s: %+v", r.Host, r)
				}
			}
			return nil
		})
	}
	if out := mustCLI(t, c, lead, "volume", "list"); !bytes.Contains([]byte(out), []byte("after")) {
		t.Fatalf("the restarted agent's volume list lacks the volume created while it was down:\n%s", out)
	}
}
