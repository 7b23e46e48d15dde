package stablefile

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

func open(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stable")
	s := open(t, path)
	if len(s.kv) != 0 {
		t.Fatal("a new store is not empty")
	}
	// hashicorp/raft tells a missing key by this text.
	if _, err := s.Get([]byte("LastVoteCand")); err == nil || err.Error() != "not found" {
		t.Fatalf("Get of a missing key: %v, want \"not found\"", err)
	}
	if _, err := s.GetUint64([]byte("CurrentTerm")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetUint64 of a missing key: %v", err)
	}
	for term := uint64(1); term <= 5; term++ {
		if err := s.SetUint64([]byte("CurrentTerm"), term); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Set([]byte("LastVoteCand"), []byte("127.0.0.1:7000")); err != nil {
		t.Fatal(err)
	}
	if err := s.Set([]byte("empty"), nil); err != nil {
		t.Fatal(err)
	}
	check := func(s *Store) {
		t.Helper()
		if v, err := s.GetUint64([]byte("CurrentTerm")); err != nil || v != 5 {
			t.Fatalf("CurrentTerm = %d, %v", v, err)
		}
		if v, err := s.Get([]byte("LastVoteCand")); err != nil || string(v) != "127.0.0.1:7000" {
			t.Fatalf("LastVoteCand = %q, %v", v, err)
		}
		if v, err := s.Get([]byte("empty")); err != nil || len(v) != 0 {
			t.Fatalf("empty = %q, %v", v, err)
		}
	}
	check(s)
	s.Close()
	check(open(t, path))
	if _, err := os.Stat(path + ".tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temporary file left: %v", err)
	}
}

func TestTooLarge(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "stable"))
	if err := s.Set([]byte("k"), make([]byte, slotSize)); err == nil {
		t.Fatal("a value larger than a slot was accepted")
	}
	if len(s.kv) != 0 {
		t.Fatal("the refused value was kept")
	}
}

// TestTorn checks what Open makes of each state a crash, or damage, can
// leave in the two slots.
func TestTorn(t *testing.T) {
	slot := func(term uint64, seq uint64) []byte {
		b := make([]byte, slotSize)
		if err := encodeSlot(b, map[string][]byte{"CurrentTerm": {byte(term)}}, seq); err != nil {
			t.Fatal(err)
		}
		return b
	}
	torn := func(b []byte) []byte {
		b = bytes.Clone(b)
		b[headerSize] ^= 0xff // in the payload: the CRC no longer matches
		return b
	}
	zero := make([]byte, slotSize)
	tests := []struct {
		name    string
		a, b    []byte // slots 0 and 1
		want    int    // term, -1 for empty
		corrupt bool
	}{
		{"new", zero, zero, -1, false},
		{"first change", zero, slot(1, 1), 1, false},
		{"first change torn", zero, torn(slot(1, 1)), -1, false},
		{"second change", slot(2, 2), slot(1, 1), 2, false},
		{"second change torn", torn(slot(2, 2)), slot(1, 1), 1, false},
		{"third change torn", slot(2, 2), torn(slot(3, 3)), 2, false},
		{"higher seq wins", slot(8, 8), slot(7, 7), 8, false},
		{"both damaged", torn(slot(2, 2)), torn(slot(1, 1)), 0, true},
		{"garbage and zeros", bytes.Repeat([]byte{0x5a}, slotSize), zero, -1, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "stable")
			if err := os.WriteFile(path, append(bytes.Clone(tc.a), tc.b...), 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := Open(path)
			if tc.corrupt {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("Open: %v, want ErrCorrupt", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			v, err := s.Get([]byte("CurrentTerm"))
			switch {
			case tc.want < 0 && !errors.Is(err, ErrNotFound):
				t.Fatalf("got %v, %v; want empty", v, err)
			case tc.want >= 0 && (err != nil || int(v[0]) != tc.want):
				t.Fatalf("got %v, %v; want %d", v, err, tc.want)
			}
			// The next change goes to the slot not holding the state.
			if err := s.SetUint64([]byte("CurrentTerm"), 100); err != nil {
				t.Fatal(err)
			}
			s.Close()
			s2 := open(t, path)
			if v, err := s2.GetUint64([]byte("CurrentTerm")); err != nil || v != 100 {
				t.Fatalf("after a change: %d, %v", v, err)
			}
		})
	}
	t.Run("short file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "stable")
		if err := os.WriteFile(path, make([]byte, slotSize), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(path); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Open of a short file: %v, want ErrCorrupt", err)
		}
	})
}

// TestKill9 kills a process that sets a counter in a loop, 20 times at
// random moments after its first change, and checks that the store then
// holds at least the last value the process saw acknowledged (and at most
// the one after it).
func TestKill9(t *testing.T) {
	if path := os.Getenv("STABLEFILE_KILL9_PATH"); path != "" {
		kill9Child(path)
		return
	}
	if testing.Short() {
		t.Skip("short")
	}
	path := filepath.Join(t.TempDir(), "stable")
	var floor uint64 // what the store held after the last round
	for round := range 20 {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestKill9$")
		cmd.Env = append(os.Environ(), "STABLEFILE_KILL9_PATH="+path)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		acked := make(chan uint64, 1<<16)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if v, err := strconv.ParseUint(sc.Text(), 10, 64); err == nil {
					acked <- v
				}
			}
			close(acked)
		}()
		// Kill at a random moment after the child's first change (its
		// start takes long on a loaded machine).
		var last uint64
		select {
		case v, ok := <-acked:
			if !ok {
				t.Fatalf("round %d: the child exited", round)
			}
			last = v
		case <-time.After(time.Minute):
			t.Fatalf("round %d: the child set nothing in a minute", round)
		}
		time.Sleep(time.Duration(rand.IntN(50)) * time.Millisecond)
		cmd.Process.Kill()
		cmd.Wait()
		for v := range acked {
			last = v
		}
		s, err := Open(path)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		got, err := s.GetUint64([]byte("n"))
		s.Close()
		if err != nil {
			t.Fatalf("round %d: %v (last acknowledged %d)", round, err, last)
		}
		if got < last || got > last+1 {
			t.Fatalf("round %d: store holds %d, last acknowledged %d", round, got, last)
		}
		if got <= floor {
			t.Fatalf("round %d: store holds %d, no more than after the last round", round, got)
		}
		floor = got
	}
}

// kill9Child counts up from the stored value, printing each value once it
// is set, until killed.
func kill9Child(path string) {
	s, err := Open(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	n, err := s.GetUint64([]byte("n"))
	if err != nil && !errors.Is(err, ErrNotFound) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	w := bufio.NewWriter(os.Stdout)
	for {
		n++
		if err := s.SetUint64([]byte("n"), n); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Fprintln(w, n)
		w.Flush()
	}
}

// TestSetBatch checks that SetBatch stores integers as SetUint64 does,
// with one write.
func TestSetBatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stable")
	s := open(t, path)
	if err := s.SetBatch(map[string]uint64{"CurrentTerm": 7, "LastVoteTerm": 7}, map[string][]byte{"LastVoteCand": []byte("n1")}); err != nil {
		t.Fatal(err)
	}
	if s.seq != 1 {
		t.Fatalf("%d writes, want 1", s.seq)
	}
	s.Close()
	s = open(t, path)
	for _, k := range []string{"CurrentTerm", "LastVoteTerm"} {
		if v, err := s.GetUint64([]byte(k)); err != nil || v != 7 {
			t.Fatalf("%s = %d, %v", k, v, err)
		}
	}
	if v, err := s.Get([]byte("LastVoteCand")); err != nil || string(v) != "n1" {
		t.Fatalf("LastVoteCand = %q, %v", v, err)
	}
}
