package mirror

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/internal/testbin"
	"github.com/tandem-project/tandem/raftlog"
)

// TestMoveCheckFails damages the new replica behind raft's back in the
// middle of a rate-limited copy (a disk that returns other bytes than it
// was given): the integrity check finds the damaged range, the move ends
// as failed, the destination leaves the group and deletes its replica, the
// volume stays on its hosts, and its data is intact.
func TestMoveCheckFails(t *testing.T) {
	const size = 32 << 20
	c, v := startCluster(t, size)
	from, to := v.Hosts[2], spareHost(c, v)
	client := index(c, v.Hosts[0])
	prefill(t, c, client, size)
	m := startMove(t, c, client, from, to, 8<<20, 8<<20)
	// Block 1 is copied (the copy is in order) and no write after the
	// checkpoint touches it: only the check can notice the damage.
	const damaged = 1
	damageBlock(t, c, to, damaged)

	ctx := context.Background()
	api := c.Admin(client)
	testbin.WaitFor(t, 90*time.Second, "the move ended", func() error {
		got, err := api.Volume(ctx, volName)
		if err != nil {
			return err
		}
		if got.LastMove == nil || got.LastMove.ID != m.ID {
			return fmt.Errorf("move %+v", got.Move)
		}
		v = got
		return nil
	})
	r := v.LastMove
	if r.Result != "failed" || r.Check == nil || r.Check.OK || r.Check.Mismatched != 1 {
		t.Fatalf("last move %+v (check %+v), want failed with one range mismatched", r, r.Check)
	}
	t.Logf("move failed as it should: %s (check: %d of %d ranges compared, %d mismatched)", r.Error, r.Check.Compared, r.Check.Ranges, r.Check.Mismatched)
	if !slices.Contains(v.Hosts, from) || slices.Contains(v.Hosts, to) {
		t.Fatalf("hosts %v after a failed move of %s to %s", v.Hosts, from, to)
	}
	// The destination leaves the group and deletes its replica.
	testbin.WaitFor(t, 30*time.Second, "the destination's replica deleted", func() error {
		if _, err := os.Stat(c.VolumePath(index(c, to), volName)); err == nil {
			return fmt.Errorf("%s still holds its replica", to)
		}
		got, err := api.Volume(ctx, volName)
		if err != nil {
			return err
		}
		for _, rep := range got.Replicas {
			if rep.Host == to {
				return fmt.Errorf("%s is still a member: %+v", to, got.Replicas)
			}
		}
		return nil
	})
	// Every replica still holds the prefill, the damaged block included,
	// and reads through the destination's agent (now a proxy) see it.
	verify(t, c, v.Hosts, &load{acked: map[int64][]byte{}}, size, size)
	conn, err := c.Dial(ctx, index(c, to), volName)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	got := make([]byte, blockSize)
	if err := conn.ReadAt(ctx, got, damaged*blockSize, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, prefillBlock(damaged)) {
		t.Fatal("block read through the destination's agent differs from what was written")
	}
}

// damageBlock overwrites block blk of host's replica file behind raft's
// back, as a disk that returns other bytes than it was given would.
func damageBlock(t *testing.T, c *testbin.Cluster, host string, blk int64) {
	t.Helper()
	f, err := os.OpenFile(c.VolumePath(index(c, host), volName), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xee}, blockSize), blk*blockSize); err != nil {
		t.Fatal(err)
	}
}

// TestVerifyVolume verifies a volume's replicas with the CLI while
// writers write through an agent: every replica matches. Then it damages
// a follower's replica behind raft's back (a disk that returns other bytes
// than it was given): the next verification names that replica and the
// range, fails the command, and shows in tandem volume show. Moving the
// damaged replica to the spare host, as the command's help advises,
// repairs the volume: the verification after it passes.
func TestVerifyVolume(t *testing.T) {
	const size = 32 << 20
	c, v := startCluster(t, size)
	leader := index(c, v.Leader)
	prefill(t, c, leader, size)

	l := startLoad(t, c, leader, 2, size/blockSize/2, nil) // the first half
	out, err := cli(t, c, leader, "volume", "verify", volName)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("under writes: %s", strings.TrimSpace(out))
	if !strings.Contains(out, "every replica matches") {
		t.Fatalf("verification under writes: %s", out)
	}
	l.end(t)
	t.Logf("%d writes during the verification", l.writes)

	// Damage a follower's replica in the half no writer touched.
	v, err = c.Admin(0).Volume(context.Background(), volName) // the leader now
	if err != nil {
		t.Fatal(err)
	}
	var damagedHost string
	for _, h := range v.Hosts {
		if h != v.Leader {
			damagedHost = h
			break
		}
	}
	const damaged = size/blockSize - 3
	damageBlock(t, c, damagedHost, damaged)
	out, err = cli(t, c, index(c, spareHost(c, v)), "volume", "verify", volName, "--max-rate", "64M")
	t.Logf("after the damage: %s", strings.TrimSpace(out))
	wantRange := fmt.Sprintf("differ on %s, the first at byte %d", damagedHost, damaged*blockSize/raftlog.ChecksumRange*raftlog.ChecksumRange)
	if err == nil || !strings.Contains(out, damagedHost+" DIFFERS in 1 of") || !strings.Contains(err.Error(), wantRange) {
		t.Fatalf("verification after damaging %s's replica: %v, output %q; want it to fail naming %q", damagedHost, err, out, wantRange)
	}
	got, err := c.Admin(0).Volume(context.Background(), volName)
	if err != nil {
		t.Fatal(err)
	}
	r := got.LastVerify
	if r == nil || r.OK || len(r.Replicas) != 2 {
		t.Fatalf("last verification %+v, want a failed one over 2 replicas", r)
	}
	for _, vr := range r.Replicas {
		if want := vr.Host != damagedHost; vr.Check.OK != want || (!want && vr.Check.Mismatched != 1) {
			t.Errorf("replica %s: check %+v", vr.Host, vr.Check)
		}
	}
	if show, err := cli(t, c, 0, "volume", "show", volName); err != nil || !strings.Contains(show, "Last verification:  FAILED") {
		t.Errorf("volume show: %v\n%s", err, show)
	}

	// The remedy: move the damaged replica away; the volume verifies.
	if out, err := cli(t, c, leader, "volume", "move", volName, "--from", damagedHost, "--to", spareHost(c, v)); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("moved: %s", strings.TrimSpace(out))
	}
	out, err = cli(t, c, leader, "volume", "verify", volName)
	if err != nil || !strings.Contains(out, "every replica matches") {
		t.Fatalf("verification after the move: %v\n%s", err, out)
	}
	t.Logf("after the move: %s", strings.TrimSpace(out))
}

// TestVerifyHotRange verifies a volume while writers write a few blocks
// of its first range without pause, as a VM's journal would: reads of two
// replicas one after the other never see that range at a common log index,
// so it is compared by a checksum entry, which every replica applies at
// the same index. The verification passes; after a block of that range
// that no writer touches is damaged on a follower, it names that range;
// moving that replica away, under the same writes, completes with range 0
// checked the same way, and the volume verifies again. (Before checksum
// entries, such a verification gave up as "changed during every read",
// and a move retried its check forever.)
func TestVerifyHotRange(t *testing.T) {
	const size = 8 << 20
	c, v := startCluster(t, size)
	leader := index(c, v.Leader)
	prefill(t, c, leader, size)
	l := startLoad(t, c, leader, 2, 8, nil) // blocks 0 to 7: range 0
	defer l.end(t)
	writes := func() int {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.writes
	}
	runVerify := func() (string, error) {
		out, err := cli(t, c, leader, "volume", "verify", volName)
		t.Logf("%d writes so far: %s", writes(), strings.TrimSpace(out))
		return out, err
	}
	for writes() < 200 {
		time.Sleep(10 * time.Millisecond)
	}
	// Now and then two reads of range 0 do fall between writes (one
	// check in six here): verify until one replica's range 0 went by a
	// checksum entry; every verification must pass.
	var got admin.Volume
	for pinned, round := int64(0), 1; pinned == 0; round++ {
		if round > 5 {
			t.Fatalf("no range compared by a checksum entry in %d verifications: range 0 was not written throughout", round-1)
		}
		out, err := runVerify()
		if err != nil || !strings.Contains(out, "every replica matches") {
			t.Fatalf("verification with range 0 written throughout: %v\n%s", err, out)
		}
		if got, err = c.Admin(leader).Volume(context.Background(), volName); err != nil {
			t.Fatal(err)
		}
		for _, vr := range got.LastVerify.Replicas {
			t.Logf("%s: %+v", vr.Host, vr.Check)
			pinned += vr.Check.Pinned
		}
	}

	var damagedHost string
	for _, h := range v.Hosts {
		if h != v.Leader {
			damagedHost = h
			break
		}
	}
	damageBlock(t, c, damagedHost, 100) // range 0, not written
	out, err := runVerify()
	want := fmt.Sprintf("differ on %s, the first at byte 0", damagedHost)
	if err == nil || !strings.Contains(out, damagedHost+" DIFFERS in 1 of") || !strings.Contains(err.Error(), want) {
		t.Fatalf("verification after damaging range 0 of %s's replica: %v, output %q; want it to fail naming %q", damagedHost, err, out, want)
	}

	// The remedy, under the same writes: a move of the damaged replica,
	// whose own check compares range 0 by a checksum entry too (it used
	// to retry that check forever). Then the volume verifies.
	out, err = cli(t, c, leader, "volume", "move", volName, "--from", damagedHost, "--to", spareHost(c, v))
	if err != nil {
		t.Fatalf("move of the damaged replica under writes to range 0: %v\n%s", err, out)
	}
	t.Logf("moved: %s", strings.TrimSpace(out))
	if got, err = c.Admin(leader).Volume(context.Background(), volName); err != nil {
		t.Fatal(err)
	}
	// (Whether range 0 went by a checksum entry depends on the timing of
	// the reads, as for the verification above: not asserted here.)
	if m := got.LastMove; m == nil || m.Check == nil || !m.Check.OK {
		t.Errorf("last move %+v: want a completed check", m)
	} else {
		t.Logf("the move's check: %+v", *m.Check)
	}
	if out, err := runVerify(); err != nil || !strings.Contains(out, "every replica matches") {
		t.Fatalf("verification after the move: %v\n%s", err, out)
	}
}

// TestVerifyLeaderKilled kills the volume leader's agent (SIGKILL) while
// it verifies the volume's replicas at a limited rate: the verification
// is not lost, the new leader's agent runs it and records it, naming the
// dead host's replica as not compared. Once that agent is back, a new
// verification passes; a slow one is cancelled with the CLI, and the
// next one passes.
func TestVerifyLeaderKilled(t *testing.T) {
	const size = 192 << 20 // three batches of 64 ranges per replica
	c, _ := startCluster(t, size)
	ctx := context.Background()
	api := c.Admin(3) // holds no replica: it stays up
	v, err := api.Volume(ctx, volName)
	if err != nil {
		t.Fatal(err)
	}
	spare := index(c, spareHost(c, v))
	api = c.Admin(spare)
	old := index(c, v.Leader)
	prefill(t, c, old, 8<<20)
	start, err := api.VerifyVolume(ctx, volName, admin.VerifyVolume{MaxRate: 32 << 20}) // 2 s per batch
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Nodes[old].WaitLog(regexp.MustCompile(`msg="verifying the volume's replicas"`), 0, 10*time.Second); err != nil {
		t.Fatalf("n%d did not start the verification: %v", old+1, err)
	}
	time.Sleep(time.Second)
	c.Kill(old)
	killed := time.Now()
	var r *admin.VerifyResult
	testbin.WaitFor(t, 2*time.Minute, "the verification's result", func() error {
		got, err := api.Volume(ctx, volName)
		if err != nil {
			return err
		}
		if got.LastVerify == nil || got.LastVerify.ID != start.Verify.ID {
			return fmt.Errorf("verify %+v", got.Verify)
		}
		r = got.LastVerify
		return nil
	})
	t.Logf("result %v after the kill: leader %s, ok %v, %s", time.Since(killed).Round(time.Millisecond), r.Leader, r.OK, r.Error)
	dead := c.Nodes[old].Name
	if r.Leader == dead || r.OK || len(r.Replicas) != 2 {
		t.Fatalf("result %+v, want one by a new leader, failed, over 2 replicas", r)
	}
	for _, vr := range r.Replicas {
		if want := vr.Host != dead; vr.Check.OK != want || vr.Check.Mismatched != 0 {
			t.Errorf("replica %s: check %+v (%s is down)", vr.Host, vr.Check, dead)
		}
	}

	c.Start(old)
	testbin.WaitFor(t, time.Minute, "a passed verification with every replica", func() error {
		got, err := api.Volume(ctx, volName)
		if err != nil {
			return err
		}
		if got.Verify != nil {
			return errors.New("a verification is running")
		}
		if got.LastVerify != nil && got.LastVerify.ID != start.Verify.ID && got.LastVerify.OK {
			return nil
		}
		if _, err := api.VerifyVolume(ctx, volName, admin.VerifyVolume{}); err != nil {
			return err
		}
		return errors.New("verifying again")
	})

	// A slow verification, cancelled: its agent stops, the cancel is
	// recorded, and another can start.
	slow, err := api.VerifyVolume(ctx, volName, admin.VerifyVolume{MaxRate: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	lead := index(c, slow.Leader)
	time.Sleep(time.Second)
	if out, err := cli(t, c, spare, "volume", "verify", volName, "--cancel"); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("%s", strings.TrimSpace(out))
	}
	got, err := api.Volume(ctx, volName)
	if err != nil {
		t.Fatal(err)
	}
	if r := got.LastVerify; got.Verify != nil || r == nil || r.ID != slow.Verify.ID || !r.Cancelled || r.OK {
		t.Fatalf("after the cancel: verify %+v, last %+v", got.Verify, got.LastVerify)
	}
	if _, err := c.Nodes[lead].WaitLog(regexp.MustCompile(`msg="verification cancelled"`), 0, 5*time.Second); err != nil {
		t.Errorf("n%d did not stop the cancelled verification: %v", lead+1, err)
	}
	if _, err := cli(t, c, spare, "volume", "verify", volName, "--cancel"); err == nil || !strings.Contains(err.Error(), "not being verified") {
		t.Errorf("cancelling again: %v", err)
	}
	if out, err := cli(t, c, spare, "volume", "verify", volName); err != nil || !strings.Contains(out, "every replica matches") {
		t.Fatalf("verifying after the cancel: %v\n%s", err, out)
	}
}

// TestScheduledVerify runs agents with --verify-every 2s: the control
// leader has both volumes verified without being asked, one at a time,
// again and again, and each agent's /metrics reports the results.
func TestScheduledVerify(t *testing.T) {
	c, _ := startCluster(t, 8<<20, "--verify-every", "2s", "--verify-max-rate", "0")
	ctx := context.Background()
	api := c.Admin(0)
	if _, err := api.CreateVolume(ctx, admin.CreateVolume{Name: "second", Size: 8 << 20, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	first := map[string]uint64{}
	testbin.WaitFor(t, time.Minute, "both volumes verified twice", func() error {
		vs, err := api.Volumes(ctx)
		if err != nil {
			return err
		}
		running := 0
		for _, v := range vs {
			if v.Verify != nil {
				running++
			}
		}
		if running > 1 {
			t.Fatalf("%d volumes verified at once", running)
		}
		for _, v := range vs {
			r := v.LastVerify
			switch {
			case r == nil:
				return fmt.Errorf("%s not verified yet", v.Name)
			case !r.OK:
				t.Fatalf("%s: verification failed: %s", v.Name, r.Error)
			case first[v.Name] == 0:
				first[v.Name] = r.ID
			}
			if r.ID == first[v.Name] {
				return fmt.Errorf("%s verified once", v.Name)
			}
		}
		return nil
	})
	page, err := c.Nodes[2].Metrics()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{volName, "second"} {
		if want := fmt.Sprintf("tandem_volume_last_verify_ok{volume=%q} 1", name); !strings.Contains(page, want) {
			t.Errorf("no %q in n3's /metrics", want)
		}
	}
}
