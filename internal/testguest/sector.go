package testguest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// Errors of ParseSector, Check and CheckCounters, to be tested with
// errors.Is. Each problem is reported wrapped with its location.
var (
	// ErrCorrupt marks a sector or counter page whose bytes no single guest
	// write (or boot) produced: torn, mixed, overwritten or never ours.
	ErrCorrupt = errors.New("corrupt")
	// ErrMisplaced marks a valid sector at the wrong place: its LBA field
	// is not where it was read, or its seq belongs to another ring slot.
	ErrMisplaced = errors.New("misplaced")
	// ErrForeignRun marks a valid sector or counter page of another run id.
	ErrForeignRun = errors.New("written by another run")
	// ErrLost marks a ring slot that holds an older write (or nothing) while
	// the ring holds later writes: a write the guest completed is missing.
	ErrLost = errors.New("lost write")
	// ErrCounters marks counter pages that are not all equal up to one
	// increment in progress.
	ErrCounters = errors.New("inconsistent counters")
)

// Sector is the header of a sector written by the guest.
type Sector struct {
	Seq   uint64 // the write's sequence number, from 1
	LBA   uint64 // where the guest wrote it
	RunID uint32 // Config.RunID of the image that wrote it
}

// ParseSector decodes and verifies one 512-byte sector. It returns valid
// true for a sector exactly as the guest writes it, valid false with a nil
// error for an all-zero (never written) sector, and an error wrapping
// ErrCorrupt for anything else; the Sector then holds the header fields as
// read, for diagnostics.
func ParseSector(b []byte) (Sector, bool, error) {
	if len(b) != SectorSize {
		return Sector{}, false, fmt.Errorf("testguest: sector of %d bytes, want %d", len(b), SectorSize)
	}
	le := binary.LittleEndian
	s := Sector{Seq: le.Uint64(b[hdrSeq:]), LBA: le.Uint64(b[hdrLBA:]), RunID: le.Uint32(b[hdrRunID:])}
	if allZero(b) {
		return Sector{}, false, nil
	}
	if !bytes.Equal(b[:hdrSeq], []byte(sectorMagic)) {
		return s, false, fmt.Errorf("%w: no sector magic (starts % x)", ErrCorrupt, b[:8])
	}
	var want [SectorSize]byte
	encodeSector(want[:], s)
	if i := firstDiff(b, want[:]); i >= 0 {
		return s, false, fmt.Errorf("%w: seq %d lba %d run %#x: byte %d is %#02x, want %#02x (torn or mixed write)",
			ErrCorrupt, s.Seq, s.LBA, s.RunID, i, b[i], want[i])
	}
	return s, true, nil
}

// encodeSector writes into b (SectorSize bytes) the sector the guest writes
// for s.
func encodeSector(b []byte, s Sector) {
	le := binary.LittleEndian
	copy(b, sectorMagic)
	le.PutUint64(b[hdrSeq:], s.Seq)
	le.PutUint64(b[hdrLBA:], s.LBA)
	le.PutUint32(b[hdrRunID:], s.RunID)
	le.PutUint32(b[hdrReserved:], 0)
	v := (uint32(s.Seq) ^ s.RunID) * fillSeedMul
	v = (v ^ uint32(s.Seq>>32)) * fillSeedMul
	v = (v ^ uint32(s.LBA)) * fillSeedMul
	v ^= uint32(s.LBA >> 32)
	for off := hdrSize; off < SectorSize; off += 4 {
		v = v*fillLCGMul + fillLCGAdd
		le.PutUint32(b[off:], v)
	}
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// firstDiff returns the first index where a and b (of equal length) differ,
// or -1.
func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}
