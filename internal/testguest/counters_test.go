package testguest

import (
	"encoding/binary"
	"errors"
	"testing"
)

// counterRegion returns the region a guest of c leaves with the given
// counter values.
func counterRegion(c Config, counts ...uint32) []byte {
	le := binary.LittleEndian
	b := make([]byte, c.CounterPages*CounterPageSize)
	for p := range c.CounterPages {
		page := b[p*CounterPageSize:]
		le.PutUint32(page[CounterOffset:], counts[p])
		le.PutUint32(page[CounterMagicOffset:], CounterMagic)
		le.PutUint32(page[CounterRunIDOffset:], c.RunID)
		le.PutUint32(page[CounterIndexOffset:], uint32(p))
	}
	return b
}

func TestCheckCounters(t *testing.T) {
	c := Config{RunID: 3, Base: 2, Ring: 1, CounterPages: 4}
	const top = 1<<32 - 1
	for _, tc := range []struct {
		counts []uint32
		want   error // nil: consistent
	}{
		{[]uint32{0, 0, 0, 0}, nil},
		{[]uint32{5, 5, 5, 5}, nil},
		{[]uint32{6, 5, 5, 5}, nil},
		{[]uint32{6, 6, 6, 5}, nil},
		{[]uint32{0, top, top, top}, nil}, // wrapped
		{[]uint32{5, 6, 6, 6}, ErrCounters},
		{[]uint32{6, 5, 6, 6}, ErrCounters}, // a stale page in the middle
		{[]uint32{7, 6, 5, 5}, ErrCounters},
		{[]uint32{7, 5, 5, 5}, ErrCounters},
		{[]uint32{top, 0, 0, 0}, ErrCounters},
	} {
		got, err := CheckCounters(counterRegion(c, tc.counts...), c)
		if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
			t.Errorf("counters %v: err %v, want %v", tc.counts, err, tc.want)
		}
		if err == nil && (got.First != tc.counts[0] || got.Last != tc.counts[3]) {
			t.Errorf("counters %v: got %+v", tc.counts, got)
		}
	}
	// A region as the guest leaves it, in a larger dump.
	big := append(counterRegion(c, 9, 9, 9, 9), make([]byte, 100)...)
	if got, err := CheckCounters(big, c); err != nil || got != (Counters{9, 9}) {
		t.Errorf("larger dump: %+v, %v", got, err)
	}
}

func TestCheckCountersLayout(t *testing.T) {
	c := Config{RunID: 3, Base: 2, Ring: 1, CounterPages: 4}
	le := binary.LittleEndian
	for _, tc := range []struct {
		name   string
		damage func(b []byte)
		want   error
	}{
		{"magic", func(b []byte) { b[2*CounterPageSize+CounterMagicOffset] ^= 1 }, ErrCorrupt},
		{"index", func(b []byte) { le.PutUint32(b[3*CounterPageSize+CounterIndexOffset:], 2) }, ErrCorrupt},
		{"run", func(b []byte) { le.PutUint32(b[CounterRunIDOffset:], 4) }, ErrForeignRun},
		{"uninitialized", func(b []byte) { clear(b) }, ErrCorrupt},
	} {
		b := counterRegion(c, 1, 1, 1, 1)
		tc.damage(b)
		if _, err := CheckCounters(b, c); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := CheckCounters(counterRegion(c, 1, 1, 1, 1)[:3*CounterPageSize], c); err == nil {
		t.Error("short dump accepted")
	}
	c0 := c
	c0.CounterPages = 0
	if _, err := CheckCounters(nil, c0); err == nil {
		t.Error("a guest without counter pages checked")
	}
}
