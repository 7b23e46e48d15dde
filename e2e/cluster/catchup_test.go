package cluster

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testbin"
)

var (
	// raft's log lines, as the agent relays them.
	snapStartRE = regexp.MustCompile(`starting snapshot up to: index=(\d+)`)
	compactRE   = regexp.MustCompile(`compacting logs: from=(\d+) to=(\d+)`)
	// raftlog's line when a replica pulled the volume instead of the log.
	copiedRE = regexp.MustCompile(`msg="volume copied from another replica"`)
)

// trimmedPast reports whether host i, since offset off of its log, took
// two checkpoints and then dropped its log up to the second one. The
// second checkpoint started at least --checkpoint-interval after the first
// one, which was logged after off, and covers at least
// --checkpoint-entries more entries: it covers every entry that existed
// when off was taken, so none of them is left in the log.
func trimmedPast(c *testbin.Cluster, i, off int) bool {
	s := c.Nodes[i].LogSince(off)
	starts := snapStartRE.FindAllStringSubmatch(s, -1)
	if len(starts) < 2 {
		return false
	}
	second, _ := strconv.ParseUint(starts[1][1], 10, 64)
	for _, m := range compactRE.FindAllStringSubmatch(s, -1) {
		if to, _ := strconv.ParseUint(m[2], 10, 64); to >= second {
			return true
		}
	}
	return false
}

// TestFollowerCatchUp kills a follower (kill -9) and brings it back twice:
// after a short outage it catches up from the log; after a long one, with
// checkpoints small and frequent enough that the log it needs has been
// dropped everywhere, it catches up from a volume streamed from another
// replica. Each time its replica file must then hold every acknowledged
// write. Then the old leader is killed: the returned follower and the
// third host must carry the volume on their own, and finally all three
// replica files must be identical.
func TestFollowerCatchUp(t *testing.T) {
	r := newRand(seed(t), 3)
	c := startCluster(t, append(fastArgs,
		"--checkpoint-interval", "200ms", "--checkpoint-entries", "64", "--trailing-entries", "128")...)
	l := c.Leader(vol)
	fs := c.Followers(l)
	k := r.IntN(2)
	f, o := fs[k], fs[1-k]
	t.Logf("leader n%d; follower n%d goes down; writes go through n%d", l+1, f+1, o+1)
	conn := dial(t, c, o)
	m := newModel()
	write := m.writer(t)
	for blk := range int64(256) {
		write(conn, blk)
	}
	waitReplicaFile(t, c, f, m, 10*time.Second)

	// A short outage: 40 entries behind, well within the 128 kept.
	c.Kill(f)
	for range 40 {
		write(conn, r.Int64N(256))
	}
	start := time.Now()
	c.Start(f)
	waitReplicaFile(t, c, f, m, 30*time.Second)
	t.Logf("short outage: n%d caught up %v after its restart", f+1, time.Since(start).Round(time.Millisecond))
	if line, err := c.Nodes[f].WaitLog(copiedRE, 0, 0); err == nil {
		t.Errorf("after a short outage n%d copied the volume instead of replaying the log: %s", f+1, line)
	}

	// A long outage: write until both running hosts checkpointed twice
	// and dropped their log past the second checkpoint.
	c.Kill(f)
	offs := map[int]int{l: c.Nodes[l].LogLen(), o: c.Nodes[o].LogLen()}
	deadline := time.Now().Add(60 * time.Second)
	n := 0
	for !trimmedPast(c, l, offs[l]) || !trimmedPast(c, o, offs[o]) {
		if time.Now().After(deadline) {
			t.Fatalf("the log was not trimmed after %d writes in 60 s", n)
		}
		write(conn, r.Int64N(512))
		n++
	}
	t.Logf("long outage: the log was trimmed after %d writes", n)
	start = time.Now()
	c.Start(f)
	line, err := c.Nodes[f].WaitLog(copiedRE, 0, 60*time.Second)
	if err != nil {
		t.Fatalf("n%d did not copy the volume after a long outage: %v", f+1, err)
	}
	t.Logf("n%d: %s", f+1, line[strings.Index(line, "msg="):])
	waitReplicaFile(t, c, f, m, 30*time.Second)
	t.Logf("long outage: n%d caught up %v after its restart", f+1, time.Since(start).Round(time.Millisecond))

	// The returned follower carries the volume with the third host: kill
	// the leader, write through the returned follower, and check both
	// replica files directly.
	l = c.Leader(vol)
	c.Kill(l)
	rest := c.Followers(l)
	nl := c.Leader(vol)
	t.Logf("killed leader n%d; n%d leads now", l+1, nl+1)
	fconn := dial(t, c, f)
	for range 64 {
		write(fconn, r.Int64N(512))
	}
	verifyThrough(t, c, m)
	for _, i := range rest {
		waitReplicaFile(t, c, i, m, 10*time.Second)
	}
	c.Start(l)
	waitReplicaFile(t, c, l, m, 30*time.Second)
	c.StopAll()
	filesEqual(t, c)
}

// readmittedRE is raftlog's line once a replica without state is a voter
// again; lostRE the one where it finds its files lost.
var (
	readmittedRE = regexp.MustCompile(`msg="replica without state readmitted: a voter again"`)
	lostRE       = regexp.MustCompile(`has a history \(its files were lost, or it started after the others elected a leader\): it leaves the group and joins again as a new replica`)
)

// TestLostReplica deletes a follower's replica files while its agent is
// down (a replaced disk) and starts it again, in the fixed configuration:
// the agent does not come back as an empty voter of the group (which
// could elect a leader that lacks acknowledged writes) but has the leader
// remove it, joins again as a non-voter, pulls the volume and is promoted.
// Then the leader is killed: the rebuilt replica and the third host carry
// the volume, and every acknowledged write is there.
func TestLostReplica(t *testing.T) {
	r := newRand(seed(t), 3)
	c := startCluster(t, fastArgs...)
	l := c.Leader(vol)
	fs := c.Followers(l)
	k := r.IntN(2)
	f, o := fs[k], fs[1-k]
	t.Logf("leader n%d; follower n%d loses its files; writes go through n%d", l+1, f+1, o+1)
	conn := dial(t, c, o)
	m := newModel()
	write := m.writer(t)
	for blk := range int64(256) {
		write(conn, blk)
	}
	waitReplicaFile(t, c, f, m, 10*time.Second)

	c.Kill(f)
	if err := os.RemoveAll(filepath.Dir(c.VolumePath(f, vol))); err != nil {
		t.Fatal(err)
	}
	for range 40 {
		write(conn, r.Int64N(512))
	}
	start := time.Now()
	c.Start(f)
	if _, err := c.Nodes[f].WaitLog(lostRE, 0, 0); err != nil {
		t.Fatalf("n%d did not find its replica lost: %v", f+1, err)
	}
	for range 40 {
		write(conn, r.Int64N(512))
	}
	if _, err := c.Nodes[f].WaitLog(readmittedRE, 0, 30*time.Second); err != nil {
		t.Fatalf("n%d was not readmitted: %v", f+1, err)
	}
	t.Logf("n%d readmitted %v after its restart", f+1, time.Since(start).Round(time.Millisecond))
	waitReplicaFile(t, c, f, m, 30*time.Second)

	c.Kill(l)
	nl := c.Leader(vol)
	t.Logf("killed leader n%d; n%d leads now", l+1, nl+1)
	fconn := dial(t, c, f)
	for range 64 {
		write(fconn, r.Int64N(512))
	}
	verifyThrough(t, c, m)
	waitReplicaFile(t, c, o, m, 10*time.Second)
	c.Start(l)
	waitReplicaFile(t, c, l, m, 30*time.Second)
	c.StopAll()
	filesEqual(t, c)
}
