package raftlog

import (
	"bytes"
	"errors"
	"testing"
)

func TestEntryRoundTrip(t *testing.T) {
	ops := []*op{
		{kind: opWrite, off: 4096, n: 5, data: []byte("hello")},
		{kind: opZero, flags: flagPunch, off: 0, n: 1 << 20},
		{kind: opZero, off: 8192, n: 512},
		{kind: opGrow, off: 1 << 30},
		{kind: opWrite, off: 1<<40 + 3, n: 0, data: []byte{}},
		{kind: opWrite, off: 512, n: 2, data: []byte("ok"), id: 7, epoch: 1 << 60},
		{kind: opFence, off: 1234, epoch: 99, id: 8},
		{kind: opChecksum, off: 17, n: MaxPinnedRanges, id: 9},
	}
	b := encodeEntry(ops)
	var got []op
	if err := decodeEntry(b, func(o op) error { got = append(got, o); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(ops) {
		t.Fatalf("%d ops decoded, want %d", len(got), len(ops))
	}
	for i, o := range ops {
		g := got[i]
		if g.kind != o.kind || g.flags != o.flags || g.off != o.off || g.id != o.id || g.epoch != o.epoch || (o.kind != opGrow && g.n != o.n) || !bytes.Equal(g.data, o.data) {
			t.Errorf("op %d: got %+v, want %+v", i, g, *o)
		}
	}
}

// TestEntryEncoding pins the byte layout of version 3 entries, and the
// length the batcher counts with (entryHeader plus each op's encodedLen).
func TestEntryEncoding(t *testing.T) {
	tests := []struct {
		name string
		ops  []*op
		want []byte
	}{
		{"no ops", nil, []byte{3, 0, 0, 0, 0}},
		{"one write", []*op{{kind: opWrite, off: 1, n: 3, data: []byte("abc"), id: 5, epoch: 9}}, []byte{
			3, 0, 0, 0, 1,
			opWrite, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 9, 'a', 'b', 'c'}},
		{"zero then write", []*op{{kind: opZero, flags: flagPunch, off: 2, n: 7}, {kind: opWrite, off: 0, n: 1, data: []byte("x")}}, []byte{
			3, 0, 0, 0, 2,
			opZero, flagPunch, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
			opWrite, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 'x'}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := encodeEntry(tt.ops)
			if !bytes.Equal(got, tt.want) {
				t.Errorf("encodeEntry = %v, want %v", got, tt.want)
			}
			n := entryHeader
			for _, o := range tt.ops {
				n += o.encodedLen()
			}
			if len(got) != n {
				t.Errorf("len = %d, batcher counts %d", len(got), n)
			}
		})
	}
}

// TestEntryDecodesV2 checks that entries written before writer epochs
// existed still decode, with epoch 0.
func TestEntryDecodesV2(t *testing.T) {
	// Version 2, one op: write "abc" at 1, id 5.
	b := []byte{2, 0, 0, 0, 1, opWrite, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 5, 'a', 'b', 'c'}
	var got []op
	if err := decodeEntry(b, func(o op) error { got = append(got, o); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].kind != opWrite || got[0].off != 1 || got[0].id != 5 || got[0].epoch != 0 || string(got[0].data) != "abc" {
		t.Fatalf("got %+v", got)
	}
}

func TestEntryRejectsGarbage(t *testing.T) {
	good := encodeEntry([]*op{{kind: opWrite, off: 1, n: 3, data: []byte("abc")}})
	cases := map[string][]byte{
		"empty":           nil,
		"bad version":     append([]byte{9}, good[1:]...),
		"truncated data":  good[:len(good)-1],
		"trailing":        append(append([]byte{}, good...), 0),
		"unknown kind":    func() []byte { b := append([]byte{}, good...); b[entryHeader] = 77; return b }(),
		"negative off":    func() []byte { b := append([]byte{}, good...); b[entryHeader+2] = 0x80; return b }(),
		"count too high":  func() []byte { b := append([]byte{}, good...); b[4] = 2; return b }(),
		"no ranges":       encodeEntry([]*op{{kind: opChecksum, off: 1, n: 0}}),
		"too many ranges": encodeEntry([]*op{{kind: opChecksum, off: 1, n: MaxPinnedRanges + 1}}),
	}
	for name, b := range cases {
		if err := decodeEntry(b, func(op) error { return nil }); !errors.Is(err, errBadEntry) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func FuzzDecodeEntry(f *testing.F) {
	f.Add(encodeEntry([]*op{{kind: opWrite, off: 1, n: 3, data: []byte("abc")}, {kind: opZero, n: 9}}))
	f.Add(encodeEntry([]*op{{kind: opChecksum, off: 2, n: 3, id: 4}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = decodeEntry(b, func(o op) error {
			if o.off < 0 || (o.kind == opWrite && int64(len(o.data)) != o.n) ||
				(o.kind == opChecksum && (o.n < 1 || o.n > MaxPinnedRanges)) {
				t.Fatalf("decoded an invalid op %+v", o)
			}
			return nil
		})
	})
}
