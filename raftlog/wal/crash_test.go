package wal

import (
	"bufio"
	"fmt"
	"io"
	"maps"
	"math/rand"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// The kill -9 test. TestCrashChild is the helper process: started by
// TestKill9 with WAL_CRASH_DIR set, it opens the log and mutates it forever,
// printing one line per acknowledged operation:
//
//	A <from> <to> <term>   StoreLogs(from..to) returned nil
//	b P <max>              about to DeleteRange(first, max)
//	P <max>                it returned nil
//	b S <min>              about to DeleteRange(min, last)
//	S <min>                it returned nil
//
// With WAL_CRASH_LEADER=1 it writes like a raft leader instead: appends
// with StoreLogsNoSync while another goroutine calls SyncLogs in a loop,
// and deletes only prefixes (compaction; a leader never cuts its own tail,
// and a D line read after such a cut would acknowledge entries it removed):
//
//	N <from> <to> <term>   StoreLogsNoSync(from..to) returned nil (not an acknowledgement)
//	D <index>              a SyncLogs begun after every entry up to index was stored returned nil
//
// The parent SIGKILLs it at random moments (sometimes right after a "b"
// line, i.e. inside DeleteRange), reopens the log and checks that every
// acknowledged entry is there and intact, that acknowledged deletions
// stuck, and that the log is contiguous.

func crashConfig() Config {
	c := DefaultConfig()
	c.SegmentSize = 256 << 10
	c.InlineThreshold = 1 << 10
	return c
}

func TestCrashChild(t *testing.T) {
	dir := os.Getenv("WAL_CRASH_DIR")
	if dir == "" {
		t.Skip("helper process for TestKill9")
	}
	seed, _ := strconv.ParseInt(os.Getenv("WAL_CRASH_SEED"), 10, 64)
	term, _ := strconv.ParseUint(os.Getenv("WAL_CRASH_TERM"), 10, 64)
	rng := rand.New(rand.NewSource(seed))
	out := os.Stdout // unbuffered: a printed line is an acknowledgement
	// check reports a failed call as an "E" line, which fails the parent.
	check := func(err error) {
		if err != nil {
			fmt.Fprintf(out, "E %v\n", err)
			os.Exit(2)
		}
	}
	l, err := Open(dir, crashConfig())
	check(err)
	leader := os.Getenv("WAL_CRASH_LEADER") == "1"
	var stored atomic.Uint64 // leader: the last index stored
	if leader {
		go func() {
			var durable uint64
			for {
				idx := stored.Load()
				if idx <= durable {
					time.Sleep(20 * time.Microsecond)
					continue
				}
				check(l.SyncLogs())
				durable = idx
				fmt.Fprintf(out, "D %d\n", idx)
			}
		}()
	}
	for {
		first, _ := l.FirstIndex()
		last, _ := l.LastIndex()
		switch r := rng.Intn(100); {
		case leader && r >= 8:
			from := last + 1
			to := from + uint64(rng.Intn(16))
			check(l.StoreLogsNoSync(makeEntries(from, to, term)))
			fmt.Fprintf(out, "N %d %d %d\n", from, to, term)
			stored.Store(to)
		case r < 8 && last-first > 60:
			max := first + uint64(rng.Int63n(int64(last-first-30)))
			fmt.Fprintf(out, "b P %d\n", max)
			check(l.DeleteRange(first, max))
			fmt.Fprintf(out, "P %d\n", max)
		case !leader && r < 16 && last-first > 20: // a leader never cuts its own tail
			min := last - uint64(rng.Intn(15))
			fmt.Fprintf(out, "b S %d\n", min)
			check(l.DeleteRange(min, last))
			fmt.Fprintf(out, "S %d\n", min)
			term++ // re-appended indexes get different contents
		default:
			from := last + 1
			to := from + uint64(rng.Intn(16))
			check(l.StoreLogs(makeEntries(from, to, term)))
			fmt.Fprintf(out, "A %d %d %d\n", from, to, term)
		}
	}
}

func TestKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	dir := t.TempDir()
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))

	acked := map[uint64]uint64{}  // index → term of acknowledged entries present
	var floor uint64              // acknowledged prefix deletions: first must be > floor
	stored := map[uint64]uint64{} // leader runs: stored, not yet acknowledged
	const runs = 24
	for run := 1; run <= runs; run++ {
		// Every run uses fresh terms so re-appended indexes differ.
		term := uint64(run) * 1_000_000
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), "WAL_CRASH_DIR="+dir,
			"WAL_CRASH_SEED="+strconv.FormatInt(rng.Int63(), 10),
			"WAL_CRASH_TERM="+strconv.FormatUint(term, 10),
			"WAL_CRASH_LEADER="+strconv.Itoa(run%2))
		clear(stored)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1024)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			io.Copy(io.Discard, stdout)
			close(lines)
		}()

		// Kill mode: after a random time, or at the first (or a random)
		// start of a DeleteRange.
		inDelete := run%3 == 0
		// The clock starts at the child's first acknowledgement.
		var deadline <-chan time.Time
		started := false
		var pending []string // begun, unacknowledged deletion
		killed := false
		kill := func() {
			if !killed {
				cmd.Process.Signal(syscall.SIGKILL)
				killed = true
			}
		}
		apply := func(line string) {
			f := strings.Fields(line)
			num := func(i int) uint64 { n, _ := strconv.ParseUint(f[i], 10, 64); return n }
			switch f[0] {
			case "A", "N": // acknowledged, or only stored
				m := acked
				if f[0] == "N" {
					m = stored
				}
				for i := num(1); i <= num(2); i++ {
					m[i] = num(3)
				}
			case "D":
				for i, tm := range stored {
					if i <= num(1) {
						acked[i] = tm
						delete(stored, i)
					}
				}
			case "b":
				pending = f[1:]
				if inDelete && rng.Intn(3) == 0 {
					if d := rng.Intn(300); d > 0 {
						time.Sleep(time.Duration(d) * time.Microsecond)
					}
					kill()
				}
			case "P":
				maps.DeleteFunc(acked, func(i, _ uint64) bool { return i <= num(1) })
				maps.DeleteFunc(stored, func(i, _ uint64) bool { return i <= num(1) })
				floor = max(floor, num(1))
				pending = nil
			case "S":
				maps.DeleteFunc(acked, func(i, _ uint64) bool { return i >= num(1) })
				maps.DeleteFunc(stored, func(i, _ uint64) bool { return i >= num(1) })
				pending = nil
			case "E":
				t.Fatalf("child failed: %s", line)
			}
		}
	loop:
		for {
			select {
			case line, ok := <-lines:
				if !ok {
					break loop
				}
				if !started {
					started = true
					deadline = time.After(time.Duration(10+rng.Intn(150)) * time.Millisecond)
				}
				apply(line)
			case <-deadline:
				kill()
				deadline = nil
			}
		}
		err = cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("run %d: child did not die of SIGKILL: %v", run, err)
		}

		// Reopen and check.
		l, err := Open(dir, crashConfig())
		if err != nil {
			t.Fatalf("run %d: reopen after kill: %v", run, err)
		}
		first, _ := l.FirstIndex()
		last, _ := l.LastIndex()
		if first != 0 && first <= floor {
			t.Fatalf("run %d: first index %d, but entries up to %d were deleted", run, first, floor)
		}
		present := map[uint64]uint64{}
		for i := first; first != 0 && i <= last; i++ {
			var e raft.Log
			if err := l.GetLog(i, &e); err != nil {
				t.Fatalf("run %d: log %d-%d not contiguous: GetLog(%d): %v", run, first, last, i, err)
			}
			if err := sameEntry(&e, makeEntry(i, e.Term)); err != nil {
				t.Fatalf("run %d: entry damaged: %v", run, err)
			}
			present[i] = e.Term
		}
		// Acknowledged entries may be missing only if a deletion that
		// covers them was in progress at the kill.
		mayBeGone := func(i uint64) bool {
			if len(pending) != 2 {
				return false
			}
			x, _ := strconv.ParseUint(pending[1], 10, 64)
			if pending[0] == "P" {
				return i <= x
			}
			return i >= x
		}
		for i, tm := range acked {
			got, ok := present[i]
			switch {
			case !ok && !mayBeGone(i):
				t.Fatalf("run %d: acknowledged entry %d (term %d) lost; log is %d-%d, pending %v", run, i, tm, first, last, pending)
			case ok && got != tm:
				t.Fatalf("run %d: entry %d has term %d, acknowledged %d", run, i, got, tm)
			}
		}
		t.Logf("run %d: log %d-%d, %d acknowledged entries checked, pending %v", run, first, last, len(acked), pending)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		// What survived (acknowledged or not) is the log the next run
		// extends.
		acked = present
		if first > 0 {
			floor = max(floor, first-1)
		}
	}
}
