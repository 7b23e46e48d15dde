package bench

import (
	"strings"
	"testing"
)

func TestUnitFormat(t *testing.T) {
	b := make([]byte, 3*unitSize)
	fillBody(b, 1)
	formatUnits(b, 8192, 0xabc)
	for u := 0; u < 3; u++ {
		stamp, err := unitStamp(b[u*unitSize:(u+1)*unitSize], int64(8192+u*unitSize))
		if err != nil || stamp != 0xabc {
			t.Fatalf("unit %d: stamp %#x, %v", u, stamp, err)
		}
	}
	for _, c := range []struct {
		name    string
		corrupt func(p []byte) int64 // returns the offset to check at
		want    string
	}{
		{"flipped body bit", func(p []byte) int64 { p[1000] ^= 1; return 8192 }, "checksum"},
		{"flipped stamp", func(p []byte) int64 { p[17] ^= 1; return 8192 }, "checksum"},
		{"zeroed", func(p []byte) int64 { clear(p); return 8192 }, "no header"},
		{"misdirected", func(p []byte) int64 { return 4096 }, "misdirected"},
	} {
		p := append([]byte(nil), b[:unitSize]...)
		off := c.corrupt(p)
		if _, err := unitStamp(p, off); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one mentioning %q", c.name, err, c.want)
		}
	}
}

// TestCheckStamps checks the verifier's judgement of a block whose
// expected content is known.
func TestCheckStamps(t *testing.T) {
	g := &generator{spec: LoadSpec{Verify: true}, workers: 1, state: make([]blockState, 1)}
	w := &worker{g: g, rbuf: make([]byte, 2*unitSize)}
	read := func(stamp uint64) {
		formatUnits(w.rbuf, 0, stamp)
	}
	// Unknown content, not prefilled: nothing to check against.
	clear(w.rbuf)
	w.check(0, 0)
	if g.mismatches.Load() != 0 {
		t.Fatalf("unknown content counted as a mismatch: %s", g.firstMis)
	}
	g.state[0] = blockState{want: 5}
	read(5)
	w.check(0, 0)
	if g.mismatches.Load() != 0 || g.verified.Load() != 2 {
		t.Fatalf("matching block: %d mismatches, %d verified", g.mismatches.Load(), g.verified.Load())
	}
	read(4) // an older write: lost or stale
	w.check(0, 0)
	if g.mismatches.Load() != 2 || !strings.Contains(g.firstMis, "lost or stale") {
		t.Fatalf("stale block: %d mismatches, first %q", g.mismatches.Load(), g.firstMis)
	}
	// After a failed write, either the old or the new content is right.
	g.state[0] = blockState{want: 5, maybe: []uint64{6, 7}}
	for _, stamp := range []uint64{5, 6, 7} {
		read(stamp)
		w.check(0, 0)
	}
	if g.mismatches.Load() != 2 {
		t.Fatalf("failed write: %d mismatches, want still 2", g.mismatches.Load())
	}
	// Prefilled: unknown blocks must still be well-formed.
	g.spec.Prefilled = true
	g.state[0] = blockState{}
	read(77)
	w.check(0, 0)
	w.rbuf[5000] ^= 0xff
	w.check(0, 0)
	if g.mismatches.Load() != 3 {
		t.Fatalf("prefilled: %d mismatches, want 3", g.mismatches.Load())
	}
}
