package wal

import (
	"errors"
	"fmt"
	"testing"

	"github.com/hashicorp/raft"
)

// The raft.LogStore conformance suite. Every case runs against every store
// in logStores: our Log and raft.InmemStore (the reference hashicorp/raft's
// own tests use). Ops marked strict check behaviour raft.LogStore leaves
// open and that only stores implementing raft.MonotonicLogStore promise
// (contiguous appends, prefix/suffix-only deletes); the others are the
// contract raft relies on.

type storeUnderTest struct {
	name string
	// open returns a store over dir; reopen closes s and opens dir again
	// (the in-memory store returns itself).
	open   func(t *testing.T, dir string) raft.LogStore
	reopen func(t *testing.T, s raft.LogStore, dir string) raft.LogStore
	strict bool
}

// walStore is the WAL under test with cfg.
func walStore(name string, cfg Config) storeUnderTest {
	return storeUnderTest{
		name: name,
		open: func(t *testing.T, dir string) raft.LogStore {
			l := mustOpen(t, dir, cfg)
			t.Cleanup(func() { l.Close() })
			return l
		},
		reopen: func(t *testing.T, s raft.LogStore, dir string) raft.LogStore {
			if err := s.(*Log).Close(); err != nil {
				t.Fatal(err)
			}
			l := mustOpen(t, dir, cfg)
			t.Cleanup(func() { l.Close() })
			return l
		},
		strict: true,
	}
}

func logStores() []storeUnderTest {
	buffered := testConfig()
	buffered.DirectIO = false // the page-cache path, with small entries inlined
	return []storeUnderTest{
		walStore("wal", testConfig()),
		walStore("wal-page-cache", buffered),
		{
			// The synced badger baseline of the benchmarks (badgerstore_test.go).
			name: "badger",
			open: func(t *testing.T, dir string) raft.LogStore {
				s, err := openBadgerStore(dir)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { s.Close() })
				return s
			},
			reopen: func(t *testing.T, s raft.LogStore, dir string) raft.LogStore {
				if err := s.(*badgerStore).Close(); err != nil {
					t.Fatal(err)
				}
				b, err := openBadgerStore(dir)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { b.Close() })
				return b
			},
		},
		{
			name:   "inmem",
			open:   func(*testing.T, string) raft.LogStore { return raft.NewInmemStore() },
			reopen: func(_ *testing.T, s raft.LogStore, _ string) raft.LogStore { return s },
		},
	}
}

// op is one step of a conformance case.
type op struct {
	store  [2]uint64 // store entries store[0]..store[1] ...
	term   uint64    // ... with this term
	single bool      // ... one StoreLog call per entry instead of one StoreLogs
	del    [2]uint64 // DeleteRange(del[0], del[1]) when del[0] != 0
	reopen bool
	err    error // expected error (strict stores only)
	strict bool  // run only against strict stores
}

func st(from, to, term uint64) op    { return op{store: [2]uint64{from, to}, term: term} }
func stOne(from, to, term uint64) op { return op{store: [2]uint64{from, to}, term: term, single: true} }
func del(min, max uint64) op         { return op{del: [2]uint64{min, max}} }
func reopen() op                     { return op{reopen: true} }
func strictErr(o op, err error) op   { o.err, o.strict = err, true; return o }
func strictOnly(o op) op             { o.strict = true; return o }

var conformanceCases = []struct {
	name string
	ops  []op
}{
	{"empty", []op{reopen()}},
	{"single entry", []op{stOne(1, 1, 1), reopen()}},
	{"batches and singles", []op{st(1, 40, 1), stOne(41, 60, 1), st(61, 200, 2), reopen()}},
	{"first append at any index", []op{st(1000, 1100, 5), reopen(), st(1101, 1101, 5)}},
	{"delete prefix", []op{st(1, 300, 1), del(1, 150), reopen(), del(151, 151), st(301, 310, 1), reopen()}},
	{"delete prefix inside first segment", []op{st(1, 300, 1), del(1, 3), reopen()}},
	{"delete suffix then append new term", []op{st(1, 300, 1), del(200, 300), st(200, 250, 2), reopen(), del(230, 250), reopen(), st(230, 240, 3)}},
	{"delete suffix at segment start", []op{st(1, 300, 1), del(2, 300), reopen(), st(2, 5, 2)}},
	{"delete suffix beyond last", []op{st(1, 100, 1), del(50, 1000), reopen()}},
	{"delete all then restart higher (snapshot restore)", []op{st(1, 300, 1), del(1, 300), reopen(), st(5000, 5100, 4), reopen()}},
	{"delete all then restart lower", []op{st(100, 300, 1), del(100, 300), st(10, 20, 2), reopen()}},
	{"delete prefix past the end empties", []op{st(1, 100, 1), del(1, 500), reopen(), st(501, 510, 2), reopen()}},
	{"compaction cycles", []op{
		st(1, 100, 1), st(101, 200, 1), del(1, 150), st(201, 400, 2), del(151, 390), reopen(),
		st(401, 420, 2), del(410, 420), st(410, 430, 3), del(391, 400), reopen(),
	}},
	// InmemStore moves its bounds on deletes outside the log (FirstIndex
	// becomes max+1 or LastIndex min-1); raft never issues them, so they
	// are checked on strict stores only.
	{"no-op deletes", []op{st(10, 100, 1), strictOnly(del(1, 5)), strictOnly(del(200, 300)), del(60, 50), reopen()}},
	{"empty store deletes", []op{del(1, 10), reopen(), st(1, 3, 1)}},
	{"middle delete refused", []op{st(1, 100, 1), strictErr(del(10, 20), ErrRangeUnsupported), reopen()}},
	{"gap refused", []op{st(1, 10, 1), strictErr(st(12, 13, 1), ErrOutOfOrder), strictErr(st(5, 6, 1), ErrOutOfOrder), st(11, 12, 1), reopen()}},
	{"index zero refused", []op{strictErr(st(0, 0, 1), ErrOutOfOrder)}},
}

// model tracks what a store must hold.
type model struct {
	first, last uint64
	term        map[uint64]uint64
}

func (m *model) apply(o op) error {
	switch {
	case o.term != 0:
		if o.err != nil {
			return nil
		}
		for i := o.store[0]; i <= o.store[1]; i++ {
			m.term[i] = o.term
		}
		if m.first == 0 {
			m.first = o.store[0]
		}
		m.last = o.store[1]
	case o.del[0] != 0:
		min, max := o.del[0], o.del[1]
		switch {
		case o.err != nil, min > max, m.last == 0, max < m.first, min > m.last:
		case min <= m.first:
			m.first = max + 1
			if m.first > m.last {
				m.first, m.last = 0, 0
			}
		case max >= m.last:
			m.last = min - 1
		default:
			return fmt.Errorf("model: middle delete %d-%d", min, max)
		}
	}
	return nil
}

func TestConformance(t *testing.T) {
	for _, s := range logStores() {
		for _, tc := range conformanceCases {
			t.Run(s.name+"/"+tc.name, func(t *testing.T) {
				dir := t.TempDir()
				store := s.open(t, dir)
				m := &model{term: map[uint64]uint64{}}
				for i, o := range tc.ops {
					if o.strict && !s.strict {
						continue
					}
					var err error
					switch {
					case o.reopen:
						store = s.reopen(t, store, dir)
					case o.del[0] != 0:
						err = store.DeleteRange(o.del[0], o.del[1])
					case o.single:
						for _, e := range makeEntries(o.store[0], o.store[1], o.term) {
							if err = store.StoreLog(e); err != nil {
								break
							}
						}
					default:
						err = store.StoreLogs(makeEntries(o.store[0], o.store[1], o.term))
					}
					if !errors.Is(err, o.err) || (err != nil && o.err == nil) {
						t.Fatalf("op %d %+v: err = %v, want %v", i, o, err, o.err)
					}
					if err := m.apply(o); err != nil {
						t.Fatal(err)
					}
					checkRange(t, store, m.first, m.last, func(i uint64) uint64 { return m.term[i] })
				}
			})
		}
	}
}

// TestConcurrentReadsDuringAppends runs GetLog from several goroutines while
// the log is appended to and compacted, as raft's replication goroutines do.
func TestConcurrentReadsDuringAppends(t *testing.T) {
	l := mustOpen(t, t.TempDir(), testConfig())
	defer l.Close()
	if err := l.StoreLogs(makeEntries(1, 10, 1)); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	errc := make(chan error, 4)
	for r := 0; r < 4; r++ {
		go func() {
			var e raft.Log
			for n := uint64(0); ; n++ {
				select {
				case <-done:
					errc <- nil
					return
				default:
				}
				first, _ := l.FirstIndex()
				last, _ := l.LastIndex()
				if last < first || first == 0 {
					continue
				}
				i := first + n%(last-first+1)
				err := l.GetLog(i, &e)
				if err == raft.ErrLogNotFound {
					continue // compacted meanwhile
				}
				if err == nil {
					err = sameEntry(&e, makeEntry(i, 1))
				}
				if err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	for i := uint64(11); i <= 1500; i += 10 {
		if err := l.StoreLogs(makeEntries(i, i+9, 1)); err != nil {
			t.Fatal(err)
		}
		if i%200 == 1 {
			if err := l.DeleteRange(1, i-100); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(done)
	for r := 0; r < 4; r++ {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}
