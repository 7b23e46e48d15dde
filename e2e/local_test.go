package e2e

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/internal/testbin"
)

// TestLocalVolume serves a local volume (--volume NAME=SIZE,local) beside
// a replicated one: it advertises what it does, keeps what was flushed
// across kill -9, punches holes for discards, lives in --data/local, and
// an agent refuses to serve a volume as the other kind than the data
// directory holds it.
func TestLocalVolume(t *testing.T) {
	t.Parallel()
	testbin.Require(t, "qemu-io")
	dir := t.TempDir()
	args := []string{"--volume", "vol0=4M", "--volume", "scratch=16M,local"}
	a := testbin.StartAgent(t, dir, args...)

	o := nbdinfoJSON(t, a.URI("scratch"))
	if len(o.Exports) != 1 {
		t.Fatalf("nbdinfo: %+v", o)
	}
	x := o.Exports[0]
	if x.Size != 16*mib || x.ReadOnly || !x.CanFlush || !x.CanFUA || !x.CanTrim || !x.CanZero || !x.CanMultiConn {
		t.Errorf("local volume's export: %+v", x)
	}
	if !strings.Contains(x.Description, "local") {
		t.Errorf("description %q does not say the volume is local", x.Description)
	}

	qemuIO(t, a.URI("scratch"),
		"write -P 0x61 0 1M",
		"write -f -P 0x62 5M 4k",
		"write -z 8M 1M",
		"write -P 0x63 15M 1M",
		"discard 0 64k",
		"flush")
	qemuIO(t, a.URI("vol0"), "write -P 0x64 0 4k")
	wantRangeType(t, nbdMap(t, a.URI("scratch")), 0, 64*1024, typeHoleZero)
	wantRangeType(t, nbdMap(t, a.URI("scratch")), 15*mib, mib, typeData)
	if _, err := os.Stat(filepath.Join(dir, "local", "scratch.img")); err != nil {
		t.Errorf("the local volume's file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "groups", "scratch")); err == nil {
		t.Errorf("a local volume has a replica directory")
	}

	a.Kill()
	b := testbin.StartAgent(t, dir, append(args, "--admin-listen", "127.0.0.1:0")...)
	checkLocalStatus(t, b)
	qemuIO(t, b.URI("scratch"),
		"read -P 0 0 64k",
		"read -P 0x61 64k 960k",
		"read -P 0 1M 4M",
		"read -P 0x62 5M 4k",
		"read -P 0 8M 1M",
		"read -P 0x63 15M 1M")
	qemuIO(t, b.URI("vol0"), "read -P 0x64 0 4k")
	b.Stop(10 * time.Second)

	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"local volume declared replicated", []string{"--volume", "scratch=16M"}, "holds it as a local volume"},
		{"replicated volume declared local", []string{"--volume", "vol0=4M,local"}, "holds it as a replicated volume"},
	} {
		out, err := testbin.RunErr(15*time.Second, testbin.Binary(t), append([]string{"agent", "--data", dir, "--nbd-listen", "127.0.0.1:0"}, c.args...)...)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("%s: %v, output lacks %q:\n%s", c.name, err, c.want, out)
		}
	}
	// Read-only: served as it is, writes refused.
	c := testbin.StartAgent(t, dir, "--volume", "scratch=16M,ro,local")
	qemuIOReadOnly(t, c.URI("scratch"), "read -P 0x62 5M 4k")
	qemuIOFails(t, c.URI("scratch"), "write -P 0x65 0 4k")
}

// checkLocalStatus checks that the admin API of agent a lists the local
// volume scratch (its replica's state Local) beside the replicated vol0,
// in the bodies of cluster mode, which tandem volume list reads.
func checkLocalStatus(t *testing.T, a *testbin.Agent) {
	t.Helper()
	m := regexp.MustCompile(`msg="serving admin API" addr=(\S+)`).FindStringSubmatch(a.Log())
	if m == nil {
		t.Fatalf("no admin address in the agent's log:\n%s", a.Log())
	}
	resp, err := http.Get("http://" + m[1] + "/v1/volumes")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var vs []admin.Volume
	if err := json.NewDecoder(resp.Body).Decode(&vs); err != nil {
		t.Fatal(err)
	}
	states := map[string]string{}
	for _, v := range vs {
		if len(v.Replicas) != 1 {
			t.Fatalf("/v1/volumes: %s has %d replicas listed, want this host's: %+v", v.Name, len(v.Replicas), v)
		}
		states[v.Name] = v.Replicas[0].State
		if v.Name == "scratch" && v.Size != 16*mib {
			t.Errorf("scratch: size %d", v.Size)
		}
	}
	if states["scratch"] != "Local" || states["vol0"] == "" || states["vol0"] == "Local" {
		t.Errorf("/v1/volumes: %+v", vs)
	}
	out := testbin.Run(t, toolTimeout, testbin.Binary(t), "volume", "list", "--admin", m[1])
	if !strings.Contains(out, "scratch") || !strings.Contains(out, "vol0") {
		t.Errorf("tandem volume list:\n%s", out)
	}
}
