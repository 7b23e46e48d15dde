package testguest

import (
	"errors"
	"fmt"
	"io"
	"math"
)

// Result summarizes the ring as Check found it.
type Result struct {
	// Written counts the ring slots holding a valid sector of this run.
	Written uint64
	// MinSeq and MaxSeq are the lowest and highest seq among them (0 when
	// Written is 0).
	MinSeq, MaxSeq uint64
}

// maxReported bounds the problems Check describes one by one.
const maxReported = 20

// checkChunk is how many sectors Check reads at a time.
const checkChunk = 512

// Check reads the ring of c from disk (a raw image: byte offset = LBA *
// SectorSize) and verifies it against what the guest writes. It reports
// every problem (describing the first 20, counting the rest), each wrapped
// with its LBA: a sector that is not exactly as the
// guest writes it or has a seq beyond c.Writes (ErrCorrupt), a sector whose
// LBA field or seq does not match its slot (ErrMisplaced), a sector of
// another run id (ErrForeignRun), and a slot that does not hold the newest
// write for it at or below MaxSeq (ErrLost). The guest issues one write at
// a time and waits for its completion, so every write older than the newest
// one on disk was acknowledged before it: a missing one was lost. The Result
// is filled even when an error is returned; a read error stops the check.
func Check(disk io.ReaderAt, c Config) (Result, error) {
	var res Result
	if err := c.Validate(); err != nil {
		return res, err
	}
	var problems []error
	extra := 0
	report := func(lba uint64, err error) {
		if len(problems) < maxReported {
			problems = append(problems, fmt.Errorf("testguest: LBA %d: %w", lba, err))
		} else {
			extra++
		}
	}
	// seqs[i] is the seq of slot i: 0 when unwritten, reported when the slot
	// was already reported.
	const reported = math.MaxUint64
	var seqs []uint64
	buf := make([]byte, checkChunk*SectorSize)
	for first := uint64(0); first < c.Ring; first += checkChunk {
		n := min(c.Ring-first, checkChunk)
		b := buf[:n*SectorSize]
		off := int64((c.Base + first) * SectorSize)
		if got, err := disk.ReadAt(b, off); got < len(b) {
			return res, fmt.Errorf("testguest: reading LBAs %d-%d: %w", c.Base+first, c.Base+first+n-1, err)
		}
		for j := range n {
			slot, lba := first+j, c.Base+first+j
			s, valid, err := ParseSector(b[j*SectorSize : (j+1)*SectorSize])
			if err == nil && valid {
				err = c.misfit(s, slot, lba)
			}
			if err != nil {
				report(lba, err)
				seqs = append(seqs, reported)
				continue
			}
			seqs = append(seqs, s.Seq)
			if valid {
				res.Written++
				res.MaxSeq = max(res.MaxSeq, s.Seq)
				if res.MinSeq == 0 || s.Seq < res.MinSeq {
					res.MinSeq = s.Seq
				}
			}
		}
	}
	if res.MaxSeq > 0 {
		for slot, seq := range seqs {
			want := newestFor(uint64(slot), res.MaxSeq, c.Ring)
			if seq != reported && seq != want {
				report(c.Base+uint64(slot), fmt.Errorf("%w: slot holds seq %d, want %d (the ring holds seq %d)",
					ErrLost, seq, want, res.MaxSeq))
			}
		}
	}
	if extra > 0 {
		problems = append(problems, fmt.Errorf("testguest: and %d more problems", extra))
	}
	return res, errors.Join(problems...)
}

// misfit reports why the valid sector s, read from slot at lba, is not one
// the guest of c wrote there, or nil.
func (c Config) misfit(s Sector, slot, lba uint64) error {
	switch {
	case s.RunID != c.RunID:
		return fmt.Errorf("%w: run %#x, want %#x (seq %d)", ErrForeignRun, s.RunID, c.RunID, s.Seq)
	case s.LBA != lba:
		return fmt.Errorf("%w: sector says LBA %d (seq %d)", ErrMisplaced, s.LBA, s.Seq)
	case s.Seq == 0 || s.Seq%c.Ring != slot:
		return fmt.Errorf("%w: seq %d belongs to slot %d, found in slot %d", ErrMisplaced, s.Seq, s.Seq%c.Ring, slot)
	case c.Writes != 0 && s.Seq > c.Writes:
		return fmt.Errorf("%w: seq %d beyond the %d writes the guest makes", ErrCorrupt, s.Seq, c.Writes)
	}
	return nil
}

// newestFor returns the newest seq in [1, maxSeq] that goes to slot, or 0.
func newestFor(slot, maxSeq, ring uint64) uint64 {
	r := maxSeq % ring
	if slot <= r {
		return maxSeq - r + slot // 0 when slot 0 and maxSeq < ring
	}
	if maxSeq-r < ring-slot {
		return 0
	}
	return maxSeq - r - (ring - slot)
}
