package wal

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// testConfig is a configuration with small segments so that tests cross
// segment boundaries often.
func testConfig() Config {
	c := DefaultConfig()
	c.SegmentSize = 64 << 10
	c.InlineThreshold = 1 << 10
	c.MaxRecycled = 2
	return c
}

// entrySize is the Data size of the test entry at index: a mix of empty,
// tiny, 4 KiB, around the inline threshold and larger than a test segment.
func entrySize(index uint64) int {
	switch index % 11 {
	case 0:
		return 0
	case 1:
		return 1
	case 2, 3, 4:
		return 4096
	case 5:
		return 1023
	case 6:
		return 1024
	case 7:
		if index%77 == 7 {
			return 70 << 10 // larger than a 64 KiB test segment
		}
		return 9000
	default:
		return int(index % 300)
	}
}

// makeEntry returns the deterministic test entry for (index, term).
func makeEntry(index, term uint64) *raft.Log {
	e := &raft.Log{
		Index:      index,
		Term:       term,
		Type:       raft.LogType(index % 6),
		AppendedAt: time.Unix(1_700_000_000+int64(index), int64(index%1000)),
	}
	if n := entrySize(index); n > 0 {
		e.Data = fillBytes(n, index, term)
	}
	if index%5 == 0 {
		e.Extensions = fillBytes(int(index%13)+1, index, term^0xffff)
	}
	return e
}

func fillBytes(n int, index, term uint64) []byte {
	b := make([]byte, n)
	var seed [16]byte
	binary.LittleEndian.PutUint64(seed[:], index)
	binary.LittleEndian.PutUint64(seed[8:], term)
	x := crc32.Checksum(seed[:], castagnoli) | 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

func makeEntries(from, to, term uint64) []*raft.Log {
	var es []*raft.Log
	for i := from; i <= to; i++ {
		es = append(es, makeEntry(i, term))
	}
	return es
}

// sameEntry compares two entries the way raft sees them (nil and empty
// slices are equal; times compare with Equal).
func sameEntry(a, b *raft.Log) error {
	switch {
	case a.Index != b.Index:
		return fmt.Errorf("index %d != %d", a.Index, b.Index)
	case a.Term != b.Term:
		return fmt.Errorf("entry %d: term %d != %d", a.Index, a.Term, b.Term)
	case a.Type != b.Type:
		return fmt.Errorf("entry %d: type %v != %v", a.Index, a.Type, b.Type)
	case !bytes.Equal(a.Data, b.Data):
		return fmt.Errorf("entry %d: data differs (%d vs %d bytes)", a.Index, len(a.Data), len(b.Data))
	case !bytes.Equal(a.Extensions, b.Extensions):
		return fmt.Errorf("entry %d: extensions differ", a.Index)
	case !a.AppendedAt.Equal(b.AppendedAt):
		return fmt.Errorf("entry %d: appendedAt %v != %v", a.Index, a.AppendedAt, b.AppendedAt)
	}
	return nil
}

// checkRange verifies that s holds exactly entries first..last with the
// terms given by termOf.
func checkRange(t testing.TB, s raft.LogStore, first, last uint64, termOf func(uint64) uint64) {
	t.Helper()
	if got, err := s.FirstIndex(); err != nil || got != first {
		t.Fatalf("FirstIndex = %d, %v; want %d", got, err, first)
	}
	if got, err := s.LastIndex(); err != nil || got != last {
		t.Fatalf("LastIndex = %d, %v; want %d", got, err, last)
	}
	if first == 0 {
		return
	}
	for i := first; i <= last; i++ {
		var got raft.Log
		if err := s.GetLog(i, &got); err != nil {
			t.Fatalf("GetLog(%d): %v", i, err)
		}
		if err := sameEntry(&got, makeEntry(i, termOf(i))); err != nil {
			t.Fatal(err)
		}
	}
	var l raft.Log
	if first > 1 {
		if err := s.GetLog(first-1, &l); err != raft.ErrLogNotFound {
			t.Fatalf("GetLog(%d) before first = %v, want ErrLogNotFound", first-1, err)
		}
	}
	if err := s.GetLog(last+1, &l); err != raft.ErrLogNotFound {
		t.Fatalf("GetLog(%d) after last = %v, want ErrLogNotFound", last+1, err)
	}
}

func mustOpen(t testing.TB, dir string, cfg Config) *Log {
	t.Helper()
	l, err := Open(dir, cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return l
}
