package raftlog

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/tandem-project/tandem/volume/blockfile"
)

func testFSM(t *testing.T) *fsm {
	t.Helper()
	f, err := blockfile.Open(filepath.Join(t.TempDir(), "v"), blockfile.Options{Size: 1 << 20, Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return newFSM(f, slog.New(slog.DiscardHandler))
}

func entry(index uint64, ops ...*op) *raft.Log {
	return &raft.Log{Index: index, Type: raft.LogCommand, Data: encodeEntry(nil, ops)}
}

func TestFSMAppliesARetriedOpOnce(t *testing.T) {
	f := testFSM(t)
	a := bytes.Repeat([]byte{'a'}, 4096)
	b := bytes.Repeat([]byte{'b'}, 4096)
	// The write with id 7 is committed, another client overwrites the
	// block, then the first request is committed again (re-sent after a
	// leader change): it must not undo the second write.
	for i, e := range []*raft.Log{
		entry(1, &op{kind: opWrite, off: 0, n: 4096, data: a, id: 7}),
		entry(2, &op{kind: opWrite, off: 0, n: 4096, data: b, id: 8}),
		entry(3, &op{kind: opWrite, off: 0, n: 4096, data: a, id: 7}),
	} {
		if err, _ := f.Apply(e).(error); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
	}
	got := make([]byte, 4096)
	f.readAt(context.Background(), got, 0)
	if !bytes.Equal(got, b) {
		t.Fatalf("block holds %q..., want b: the retried op was applied twice", got[:1])
	}
	// Ops without an id are never skipped.
	f.Apply(entry(4, &op{kind: opWrite, off: 0, n: 4096, data: a}))
	f.Apply(entry(5, &op{kind: opWrite, off: 0, n: 4096, data: b}))
	f.Apply(entry(6, &op{kind: opWrite, off: 0, n: 4096, data: a}))
	f.readAt(context.Background(), got, 0)
	if !bytes.Equal(got, a) {
		t.Fatal("an op without id was skipped")
	}
}

func TestSeenSetSurvivesCheckpoint(t *testing.T) {
	f := testFSM(t)
	for i := range 3 {
		f.Apply(entry(uint64(i+1), &op{kind: opZero, n: 1, id: uint64(100 + i)}))
	}
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	info, ids, err := readSnapshot(bytes.NewReader(sink.Bytes()))
	if err != nil || info.Index != 3 || len(ids) != 3 || ids[0] != 100 || ids[2] != 102 {
		t.Fatalf("checkpoint: %+v %v %v", info, ids, err)
	}
	g := testFSM(t)
	g.loadSeen(ids)
	if !g.seen.has(101) || g.seen.has(99) {
		t.Fatal("seen ids not restored")
	}
}

func TestSeenSetEvictsOldest(t *testing.T) {
	s := newSeenSet()
	for i := range maxSeen + 10 {
		s.add(uint64(i + 1))
	}
	if s.has(1) || s.has(10) || !s.has(11) || !s.has(maxSeen+10) {
		t.Fatal("eviction order")
	}
	l := s.list()
	if len(l) != maxSeen || l[0] != 11 || l[len(l)-1] != maxSeen+10 {
		t.Fatalf("list: len %d first %d last %d", len(l), l[0], l[len(l)-1])
	}
}

func TestReadsNeverSeeHalfAWrite(t *testing.T) {
	f := testFSM(t)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := uint64(1); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			f.Apply(entry(i, &op{kind: opWrite, off: 8192, n: 8192, data: bytes.Repeat([]byte{byte(i)}, 8192)}))
		}
	}()
	got := make([]byte, 8192)
	for range 20000 {
		f.readAt(context.Background(), got, 8192)
		if got[0] != got[8191] || !bytes.Equal(got, bytes.Repeat(got[:1], 8192)) {
			close(stop)
			wg.Wait()
			t.Fatalf("torn read: first byte %d last byte %d", got[0], got[8191])
		}
	}
	close(stop)
	wg.Wait()
}

type memSink struct{ bytes.Buffer }

func (m *memSink) ID() string    { return "mem" }
func (m *memSink) Cancel() error { return nil }
func (m *memSink) Close() error  { return nil }
