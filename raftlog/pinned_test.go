package raftlog

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// TestPinnedChecksums: ranges written without pause, which reads of two
// replicas one after the other cannot compare, are compared at one log
// index by a checksum entry; a replica damaged behind raft's back differs
// there, and only in the damaged range.
func TestPinnedChecksums(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	const size = 8 << 20
	v1 := c.openLedByN1(VolumeSpec{Name: "p", Size: size, Peers: c.peers, PreferredLeader: "n1"})
	ctx := context.Background()

	// Two writers keep ranges 0 and 2 changing throughout.
	var (
		stop   atomic.Bool
		wg     sync.WaitGroup
		writes atomic.Int64
	)
	for _, rng := range []int64{0, 2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; !stop.Load(); k++ {
				off := rng*ChecksumRange + int64(k%256)*4096
				if err := v1.WriteAt(ctx, bytes.Repeat([]byte{byte(k)}, 4096), off, 0); err != nil {
					t.Errorf("write: %v", err)
					return
				}
				writes.Add(1)
			}
		}()
	}
	defer func() {
		stop.Store(true)
		wg.Wait()
	}()
	for writes.Load() < 100 {
		if t.Failed() {
			t.FailNow()
		}
		time.Sleep(10 * time.Millisecond)
	}

	compare := func(first, count int64) (differ []int64) {
		t.Helper()
		index, id, ours, err := v1.PinChecksums(ctx, first, count)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(ours)) != min(count, size/ChecksumRange-first) {
			t.Fatalf("%d sums for ranges %d+%d", len(ours), first, count)
		}
		for _, i := range []int{1, 2} {
			theirs, err := c.hosts[i].vol["p"].PinnedChecksums(ctx, index, id)
			if err != nil {
				t.Fatalf("host %d: %v", i, err)
			}
			if len(theirs) != len(ours) {
				t.Fatalf("host %d: %d sums, want %d", i, len(theirs), len(ours))
			}
			for k := range ours {
				if !ours[k].Comparable(theirs[k]) || ours[k].Since != index {
					t.Fatalf("host %d range %d: %+v and %+v not at index %d", i, first+int64(k), ours[k], theirs[k], index)
				}
				if ours[k].Sum != theirs[k].Sum {
					differ = append(differ, first+int64(k))
				}
			}
		}
		return differ
	}
	for round := range 20 {
		if d := compare(0, 4); len(d) > 0 {
			t.Fatalf("round %d: ranges %v differ between equal replicas", round, d)
		}
	}
	// The last ranges: only those inside the volume.
	if d := compare(size/ChecksumRange-2, MaxPinnedRanges); len(d) > 0 {
		t.Fatalf("ranges %v differ at the end", d)
	}

	// Damage n3's range 1 (not written by the writers) behind raft's back.
	if err := c.hosts[2].vol["p"].g.file.WriteAt(ctx, []byte("damage"), ChecksumRange+100, 0); err != nil {
		t.Fatal(err)
	}
	if d := compare(0, 4); len(d) != 1 || d[0] != 1 {
		t.Fatalf("after damaging range 1 on one replica: ranges %v differ", d)
	}

	// Refusals.
	for _, n := range []int64{0, MaxPinnedRanges + 1} {
		if _, _, _, err := v1.PinChecksums(ctx, 0, n); err == nil {
			t.Errorf("PinChecksums of %d ranges succeeded", n)
		}
	}
	if _, _, _, err := c.hosts[1].vol["p"].PinChecksums(ctx, 0, 1); !errors.Is(err, raft.ErrNotLeader) {
		t.Errorf("PinChecksums on a follower: %v, want %v", err, raft.ErrNotLeader)
	}
	index, _, _, err := v1.PinChecksums(ctx, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.hosts[1].vol["p"].PinnedChecksums(ctx, index, 12345); !errors.Is(err, errNoPinned) {
		t.Errorf("an unknown checksum entry: %v, want %v", err, errNoPinned)
	}
}

// TestPinnedSumsKeepsLast: a replica remembers the last keepPinned
// results, by id and index.
func TestPinnedSumsKeepsLast(t *testing.T) {
	var p pinnedSums
	for id := uint64(1); id <= keepPinned+10; id++ {
		p.put(id, pinnedResult{index: 100 + id, sums: []RangeSum{{Sum: "x"}}})
	}
	if _, err := p.get(111, 11); err != nil {
		t.Errorf("the %dth last result: %v", keepPinned, err)
	}
	if _, err := p.get(110, 10); !errors.Is(err, errNoPinned) {
		t.Errorf("a result older than the last %d: %v", keepPinned, err)
	}
	if _, err := p.get(112, 11); !errors.Is(err, errNoPinned) {
		t.Errorf("a result at another index: %v", err)
	}
	if len(p.byID) != keepPinned || len(p.order) != keepPinned {
		t.Errorf("%d results and %d ids kept, want %d", len(p.byID), len(p.order), keepPinned)
	}
}
