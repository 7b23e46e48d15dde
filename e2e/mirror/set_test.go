package mirror

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/internal/testbin"
)

// TestMoveReplicaSet moves every replica of a 256 MiB volume to other hosts
// with one command (tandem volume move NAME --to H,H,H) while writers
// write each block to it and to a control volume that never moves: no
// write fails, every move passes its integrity check, the volume ends on
// the new hosts, every replica holds what was acknowledged, and the moved
// volume reads identical to the control (qemu-img compare over NBD).
func TestMoveReplicaSet(t *testing.T) {
	testbin.Require(t, "qemu-img")
	const (
		size    = 256 << 20
		control = "ctl"
	)
	c := testbin.StartCluster(t, testbin.ClusterConfig{Hosts: 6, Managed: true})
	c.WaitManaged(60 * time.Second)
	ctx := context.Background()
	api := c.Admin(0)
	for _, name := range []string{volName, control} {
		if _, err := api.CreateVolume(ctx, admin.CreateVolume{Name: name, Size: admin.Size(size), Replicas: 3}); err != nil {
			t.Fatal(err)
		}
	}
	var v admin.Volume
	testbin.WaitFor(t, 30*time.Second, "both volumes ready", func() error {
		for _, name := range []string{control, volName} {
			got, err := api.Volume(ctx, name)
			if err != nil {
				return err
			}
			if got.Leader == "" || got.State != admin.VolumeReady {
				return fmt.Errorf("%s: %s, leader %q", name, got.State, got.Leader)
			}
			v = got
		}
		return nil
	})
	to := spareHosts(c, v)
	client := index(c, v.Hosts[0])
	prefillVolume(t, c, client, volName, size)
	prefillVolume(t, c, client, control, size)
	l := startLoadTo(t, c, client, 2, size/blockSize, nil, control)
	time.Sleep(2 * time.Second) // the gaps of this machine without a move
	start := time.Now()
	out, err := cli(t, c, client, "volume", "move", volName, "--to", strings.Join(to, ","), "--wait-timeout", "2m")
	took := time.Since(start)
	l.end(t)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s", out)
	got, err := c.Admin(index(c, to[0])).Volume(ctx, volName)
	if err != nil {
		t.Fatal(err)
	}
	if r := got.LastMove; r == nil || r.Result != "completed" || r.Error != "" || r.Check == nil || !r.Check.OK {
		t.Fatalf("last move %+v", got.LastMove)
	}
	if !sameSet(got.Hosts, to) || got.Move != nil || len(got.PlannedMoves) > 0 {
		t.Fatalf("after moving to %v: hosts %v, move %+v, planned %v", to, got.Hosts, got.Move, got.PlannedMoves)
	}
	t.Logf("moved 3 replicas of a %d MiB volume in %v; %d writes (each to both volumes), 0 errors; longest gap %v during the moves, %v in the 2 s before them",
		size>>20, took.Round(100*time.Millisecond), l.writes, l.longestGap(start, start.Add(took)).Round(100*time.Microsecond),
		l.longestGap(l.started, start).Round(100*time.Microsecond))
	l.logLongGaps(t, 50*time.Millisecond)
	verify(t, c, got.Hosts, l, size, size)
	// The old hosts deleted their replicas; the moved volume and the
	// control read the same through an old host's agent (a proxy now).
	for _, h := range v.Hosts {
		waitGone(t, c, index(c, h))
	}
	if o, err := testbin.RunErr(2*time.Minute, "qemu-img", "compare", "-f", "raw", "-F", "raw",
		c.URI(client, volName), c.URI(client, control)); err != nil {
		t.Fatalf("the moved volume differs from the control: %v\n%s", err, o)
	}
}

// sameSet reports whether a and b hold the same names.
func sameSet(a, b []string) bool {
	return len(a) == len(b) && !slices.ContainsFunc(a, func(x string) bool { return !slices.Contains(b, x) })
}
