package testguest

import (
	"bytes"
	"errors"
	"testing"
)

func sectorOf(s Sector) []byte {
	b := make([]byte, SectorSize)
	encodeSector(b, s)
	return b
}

func TestParseSector(t *testing.T) {
	for _, s := range []Sector{
		{Seq: 1, LBA: 8, RunID: 1},
		{Seq: 1 << 32, LBA: 1 << 40, RunID: 0xFFFFFFFF},
		{Seq: 1<<64 - 1, LBA: 2, RunID: 0},
	} {
		got, valid, err := ParseSector(sectorOf(s))
		if err != nil || !valid || got != s {
			t.Errorf("ParseSector(%+v) = %+v, %v, %v", s, got, valid, err)
		}
	}
	if s, valid, err := ParseSector(make([]byte, SectorSize)); err != nil || valid || s != (Sector{}) {
		t.Errorf("zero sector: %+v, %v, %v; want unwritten", s, valid, err)
	}
	if _, _, err := ParseSector(make([]byte, 4096)); err == nil {
		t.Error("a 4096-byte sector parsed")
	}
	if _, _, err := ParseSector(bytes.Repeat([]byte{0xAB}, SectorSize)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("garbage sector: %v, want ErrCorrupt", err)
	}
}

// TestParseSectorEveryByte flips each bit of a sector in turn: every one
// must be caught.
func TestParseSectorEveryByte(t *testing.T) {
	good := sectorOf(Sector{Seq: 77, LBA: 10, RunID: 5})
	for i := range SectorSize {
		for bit := range 8 {
			b := bytes.Clone(good)
			b[i] ^= 1 << bit
			if _, valid, err := ParseSector(b); valid || !errors.Is(err, ErrCorrupt) {
				t.Fatalf("flip byte %d bit %d: valid %v, err %v", i, bit, valid, err)
			}
		}
	}
}

// TestParseSectorTorn mixes two writes of the same LBA (and a write with
// the zeros of an unwritten sector) at every split point: the result must
// be rejected unless it equals one of the writes.
func TestParseSectorTorn(t *testing.T) {
	older := sectorOf(Sector{Seq: 100, LBA: 40, RunID: 9})
	newer := sectorOf(Sector{Seq: 164, LBA: 40, RunID: 9})
	highOnly := sectorOf(Sector{Seq: 100 + 1<<32, LBA: 40, RunID: 9})
	zero := make([]byte, SectorSize)
	for _, pair := range [][2][]byte{{older, newer}, {newer, older}, {zero, newer}, {newer, zero}, {older, highOnly}} {
		for split := 1; split < SectorSize; split++ {
			b := append(bytes.Clone(pair[0][:split]), pair[1][split:]...)
			_, valid, err := ParseSector(b)
			whole := bytes.Equal(b, pair[0]) || bytes.Equal(b, pair[1])
			switch {
			case whole && (err != nil || !valid && !allZero(b)):
				t.Fatalf("split %d: a whole write rejected: %v", split, err)
			case !whole && (valid || !errors.Is(err, ErrCorrupt)):
				t.Fatalf("split %d: torn sector accepted (valid %v, err %v)", split, valid, err)
			}
		}
	}
}

func TestFillDependsOnSeqAndRun(t *testing.T) {
	base := sectorOf(Sector{Seq: 5, LBA: 3, RunID: 1})
	for _, s := range []Sector{{Seq: 6, LBA: 3, RunID: 1}, {Seq: 5 + 1<<32, LBA: 3, RunID: 1}, {Seq: 5, LBA: 3, RunID: 2}} {
		other := sectorOf(s)
		for off := hdrSize; off < SectorSize; off += 4 {
			if bytes.Equal(base[off:off+4], other[off:off+4]) {
				t.Errorf("%+v: fill dword at %d equals that of seq 5 run 1", s, off)
			}
		}
	}
}
