package mirror

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/internal/testbin"
)

// pattern is the content written to volume v's first 64 KiB.
func pattern(v int) []byte { return bytes.Repeat([]byte{byte(0xA0 + v)}, 64<<10) }

// waitPlaced waits until every volume has 3 ready replicas, none on the
// hosts in avoid, and no move under way, asking host api.
func waitPlaced(t *testing.T, c *testbin.Cluster, api int, names []string, avoid ...string) {
	t.Helper()
	testbin.WaitFor(t, 120*time.Second, fmt.Sprintf("every volume off %v", avoid), func() error {
		for _, n := range names {
			v, err := c.Admin(api).Volume(context.Background(), n)
			if err != nil {
				return err
			}
			if len(v.Hosts) != 3 || v.State != admin.VolumeReady || v.Move != nil {
				return fmt.Errorf("%s: hosts %v, %s, move %+v", n, v.Hosts, v.State, v.Move)
			}
			for _, h := range avoid {
				if slices.Contains(v.Hosts, h) {
					return fmt.Errorf("%s still has a replica on %s (hosts %v)", n, h, v.Hosts)
				}
			}
		}
		return nil
	})
}

// checkData reads every volume's pattern back through host i.
func checkData(t *testing.T, c *testbin.Cluster, i int, names []string) {
	t.Helper()
	if err := readData(c, i, names); err != nil {
		t.Fatal(err)
	}
}

// readData reads every volume's pattern back through host i and reports
// the first error or difference.
func readData(c *testbin.Cluster, i int, names []string) error {
	ctx := context.Background()
	for k, n := range names {
		conn, err := c.Dial(ctx, i, n)
		if err != nil {
			return err
		}
		got := make([]byte, 64<<10)
		err = conn.ReadAt(ctx, got, 0, 0)
		conn.Close()
		if err != nil {
			return fmt.Errorf("volume %s through n%d: %w", n, i+1, err)
		}
		if !bytes.Equal(got, pattern(k)) {
			return fmt.Errorf("volume %s through n%d: the data changed", n, i+1)
		}
	}
	return nil
}

// TestDrain drains a host holding replicas of several volumes through the
// CLI: every replica moves to the other hosts with its data, the host
// gets no new replica while drained, and takes them again once undrained
// (its old replicas do not move back).
func TestDrain(t *testing.T) {
	c := testbin.StartCluster(t, testbin.ClusterConfig{Hosts: 4, Managed: true})
	c.WaitManaged(30 * time.Second)
	ctx := context.Background()
	var names []string
	for k := range 5 {
		n := fmt.Sprintf("e%d", k)
		if _, err := c.Admin(0).CreateVolume(ctx, admin.CreateVolume{Name: n, Size: 8 << 20, Replicas: 3}); err != nil {
			t.Fatal(err)
		}
		names = append(names, n)
	}
	waitPlaced(t, c, 0, names)
	for k, n := range names {
		conn, err := c.Dial(ctx, 3, n)
		if err != nil {
			t.Fatal(err)
		}
		if err := conn.WriteAt(ctx, pattern(k), 0, 0); err != nil {
			t.Fatal(err)
		}
		conn.Close()
	}

	// Drain n1.
	start := time.Now()
	out, err := cli(t, c, 2, "host", "drain", "n1", "--wait-timeout", "2m")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("drain of n1: %v; %s", time.Since(start).Round(time.Millisecond), out)
	waitPlaced(t, c, 0, names, "n1")
	checkData(t, c, 1, names)
	hs, err := c.Admin(0).Hosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		if h.Name == "n1" && (!h.Drained || h.Replicas != 0) {
			t.Fatalf("n1 after the drain: %+v", h)
		}
	}
	// A drained host gets no new replica.
	if _, err := c.Admin(0).CreateVolume(ctx, admin.CreateVolume{Name: "after-drain", Size: 8 << 20, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Admin(0).Volume(ctx, "after-drain"); err != nil || slices.Contains(v.Hosts, "n1") {
		t.Fatalf("a volume created during the drain: %+v, %v", v.Hosts, err)
	}
	if out, err := cli(t, c, 0, "host", "undrain", "n1"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}

	waitPlaced(t, c, 0, names, "n1")
	hs, err = c.Admin(0).Hosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		if h.Name == "n1" && h.Drained {
			t.Fatalf("n1 after the undrain: %+v", h)
		}
	}
	// n1 serves the volumes it gave away through proxies (set up as its
	// agent sees the moves end).
	testbin.WaitFor(t, 30*time.Second, "n1 serving the volumes", func() error { return readData(c, 0, names) })
}
