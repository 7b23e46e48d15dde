package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testbin"
	"github.com/tandem-project/tandem/nbd/nbdclient"
)

// probeRead is one read of the probe block through the isolated agent.
type probeRead struct {
	start, end time.Time
	tag        uint64
	err        error
}

// TestLeaderPartition cuts the leader's host off the network (network
// namespaces) while writers on a follower's host keep writing, and a
// client on the leader's host keeps reading one block that the majority
// side then overwrites:
//
//   - the majority elects a new leader and its writers go on without an
//     error; every acknowledged write is there afterwards;
//   - the isolated agent never returns the block's old content once the
//     majority acknowledged the new one: its reads wait or fail, or
//     return the new content;
//   - a write sent to the isolated agent during the partition is not
//     acknowledged before the partition heals (there is no quorum for it),
//     and if it is acknowledged afterwards it is there;
//   - after healing, the old leader's replica converges: all three
//     replica files end identical.
func TestLeaderPartition(t *testing.T) {
	r := newRand(seed(t), 5)
	nn := newNetnet(t, 3)
	c := testbin.StartCluster(t, nn.clusterConfig(fastArgs...))
	nn.checkWiring(c)
	l := c.Leader(vol)
	f := c.Followers(l)[r.IntN(2)]
	t.Logf("leader n%d (to be cut off); writers on follower n%d", l+1, f+1)
	ctx := context.Background()

	const probe, isoBlock = int64(5000), int64(5001)
	m := newModel()
	connF := dial(t, c, f)
	oldTag, newTag, isoTag := tagOf(9, 1), tagOf(9, 2), tagOf(8, 1)
	if err := writeBlock(ctx, connF, probe, oldTag); err != nil {
		t.Fatalf("writing the probe block: %v", err)
	}
	m.settle(probe, oldTag)
	connL := dial(t, c, l)
	if tag, err := readBlock(ctx, connL, probe); err != nil || tag != oldTag {
		t.Fatalf("reading the probe block through n%d: %s, %v; want %s", l+1, tagString(tag), err, tagString(oldTag))
	}
	connIso := dial(t, c, l)

	// Every failed write is a test error; the writer then goes on with a
	// new connection to the same agent.
	ws := startWriters(t, c, m, writerOpts{n: 4, blocks: 32, host: func(int) int { return f }, timeout: 15 * time.Second,
		redial: true, errs: func(error) bool { return true }})
	ws.waitAcked(t, 200, 30*time.Second)
	time.Sleep(time.Duration(r.IntN(300)) * time.Millisecond)

	cutAt := time.Now()
	nn.cut(l)
	t.Logf("cut n%d off", l+1)

	// Reads of the probe block through the isolated agent, one after the
	// other, each given up after 2 s.
	var (
		pmu   sync.Mutex
		reads []probeRead
	)
	stopProbe := make(chan struct{})
	var stopOnce sync.Once
	endProbe := func() { stopOnce.Do(func() { close(stopProbe) }) }
	t.Cleanup(endProbe)
	probeDone := make(chan struct{})
	go func() {
		defer close(probeDone)
		for {
			select {
			case <-stopProbe:
				return
			default:
			}
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			pr := probeRead{start: time.Now()}
			b := make([]byte, blockSize)
			pr.err = connL.ReadAt(rctx, b, probe*blockSize, 0)
			pr.end = time.Now()
			cancel()
			if pr.err == nil {
				pr.tag, pr.err = unstamp(b, probe)
				if pr.err != nil {
					pr.err = errors.Join(errCorrupt, pr.err)
				}
			}
			pmu.Lock()
			reads = append(reads, pr)
			pmu.Unlock()
			if pr.err != nil && !errors.Is(pr.err, context.DeadlineExceeded) {
				time.Sleep(100 * time.Millisecond) // an error answer: do not spin
			}
		}
	}()

	// A write through the isolated agent: it must not be acknowledged
	// while the partition lasts.
	type result struct {
		err error
		at  time.Time
	}
	isoDone := make(chan result, 1)
	go func() {
		wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		err := connIso.WriteAt(wctx, stamp(isoBlock, isoTag), isoBlock*blockSize, 0)
		isoDone <- result{err, time.Now()}
	}()

	// The writers on the majority side go on by themselves. (Nothing else
	// is sent through their agent until they made progress: another
	// request must not be what unblocks them.)
	if err := ws.waitAckedErr(100, 10*time.Second); err != nil {
		t.Errorf("writers on majority-side n%d after the cut: %v", f+1, err)
	} else {
		t.Logf("writers on n%d made progress again %v after the cut", f+1, time.Since(cutAt).Round(time.Millisecond))
	}

	// The majority side elects a leader and overwrites the probe block.
	var nl int
	for {
		var err error
		if nl, err = c.WaitLeader(vol, 20*time.Second); err != nil {
			t.Fatalf("no leader on the majority side: %v", err)
		}
		if nl != l {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("n%d leads the majority side, found %v after the cut", nl+1, time.Since(cutAt).Round(time.Millisecond))
	if err := writeBlock(ctx, connF, probe, newTag); err != nil {
		t.Fatalf("overwriting the probe block through n%d: %v", f+1, err)
	}
	ackAt := time.Now()
	ws.settle(probe, newTag)
	if err := ws.waitAckedErr(100, 10*time.Second); err != nil {
		t.Errorf("writers on majority-side n%d after the new leader took a write: %v", f+1, err)
	}
	time.Sleep(3 * time.Second) // well past the old leader's lease and step-down
	endProbe()
	<-probeDone

	var isoRes *result
	select {
	case res := <-isoDone:
		isoRes = &res
		if res.err == nil {
			t.Errorf("the write through the isolated n%d was acknowledged during the partition (%v after the cut), without a quorum", l+1, res.at.Sub(cutAt))
		} else {
			t.Logf("the write through the isolated n%d failed during the partition (%v after the cut): %v", l+1, res.at.Sub(cutAt), res.err)
		}
	default:
	}

	// Judge the reads of the isolated agent.
	var served, failed, stale int
	for _, pr := range reads {
		switch {
		case errors.Is(pr.err, errCorrupt):
			t.Errorf("read through isolated n%d (%v after the cut): %v", l+1, pr.start.Sub(cutAt), pr.err)
		case pr.err != nil:
			failed++
		case pr.tag == newTag:
			served++
		case pr.tag == oldTag && pr.start.Before(ackAt):
			served++ // concurrent with the overwrite, or before it
		default:
			stale++
			t.Errorf("STALE READ: isolated n%d returned %s for a read started %v after the majority acknowledged %s (read from %v to %v after the cut)",
				l+1, tagString(pr.tag), pr.start.Sub(ackAt), tagString(newTag), pr.start.Sub(cutAt), pr.end.Sub(cutAt))
		}
	}
	t.Logf("isolated n%d: %d reads of the probe block answered correctly, %d waited or failed, %d stale", l+1, served, failed, stale)

	// Heal, and check convergence.
	nn.heal(l)
	healAt := time.Now()
	t.Logf("healed after %v of partition", healAt.Sub(cutAt).Round(time.Millisecond))
	if isoRes == nil {
		res := <-isoDone
		isoRes = &res
		if res.err == nil {
			t.Logf("the write through n%d completed %v after the heal", l+1, res.at.Sub(healAt).Round(time.Millisecond))
		} else {
			t.Logf("the write through n%d failed after the heal: %v", l+1, res.err)
		}
	}
	if isoRes.err == nil {
		ws.settle(isoBlock, isoTag)
	} else {
		ws.unknown(isoBlock, isoTag)
	}
	if err := ws.waitAckedErr(100, 10*time.Second); err != nil {
		t.Errorf("writers on n%d after the heal: %v", f+1, err)
	}
	for _, e := range ws.halt() {
		t.Error(e)
	}
	gap, at := ws.longestGap()
	t.Logf("majority side: longest pause between two completed writes %v (starting %v after the cut)", gap.Round(time.Millisecond), at.Sub(cutAt).Round(time.Millisecond))
	if gap > stallLimit {
		t.Errorf("writes on the majority side stalled for %v (limit %v)", gap, stallLimit)
	}
	if tag, err := readBlock(ctx, connL, probe); err != nil || tag != newTag {
		t.Errorf("after the heal, n%d reads the probe block as %s (%v), want %s", l+1, tagString(tag), err, tagString(newTag))
	}
	converge := time.Now().Add(30 * time.Second)
	for i := range c.Nodes {
		if err := waitReplicaFileErr(t, c, i, m, max(time.Until(converge), time.Second)); err != nil {
			t.Error(err)
		}
	}
	verifyThrough(t, c, m)
	closeAll(connF, connL, connIso)
	c.StopAll()
	filesEqual(t, c)
}

var errCorrupt = errors.New("corrupt block")

// closeAll closes connections in parallel (a close waits for the server).
func closeAll(conns ...*nbdclient.Conn) {
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() { defer wg.Done(); c.Close() }()
	}
	wg.Wait()
}

// TestPreferredLeaderCutOff cuts the volume's preferred leader (n1) off
// the network after it came back from a restart, while another host
// leads and writers on n2 keep writing. The leader's pooled connection to
// n1 hangs, so its heartbeats to n1 fail only when the transport gives up
// (10 s); the leader must not hand leadership back to n1 meanwhile (the
// transfer would stop the writes for its timeout), since n1 has not
// answered. Once the partition heals, n1 leads again, and every
// acknowledged write is there.
func TestPreferredLeaderCutOff(t *testing.T) {
	nn := newNetnet(t, 3)
	cfg := nn.clusterConfig(fastArgs...)
	cfg.Volumes = []string{fmt.Sprintf("%s=%d,leader=n1", vol, volSize)}
	c := testbin.StartCluster(t, cfg)
	nn.checkWiring(c)
	leads := func(i int) func() error {
		return func() error {
			if l := c.LeaderOf(vol); l != i {
				return fmt.Errorf("leader n%d", l+1)
			}
			return nil
		}
	}
	testbin.WaitFor(t, 30*time.Second, "n1 leading", leads(0))
	m := newModel()
	ws := startWriters(t, c, m, writerOpts{n: 4, blocks: 32, host: func(int) int { return 1 }, timeout: 15 * time.Second,
		redial: true, errs: func(error) bool { return true }})
	ws.waitAcked(t, 200, 30*time.Second)

	// n1 restarts: another host leads, and would hand leadership back to
	// n1 once n1 has answered its heartbeats for 10 s.
	c.Kill(0)
	testbin.WaitFor(t, 30*time.Second, "another leader", func() error {
		if l := c.LeaderOf(vol); l != 1 && l != 2 {
			return fmt.Errorf("leader n%d", l+1)
		}
		return nil
	})
	c.Start(0)
	restarted := time.Now()
	offs := []int{c.Nodes[1].LogLen(), c.Nodes[2].LogLen()}
	time.Sleep(4 * time.Second)
	cutAt := time.Now()
	nn.cut(0)
	t.Logf("cut n1 off %v after its restart", cutAt.Sub(restarted).Round(100*time.Millisecond))
	time.Sleep(9 * time.Second) // past the hand-back's 10 s, before the heartbeats' timeout
	for k, off := range offs {
		if log := c.Nodes[k+1].LogSince(off); strings.Contains(log, "handing leadership to the preferred host") {
			t.Errorf("n%d tried to hand leadership to n1 while it was cut off", k+2)
		}
	}
	if err := ws.waitAckedErr(100, 10*time.Second); err != nil {
		t.Fatalf("writers on n2 during the partition: %v", err)
	}
	gap, at := ws.longestGap()
	t.Logf("writers on n2: longest pause %v, %v after the cut", gap.Round(time.Millisecond), at.Sub(cutAt).Round(time.Millisecond))

	nn.heal(0)
	healed := time.Now()
	testbin.WaitFor(t, time.Minute, "n1 leading again", leads(0))
	t.Logf("n1 leads again %v after the heal", time.Since(healed).Round(100*time.Millisecond))
	if err := ws.waitAckedErr(100, 10*time.Second); err != nil {
		t.Errorf("writers on n2 after the heal: %v", err)
	}
	for _, e := range ws.halt() {
		t.Error(e)
	}
	verifyThrough(t, c, m)
}
