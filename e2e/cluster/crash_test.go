package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testbin"
	"github.com/tandem-project/tandem/nbd/nbdclient"
)

// TestCrashLoop kills hosts with kill -9 at random moments while six
// writers (two per agent) write, 20 times: the leader, a follower, or all
// three at once. After each round the killed hosts are restarted and every
// block must read back, through every agent, as its last acknowledged
// write (or a later write whose outcome the client could not know).
func TestCrashLoop(t *testing.T) {
	r := newRand(seed(t), 7)
	c := startCluster(t, fastArgs...)
	m := newModel()
	const rounds = 20
	kinds := []string{"the leader", "a follower", "all three"}
	// Each kind of kill about as often, in a random order.
	var plan []int
	for k := range rounds + 1 {
		plan = append(plan, k%3)
	}
	r.Shuffle(len(plan), func(i, j int) { plan[i], plan[j] = plan[j], plan[i] })
	start := time.Now()
	for round := range rounds {
		l := c.Leader(vol)
		ws := startWriters(t, c, m, writerOpts{
			n: 6, blocks: 16, seq0: uint64(round) << 24,
			host:   func(w int) int { return w % 3 },
			redial: true,
			// A write that fails because its agent died has an unknown
			// outcome; an error answer or a timeout is a failure.
			errs: func(err error) bool {
				var e *nbdclient.Error
				return errors.As(err, &e) || errors.Is(err, context.DeadlineExceeded)
			},
		})
		if err := ws.waitAckedErr(10, 30*time.Second); err != nil {
			t.Fatalf("round %d: writes before the kill: %v (n%d leads)", round+1, err, l+1)
		}
		time.Sleep(time.Duration(r.IntN(1200)) * time.Millisecond)
		kind := plan[round]
		var victims []int
		switch kind {
		case 0:
			victims = []int{l}
			c.Kill(l)
		case 1:
			f := c.Followers(l)[r.IntN(2)]
			victims = []int{f}
			c.Kill(f)
		case 2:
			victims = []int{0, 1, 2}
			c.KillAll()
		}
		acked := ws.acked()
		time.Sleep(time.Duration(r.IntN(500)) * time.Millisecond)
		c.StartAll()
		if kind != 2 {
			// The survivors' writers go on; give the restarted hosts'
			// writers time to reconnect and write again.
			if err := ws.waitAckedErr(30, 30*time.Second); err != nil {
				t.Fatalf("round %d: writes after killing %s (%s) and restarting it: %v", round+1, kinds[kind], hostNames(victims), err)
			}
		}
		for _, e := range ws.halt() {
			t.Errorf("round %d: %s", round+1, e)
		}
		nl := c.Leader(vol)
		unknown := 0
		for _, tags := range m.maybe {
			unknown += len(tags)
		}
		t.Logf("round %2d: killed %s (%s) after %d acknowledged writes; %d writes in all; %d of unknown outcome; n%d leads",
			round+1, kinds[kind], hostNames(victims), acked, ws.acked(), unknown, nl+1)
		verifySettle(t, c, m, round+1)
		if t.Failed() {
			t.FailNow()
		}
	}
	t.Logf("%d rounds in %v", rounds, time.Since(start).Round(time.Millisecond))
	for i := range c.Nodes {
		waitReplicaFile(t, c, i, m, 30*time.Second)
	}
	c.StopAll()
	filesEqual(t, c)
}

func hostNames(hosts []int) string {
	s := ""
	for i, h := range hosts {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("n%d", h+1)
	}
	return s
}

// verifySettle reads every block of m through every host, checks that it
// holds what m allows and that all hosts agree, then records what was read
// as the blocks' content.
func verifySettle(t *testing.T, c *testbin.Cluster, m *model, round int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	blocks := m.blocks()
	var seen [][]uint64
	for i := range c.Nodes {
		conn, err := dialRetry(ctx, c, i)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		got := make([]uint64, len(blocks))
		bad := 0
		for k, blk := range blocks {
			got[k], err = readBlock(ctx, conn, blk)
			switch {
			case err != nil:
				t.Errorf("round %d: n%d: reading block %d: %v", round, i+1, blk, err)
				bad++
			case !m.allows(blk, got[k]):
				t.Errorf("round %d: n%d: %s", round, i+1, m.mismatch(blk, got[k]))
				bad++
			}
			if bad == 10 {
				break
			}
		}
		conn.Close()
		seen = append(seen, got)
	}
	for i := 1; i < len(seen); i++ {
		if !slices.Equal(seen[i], seen[0]) {
			t.Errorf("round %d: n1 and n%d read different contents", round, i+1)
		}
	}
	if t.Failed() {
		return
	}
	for k, blk := range blocks {
		m.settle(blk, seen[0][k])
	}
}
