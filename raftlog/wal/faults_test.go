package wal

import (
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/raft"
)

// faultFS wraps osFS and fails chosen operations on segment files.
type faultFS struct {
	osFS
	mu     sync.Mutex
	fail   map[string]error // op name ("datasync", "writev", "truncate", "rename", "remove") → error
	spares map[string]*faultFile
	syncs  atomic.Int64 // fdatasyncs of segment files
}

var errInjected = errors.New("injected fault")

func (f *faultFS) err(op string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fail[op]
}

func (f *faultFS) set(op string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail == nil {
		f.fail = map[string]error{}
	}
	f.fail[op] = err
}

func (f *faultFS) Create(path string) (file, error) {
	fl, err := f.osFS.Create(path)
	if err != nil {
		return nil, err
	}
	ff := &faultFile{file: fl, fs: f}
	if strings.HasSuffix(path, spareSuffix) {
		ff.spare.Store(true)
		f.mu.Lock()
		if f.spares == nil {
			f.spares = map[string]*faultFile{}
		}
		f.spares[path] = ff
		f.mu.Unlock()
	}
	return ff, nil
}

func (f *faultFS) Open(path string) (file, error) {
	fl, err := f.osFS.Open(path)
	if err != nil {
		return nil, err
	}
	return &faultFile{file: fl, fs: f}, nil
}

func (f *faultFS) Rename(o, n string) error {
	if err := f.err("rename"); err != nil {
		return err
	}
	f.mu.Lock()
	if ff := f.spares[o]; ff != nil {
		ff.spare.Store(false) // now a segment: faults apply
		delete(f.spares, o)
	}
	f.mu.Unlock()
	return f.osFS.Rename(o, n)
}

func (f *faultFS) Remove(p string) error {
	if err := f.err("remove"); err != nil && strings.HasSuffix(p, ".seg") {
		return err
	}
	return f.osFS.Remove(p)
}

type faultFile struct {
	file
	fs    *faultFS
	spare atomic.Bool // still a spare: its preparation is not faulted
}

func (f *faultFile) WriteV(b [][]byte, off int64) error {
	if err := f.fs.err("writev"); err != nil && !f.spare.Load() {
		return err
	}
	return f.file.WriteV(b, off)
}

func (f *faultFile) Datasync() error {
	if f.spare.Load() {
		return f.file.Datasync()
	}
	if err := f.fs.err("datasync"); err != nil {
		return err
	}
	f.fs.syncs.Add(1)
	return f.file.Datasync()
}

func (f *faultFile) Truncate(n int64) error {
	if err := f.fs.err("truncate"); err != nil {
		return err
	}
	return f.file.Truncate(n)
}

// TestFailClosed checks that a failed write, sync, truncation or segment
// rename stops all further mutations (ErrFailed) while reads go on, and
// that a reopen recovers a consistent log.
func TestFailClosed(t *testing.T) {
	for _, tc := range []struct {
		op     string
		mutate func(l *Log) error
	}{
		{"datasync", func(l *Log) error { return l.StoreLogs(makeEntries(41, 45, 1)) }},
		{"datasync", func(l *Log) error {
			if err := l.StoreLogsNoSync(makeEntries(41, 45, 1)); err != nil {
				return err
			}
			return l.SyncLogs()
		}},
		{"writev", func(l *Log) error { return l.StoreLogs(makeEntries(41, 45, 1)) }},
		{"truncate", func(l *Log) error { return l.DeleteRange(35, 40) }},
		{"rename", func(l *Log) error { return l.StoreLogs(makeEntries(41, 41+200, 1)) }}, // forces a new segment
	} {
		t.Run(tc.op, func(t *testing.T) {
			dir := t.TempDir()
			ffs := &faultFS{}
			l, err := open(dir, testConfig(), ffs)
			if err != nil {
				t.Fatal(err)
			}
			if err := l.StoreLogs(makeEntries(1, 40, 1)); err != nil {
				t.Fatal(err)
			}
			if err := l.Err(); err != nil {
				t.Fatalf("Err before any failure = %v", err)
			}
			select {
			case <-l.Failed():
				t.Fatal("Failed closed before any failure")
			default:
			}
			ffs.set(tc.op, errInjected)
			if err := tc.mutate(l); !errors.Is(err, errInjected) {
				t.Fatalf("mutation = %v, want the injected error", err)
			}
			ffs.set(tc.op, nil)
			select {
			case <-l.Failed():
			default:
				t.Fatal("Failed not closed after a failure")
			}
			if err := l.Err(); !errors.Is(err, ErrFailed) || !errors.Is(err, errInjected) {
				t.Fatalf("Err after failure = %v, want ErrFailed and the injected error", err)
			}
			if err := l.StoreLogs(makeEntries(41, 41, 1)); !errors.Is(err, ErrFailed) {
				t.Fatalf("StoreLogs after failure = %v, want ErrFailed", err)
			}
			if err := l.DeleteRange(1, 2); !errors.Is(err, ErrFailed) {
				t.Fatalf("DeleteRange after failure = %v, want ErrFailed", err)
			}
			var e raft.Log
			if err := l.GetLog(3, &e); err != nil {
				t.Fatalf("GetLog after failure: %v", err)
			}
			l.Close()
			l = mustOpen(t, dir, testConfig())
			defer l.Close()
			// Whatever the failed call left, the log is a consistent
			// range holding at least 1..34.
			last, _ := l.LastIndex()
			if last < 34 {
				t.Fatalf("last = %d after reopen", last)
			}
			checkRange(t, l, 1, last, term1)
		})
	}
}
