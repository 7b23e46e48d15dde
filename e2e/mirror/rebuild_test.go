package mirror

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/internal/testbin"
)

// TestRebuildReplica rebuilds replicas in place on a cluster of three
// hosts, where no host is free to take a moved replica, while two writers
// write through an agent:
//   - a follower's replica damaged behind raft's back: the verification
//     finds it, tandem volume rebuild repairs it, the next verification
//     passes;
//   - the leader's replica, rebuilt on request: leadership leaves first;
//   - a follower whose replica's files are deleted while its agent is down
//     (a replaced disk): the agent does not come back with an empty
//     replica, it asks for a rebuild, which completes by itself.
//
// No write fails, and every replica holds exactly what was acknowledged.
func TestRebuildReplica(t *testing.T) {
	const size = 32 << 20
	c, v := startHosts(t, 3, size)
	ctx := context.Background()
	leader := index(c, v.Leader)
	prefill(t, c, leader, size)
	// Every replica applied the prefill before its file is damaged (an
	// apply after the damage would overwrite it).
	waitCaughtUp(t, c, leader)
	// The writers write the first half through the leader's agent (whose
	// replica is rebuilt too: its clients go through a proxy meanwhile).
	l := startLoad(t, c, leader, 2, size/blockSize/2, nil)

	follower := v.Hosts[0]
	if follower == v.Leader {
		follower = v.Hosts[1]
	}
	const damaged = size/blockSize - 3 // in the half no writer touches
	damageBlock(t, c, follower, damaged)
	if out, err := cli(t, c, leader, "volume", "verify", volName); err == nil || !strings.Contains(out, follower+" DIFFERS") {
		t.Fatalf("verification after damaging %s's replica: %v\n%s", follower, err, out)
	}
	out, err := cli(t, c, leader, "volume", "rebuild", volName, "--host", follower)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rebuilt the damaged replica: %s", strings.TrimSpace(out))
	if !strings.Contains(out, "Rebuilt volume "+volName+"'s replica on "+follower) {
		t.Fatalf("rebuild output: %s", out)
	}
	if out, err := cli(t, c, leader, "volume", "verify", volName); err != nil || !strings.Contains(out, "every replica matches") {
		t.Fatalf("verification after the rebuild: %v\n%s", err, out)
	}

	// The leader's replica.
	start := time.Now()
	out, err = cli(t, c, leader, "volume", "rebuild", volName, "--host", v.Leader)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rebuilt the leader's replica: %s; longest write gap %v", strings.TrimSpace(out), l.longestGap(start, time.Now()))
	if !strings.Contains(c.Nodes[leader].Log(), "handing the volume's leadership away before its replica here is rebuilt") {
		t.Error("the leader's agent did not hand leadership away before its replica was rebuilt")
	}

	// A follower's files lost while its agent is down (not the agent the
	// writers are connected to).
	testbin.WaitFor(t, 20*time.Second, "a leader", func() error {
		var err error
		if v, err = c.Admin(leader).Volume(ctx, volName); err == nil && (v.Leader == "" || v.State != admin.VolumeReady) {
			err = fmt.Errorf("volume %s, leader %q", v.State, v.Leader)
		}
		return err
	})
	var lost string
	for _, h := range v.Hosts {
		if h != v.Leader && h != c.Nodes[leader].Name {
			lost = h
		}
	}
	li := index(c, lost)
	c.Kill(li)
	dir := filepath.Dir(c.VolumePath(li, volName))
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	c.Start(li)
	var got admin.Volume
	testbin.WaitFor(t, 90*time.Second, "the lost replica rebuilt", func() error {
		if got, err = c.Admin(leader).Volume(ctx, volName); err != nil {
			return err
		}
		if r := got.LastMove; got.Move != nil || r == nil || r.From != lost || r.Reason != "lost" || r.Result != "completed" {
			return fmt.Errorf("move %+v, last %+v", got.Move, got.LastMove)
		}
		return nil
	})
	r := got.LastMove
	t.Logf("lost replica on %s rebuilt %v after the restart: %s copied in %v, check %d/%d ranges", lost,
		r.Finished.Sub(killed).Round(100*time.Millisecond), humanBytes(r.Bytes), r.Copy.Round(time.Millisecond), r.Check.Compared, r.Check.Ranges)
	if log := c.Nodes[li].Log(); !strings.Contains(log, "lost its raft state") {
		t.Errorf("%s's agent did not report its lost replica", lost)
	}
	if out, err := cli(t, c, leader, "volume", "verify", volName); err != nil || !strings.Contains(out, "every replica matches") {
		t.Fatalf("verification after the lost replica's rebuild: %v\n%s", err, out)
	}
	l.end(t)
	t.Logf("%d writes, longest gap %v", l.writes, l.maxGap.Round(time.Millisecond))
	verify(t, c, v.Hosts, l, size, size)
	// The rebuilt host serves the volume from its replica again.
	conn, err := c.Dial(ctx, li, volName)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, blockSize)
	if err := conn.ReadAt(ctx, buf, damaged*blockSize, 0); err != nil || string(buf) != string(prefillBlock(damaged)) {
		t.Fatalf("reading through %s after its rebuild: %v", lost, err)
	}
}

// TestHostDataLost deletes a whole host's data directory while its agent
// is down (a replaced disk: control plane member, catalog and replicas
// gone) and starts it again, in a cluster of three hosts where its
// replica cannot go elsewhere: its control-plane voter is readmitted as a
// new member rather than coming back empty, its replica is rebuilt in
// place (reason lost), no write through another agent fails meanwhile,
// and every replica holds what was acknowledged.
func TestHostDataLost(t *testing.T) {
	const size = 16 << 20
	c, v := startHosts(t, 3, size)
	ctx := context.Background()
	leader := index(c, v.Leader)
	prefill(t, c, leader, size)
	l := startLoad(t, c, leader, 2, size/blockSize, nil)
	var lost string
	for _, h := range v.Hosts {
		if h != v.Leader {
			lost = h
		}
	}
	li := index(c, lost)
	c.Kill(li)
	if err := os.RemoveAll(c.Nodes[li].DataDir); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	c.Start(li)
	var got admin.Volume
	testbin.WaitFor(t, 90*time.Second, "the lost host's replica rebuilt", func() error {
		var err error
		if got, err = c.Admin(leader).Volume(ctx, volName); err != nil {
			return err
		}
		if r := got.LastMove; got.Move != nil || r == nil || r.From != lost || r.Reason != "lost" || r.Result != "completed" {
			return fmt.Errorf("move %+v, last %+v", got.Move, got.LastMove)
		}
		return nil
	})
	t.Logf("%s's replica rebuilt %v after its restart", lost, got.LastMove.Finished.Sub(killed).Round(100*time.Millisecond))
	log := c.Nodes[li].Log()
	for _, want := range []string{"this control voter has no state but the control plane has a history", "control plane member readmitted: a voter again"} {
		if !strings.Contains(log, want) {
			t.Errorf("%s's log lacks %q", lost, want)
		}
	}
	hosts, err := c.Admin(li).Hosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		if h.Name == lost && h.Control != "voter" && h.Control != "leader" {
			t.Errorf("%s is a control plane %q, want a voter again", lost, h.Control)
		}
	}
	l.end(t)
	t.Logf("%d writes, longest gap %v", l.writes, l.maxGap.Round(time.Millisecond))
	verify(t, c, v.Hosts, l, size, size)
	if out, err := cli(t, c, li, "volume", "verify", volName); err != nil || !strings.Contains(out, "every replica matches") {
		t.Fatalf("verification after the rebuild: %v\n%s", err, out)
	}
}
