package cluster

import (
	"fmt"
	"regexp"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testbin"
)

// stallTarget is the longest I/O pause at leader loss that Tandem aims
// for with the default 1 s heartbeat timeout (issue 3); stallLimit is the
// bound the test enforces, generous so that a loaded machine does not
// make it flaky.
const (
	stallTarget = 3 * time.Second
	stallLimit  = 10 * time.Second
)

// TestLeaderKillDuringWrites kills the leader (kill -9) while eight
// writers, each on its own connection to a follower's agent, keep writing
// stamped blocks. With the default heartbeat timeout (1 s), no write may
// fail, the stream must go on under a new leader, and afterwards every
// acknowledged write must read back through both surviving agents, and
// through the old leader once it has been restarted and caught up. The
// longest pause between two completed writes is the I/O stall a VM sees.
func TestLeaderKillDuringWrites(t *testing.T) {
	r := newRand(seed(t), 2)
	c := startCluster(t, "--stall-timeout", "30s")
	l := c.Leader(vol)
	f := c.Followers(l)[r.IntN(2)]
	t.Logf("leader n%d; writers connected to follower n%d", l+1, f+1)

	m := newModel()
	ws := startWriters(t, c, m, writerOpts{n: 8, blocks: 32, host: func(int) int { return f }})
	ws.waitAcked(t, 300, 30*time.Second)
	time.Sleep(time.Duration(200+r.IntN(500)) * time.Millisecond)
	before := ws.acked()
	offs := logOffsets(c)
	killed := time.Now()
	c.Kill(l)
	t.Logf("killed leader n%d after %d acknowledged writes", l+1, before)

	nl, err := c.WaitLeader(vol, 20*time.Second)
	if err != nil {
		ws.halt()
		t.Fatalf("after killing n%d: %v", l+1, err)
	}
	if nl == l {
		t.Fatalf("n%d still leads after it was killed", l+1)
	}
	ws.waitAcked(t, 300, 30*time.Second)
	time.Sleep(500 * time.Millisecond)
	for _, e := range ws.halt() {
		t.Error(e)
	}
	total := ws.acked()
	gap, at := ws.longestGap()
	first := ws.firstAfter(killed)
	t.Logf("new leader n%d; %d writes acknowledged, %d after the kill", nl+1, total, total-before)
	t.Logf("I/O stall at leader loss: longest pause between two completed writes %v (starting %v after the kill); first write completed %v after the kill",
		gap.Round(time.Millisecond), at.Sub(killed).Round(time.Millisecond), first.Sub(killed).Round(time.Millisecond))
	if el, err := electedAt(c, nl, offs[nl]); err == nil {
		t.Logf("n%d logged %q %v after the kill", nl+1, leadingMsg, el.Sub(killed).Round(time.Millisecond))
	}
	if gap > stallTarget {
		t.Logf("WARNING: the stall exceeds the %v target", stallTarget)
	}
	if gap > stallLimit {
		t.Errorf("I/O stalled for %v at leader loss (limit %v)", gap, stallLimit)
	}

	verifyThrough(t, c, m)
	c.Start(l)
	waitReplicaFile(t, c, l, m, 30*time.Second)
	verifyThrough(t, c, m, l)
}

// logOffsets returns the current log length of every host.
func logOffsets(c *testbin.Cluster) []int {
	offs := make([]int, len(c.Nodes))
	for i, n := range c.Nodes {
		offs[i] = n.LogLen()
	}
	return offs
}

var (
	leadingRE = regexp.MustCompile(regexp.QuoteMeta(leadingMsg))
	timeRE    = regexp.MustCompile(`^time=(\S+)`)
)

// electedAt returns the time host i logged that it leads the volume, in
// its log after offset off.
func electedAt(c *testbin.Cluster, i, off int) (time.Time, error) {
	line, err := c.Nodes[i].WaitLog(leadingRE, off, 5*time.Second)
	if err != nil {
		return time.Time{}, err
	}
	m := timeRE.FindStringSubmatch(line)
	if m == nil {
		return time.Time{}, fmt.Errorf("no time in %q", line)
	}
	return time.Parse(time.RFC3339Nano, m[1])
}
