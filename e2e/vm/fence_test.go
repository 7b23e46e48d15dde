package vm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/internal/testbin"
	"github.com/tandem-project/tandem/nbd/nbdclient"
	"github.com/tandem-project/tandem/volume"
)

// getJSON decodes the answer to GET path from agent i's admin API.
func getJSON(c *testbin.Cluster, i int, path string, v any) error {
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + c.Nodes[i].AdminAddr + path)
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

// localVolumes returns agent i's replicas as GET /v1/local/volumes reports
// them.
func localVolumes(c *testbin.Cluster, i int) ([]admin.LocalVolume, error) {
	var out []admin.LocalVolume
	err := getJSON(c, i, "/v1/local/volumes", &out)
	return out, err
}

// waitFenced waits until every replica of vol applied the fence of
// generation gen or a newer one.
func waitFenced(t *testing.T, c *testbin.Cluster, vol string, epoch, gen uint64) {
	t.Helper()
	testbin.WaitFor(t, 20*time.Second, fmt.Sprintf("every replica of %s fenced to epoch %d (gen %d)", vol, epoch, gen), func() error {
		for i := range c.Nodes {
			lv, err := localVolumes(c, i)
			if err != nil {
				return err
			}
			found := false
			for _, v := range lv {
				if v.Name != vol {
					continue
				}
				found = true
				if v.WriterGen < gen || (v.WriterGen == gen && v.WriterEpoch != epoch) {
					return fmt.Errorf("n%d: writer epoch %d gen %d", i+1, v.WriterEpoch, v.WriterGen)
				}
			}
			if !found {
				return fmt.Errorf("n%d holds no replica of %s", i+1, vol)
			}
		}
		return nil
	})
}

// qemuWrite writes pattern p at 0 of export through agent i with qemu-io
// and returns its output and error.
func qemuWrite(c *testbin.Cluster, i int, export string, p byte) (string, error) {
	return testbin.RunErr(30*time.Second, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P %d 0 64k", p), c.URI(i, export))
}

// TestFencedWriters checks storage fencing through the real binary: once
// a VM runs, its disk accepts writes only under the VM's writer epoch,
// through every agent (the leader's, a follower's forwarding), from real
// NBD clients; a connection opened under an older epoch is refused after
// the VM restarts (a new epoch); stopping the VM opens the disk again.
func TestFencedWriters(t *testing.T) {
	testbin.Require(t, "qemu-io")
	c := testbin.StartCluster(t, testbin.ClusterConfig{Hosts: 3, Managed: true})
	c.WaitManaged(30 * time.Second)
	ctx := context.Background()
	api := c.Admin(0)
	if _, err := api.CreateVolume(ctx, admin.CreateVolume{Name: "d1", Size: 8 << 20, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := api.CreateVM(ctx, admin.CreateVM{Name: "vm1", Disks: []string{"d1"}, Memory: 32 << 20}); err != nil {
		t.Fatal(err)
	}
	// No writer yet: plain writes are accepted.
	if out, err := qemuWrite(c, 1, "d1", 1); err != nil {
		t.Fatalf("plain write before the VM started: %v\n%s", err, out)
	}

	vm, err := api.StartVM(ctx, "vm1", "n1")
	if err != nil {
		t.Fatal(err)
	}
	e1, g1 := vm.Epoch, vm.Disks[0].WriterGen
	if e1 == 0 || vm.Disks[0].WriterEpoch != e1 {
		t.Fatalf("started VM: epoch %d, disk %+v", e1, vm.Disks[0])
	}
	waitFenced(t, c, "d1", e1, g1)
	for i := range c.Nodes {
		for _, export := range []string{"d1", volume.WriterExport("d1", e1+1)} {
			out, err := qemuWrite(c, i, export, 2)
			if err == nil || !strings.Contains(out, "Operation not permitted") {
				t.Errorf("write to %s through n%d while vm1 (epoch %d) owns the disk: %v\n%s", export, i+1, e1, err, out)
			}
		}
		if out, err := qemuWrite(c, i, volume.WriterExport("d1", e1), byte(10+i)); err != nil {
			t.Errorf("write under the VM's epoch through n%d: %v\n%s", i+1, err, out)
		}
	}
	// The refused writes left nothing: the last accepted write is n3's.
	out := testbin.Run(t, 30*time.Second, "qemu-io", "-f", "raw", "-r", "-c", "read -P 12 0 64k", c.URI(0, "d1"))
	if strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("the disk does not hold the last accepted write:\n%s", out)
	}

	// A connection of epoch e1 stays open while the VM restarts under a
	// new epoch: its writes are refused from then on (a stale source).
	old, err := c.Dial(ctx, 1, volume.WriterExport("d1", e1))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := old.WriteAt(ctx, bytes.Repeat([]byte{20}, 4096), 0, 0); err != nil {
		t.Fatalf("write under the current epoch: %v", err)
	}
	if _, err := api.StopVM(ctx, "vm1"); err != nil {
		t.Fatal(err)
	}
	vm, err = api.StartVM(ctx, "vm1", "n2")
	if err != nil {
		t.Fatal(err)
	}
	e2, g2 := vm.Epoch, vm.Disks[0].WriterGen
	waitFenced(t, c, "d1", e2, g2)
	err = old.WriteAt(ctx, bytes.Repeat([]byte{21}, 4096), 0, 0)
	var ne *nbdclient.Error
	if !errors.As(err, &ne) || syscall.Errno(ne.Errno) != syscall.EPERM {
		t.Fatalf("write on the connection of the old epoch %d after the VM restarted under %d: %v, want EPERM", e1, e2, err)
	}
	got := make([]byte, 4096)
	if err := old.ReadAt(ctx, got, 0, 0); err != nil || got[0] != 20 {
		t.Fatalf("reading back through the fenced connection: %d, %v; want 20 (reads stay allowed)", got[0], err)
	}

	// Stopped: the disk has no writer and takes plain writes again.
	vm, err = api.StopVM(ctx, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	waitFenced(t, c, "d1", 0, vm.Disks[0].WriterGen)
	if out, err := qemuWrite(c, 2, "d1", 3); err != nil {
		t.Fatalf("plain write after the VM stopped: %v\n%s", err, out)
	}
}
