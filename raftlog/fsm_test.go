package raftlog

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/tandem-project/tandem/volume"
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
	return &raft.Log{Index: index, Type: raft.LogCommand, Data: encodeEntry(ops)}
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

// TestFSMFencing checks which writes the FSM accepts as fences come and
// go: every replica applies the same log, so these verdicts are the
// cluster's.
func TestFSMFencing(t *testing.T) {
	w := func(id, epoch uint64) *op {
		return &op{kind: opWrite, off: 0, n: 512, data: bytes.Repeat([]byte{byte(id)}, 512), id: id, epoch: epoch}
	}
	z := func(id, epoch uint64) *op { return &op{kind: opZero, off: 0, n: 512, id: id, epoch: epoch} }
	fence := func(gen, epoch uint64) *op { return &op{kind: opFence, off: int64(gen), epoch: epoch, id: 1000 + gen} }
	type step struct {
		ops    []*op
		fenced []uint64 // ids refused
	}
	tests := []struct {
		name  string
		steps []step
		// block is the id of the last accepted write to block 0 (0: zero).
		block byte
		// writer and gen are the fence in force at the end.
		writer, gen uint64
	}{
		{"no fence: every epoch writes", []step{{ops: []*op{w(1, 0), w(2, 5), w(3, 9)}}}, 3, 0, 0},
		{"fence refuses other epochs", []step{
			{ops: []*op{fence(10, 5)}},
			{ops: []*op{w(1, 0), w(2, 5), w(3, 6), z(4, 4)}, fenced: []uint64{1, 3, 4}},
		}, 2, 5, 10},
		{"a fence and writes in one entry apply in order", []step{
			{ops: []*op{w(1, 5), fence(10, 6), w(2, 5), w(3, 6)}, fenced: []uint64{2}},
		}, 3, 6, 10},
		{"an older generation changes nothing", []step{
			{ops: []*op{fence(10, 5), fence(9, 7)}},
			{ops: []*op{w(1, 7), w(2, 5)}, fenced: []uint64{1}},
		}, 2, 5, 10},
		{"the owner moves back (the VM started again on its old host)", []step{
			{ops: []*op{fence(10, 5), fence(11, 6), w(1, 5)}, fenced: []uint64{1}},
			{ops: []*op{fence(12, 5), w(1, 5), w(2, 6)}, fenced: []uint64{2}},
		}, 1, 5, 12},
		{"opening the volume (writer 0) accepts everyone", []step{
			{ops: []*op{fence(10, 5), fence(11, 0), w(1, 0), w(2, 9)}},
		}, 2, 0, 11},
		{"a retry of an op applied before the fence is not refused", []step{
			{ops: []*op{w(1, 5), fence(10, 6), w(1, 5)}},
		}, 1, 6, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := testFSM(t)
			for i, st := range tt.steps {
				res := f.Apply(entry(uint64(i+1), st.ops...))
				var got []uint64
				switch r := res.(type) {
				case error:
					t.Fatalf("entry %d: %v", i+1, r)
				case *applyResult:
					got = r.fenced
				}
				if !slices.Equal(got, st.fenced) {
					t.Errorf("entry %d: refused %v, want %v", i+1, got, st.fenced)
				}
			}
			b := make([]byte, 512)
			f.readAt(context.Background(), b, 0)
			if b[0] != tt.block {
				t.Errorf("block 0 holds the write of id %d, want %d", b[0], tt.block)
			}
			if f.writer.Load() != tt.writer || f.writerGen.Load() != tt.gen {
				t.Errorf("fence: writer %d gen %d, want %d gen %d", f.writer.Load(), f.writerGen.Load(), tt.writer, tt.gen)
			}
		})
	}
}

// TestFenceSurvivesCheckpoint checks that a restart from a checkpoint
// keeps the fence in force (the fence entry is no longer replayed).
func TestFenceSurvivesCheckpoint(t *testing.T) {
	f := testFSM(t)
	f.Apply(entry(1, &op{kind: opFence, off: 40, epoch: 7, id: 1}))
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	info, _, err := readSnapshot(bytes.NewReader(sink.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	g := testFSM(t)
	g.loadFence(info)
	res := g.Apply(entry(2, &op{kind: opWrite, n: 512, data: make([]byte, 512), id: 2, epoch: 3}))
	if r, ok := res.(*applyResult); !ok || !slices.Equal(r.fenced, []uint64{2}) {
		t.Fatalf("after restart, a write of a fenced epoch got %v, want refused", res)
	}
}

// TestFSMAnswersAtCommit checks the early answer: an entry of writes is
// reported committed before the file holds it (with the fenced ops), a read
// or block status of its range issued from then on sees the new data, and
// an entry with another kind of op (a grow) is reported only through
// Apply's result.
func TestFSMAnswersAtCommit(t *testing.T) {
	f := testFSM(t)
	ctx := context.Background()
	a := bytes.Repeat([]byte{'a'}, 4096)
	type call struct {
		index   uint64
		fenced  []uint64
		inFile  []byte // the file's bytes at the answer, read past the locks
		readErr chan error
		read    []byte
		extents chan []volume.Extent
	}
	var calls []*call
	f.committed = func(l *raft.Log, res *applyResult) {
		c := &call{index: l.Index, inFile: make([]byte, 4096), read: make([]byte, 4096), readErr: make(chan error, 1), extents: make(chan []volume.Extent, 1)}
		if res != nil {
			c.fenced = res.fenced
		}
		if err := f.file.ReadAt(ctx, c.inFile, 65536); err != nil {
			t.Error(err)
		}
		go func() { c.readErr <- f.readAt(ctx, c.read, 65536) }() // a client that saw the answer
		// One that asks for block status first (nbdcopy).
		go func() {
			ext, err := f.extents(ctx, 65536, 4096, 1)
			if err != nil {
				t.Error(err)
			}
			c.extents <- ext
		}()
		// Give both the time to finish early, which they must not: the
		// file does not hold the write yet.
		time.Sleep(50 * time.Millisecond)
		calls = append(calls, c)
	}
	f.writer.Store(5)
	res := f.Apply(entry(1,
		&op{kind: opWrite, off: 65536, n: 4096, data: a, id: 1, epoch: 5},
		&op{kind: opWrite, off: 0, n: 4096, data: a, id: 2, epoch: 4}, // fenced off
	))
	if r, ok := res.(*applyResult); !ok || !slices.Equal(r.fenced, []uint64{2}) {
		t.Fatalf("Apply returned %#v, want op 2 fenced", res)
	}
	if len(calls) != 1 || calls[0].index != 1 || !slices.Equal(calls[0].fenced, []uint64{2}) {
		t.Fatalf("committed calls %+v, want one for entry 1 with op 2 fenced", calls)
	}
	if !bytes.Equal(calls[0].inFile, make([]byte, 4096)) {
		t.Fatal("the answer came after the file was written")
	}
	if err := <-calls[0].readErr; err != nil || !bytes.Equal(calls[0].read, a) {
		t.Fatalf("a read issued at the answer returned old data (%v)", err)
	}
	if ext := <-calls[0].extents; len(ext) != 1 || ext[0].Length != 4096 || ext[0].Flags&volume.Hole != 0 {
		t.Fatalf("block status issued at the answer: %+v, want the written block as data", ext)
	}
	// A grow is applied in order with the writes around it: no early answer.
	if err, _ := f.Apply(entry(2, &op{kind: opGrow, off: 2 << 20}, &op{kind: opWrite, off: 1<<20 + 4096, n: 4096, data: a, epoch: 5})).(error); err != nil {
		t.Fatal(err)
	}
	if len(calls) != 1 {
		t.Fatalf("an entry with a grow was answered early")
	}
	got := make([]byte, 4096)
	if err := f.readAt(ctx, got, 1<<20+4096); err != nil || !bytes.Equal(got, a) {
		t.Fatalf("the write after the grow: %v", err)
	}
}

// TestFSMFailureAfterAnswer checks a read issued by a client that saw an
// entry answered, when the file then fails to take the entry (a disk
// error, the disk reserve): the read must fail, retryably, not return the
// file's older data (seen once under TestLinearizableDiskFull, 2026-12-07:
// a leader at its disk reserve answered a write, failed to apply it, and
// served a read of the block from its file).
func TestFSMFailureAfterAnswer(t *testing.T) {
	f := testFSM(t)
	ctx := context.Background()
	old := bytes.Repeat([]byte{'o'}, 4096)
	if err, _ := f.Apply(entry(1, &op{kind: opWrite, off: 0, n: 4096, data: old, id: 1})).(error); err != nil {
		t.Fatal(err)
	}
	f.room = func(int64) error { return volume.ErrNoSpace }
	var failures []error
	f.onFail = func(err error) { failures = append(failures, err) }
	type read struct {
		err  error
		data []byte
	}
	reads := make(chan read, 2)
	f.committed = func(*raft.Log, *applyResult) {
		for range 2 { // reads by clients that saw the answer
			go func() {
				p := make([]byte, 4096)
				err := f.readAt(ctx, p, 0)
				reads <- read{err, p}
			}()
		}
		time.Sleep(50 * time.Millisecond) // they wait for the entry's ranges
	}
	res := f.Apply(entry(2, &op{kind: opWrite, off: 0, n: 4096, data: bytes.Repeat([]byte{'n'}, 4096), id: 2}))
	if err, _ := res.(error); !errors.Is(err, errReplicaFailed) || !errors.Is(err, volume.ErrNoSpace) {
		t.Fatalf("Apply returned %v, want the replica's failure", res)
	}
	for range 2 {
		r := <-reads
		if !errors.Is(r.err, errReplicaFailed) {
			t.Fatalf("a read waiting for the failed entry returned %v and %q, want the failure", r.err, r.data[:1])
		}
	}
	if ok, err := f.readAtNowait(make([]byte, 4096), 0); ok || err != nil {
		t.Fatalf("a cached read of a failed replica: %v, %v; want it left to readAt", ok, err)
	}
	if _, err := f.extents(ctx, 0, 4096, 1); !errors.Is(err, errReplicaFailed) {
		t.Fatalf("block status of a failed replica: %v", err)
	}
	if len(failures) != 1 {
		t.Fatalf("onFail called %d times, want once", len(failures))
	}
}
