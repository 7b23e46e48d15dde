package testguest

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Counters summarizes the RAM counter pages as CheckCounters found them.
type Counters struct {
	// First and Last are the counters of the first and the last page. The
	// guest increments pages in order, so First is Last or Last+1.
	First, Last uint32
}

// CheckCounters verifies a dump of the counter region of a guest built from
// c: region holds guest memory from CounterBase on (QMP "pmemsave" with
// val=CounterBase, size=c.CounterPages*CounterPageSize), taken at any time
// after the guest initialized its counters. Every page must carry
// CounterMagic, c.RunID and its index, and the counters must be what the
// guest leaves between any two of its instructions: equal, or the first
// pages one increment ahead of the rest (non-increasing in page order, first
// minus last at most 1, modulo 2^32). Errors wrap ErrCorrupt,
// ErrForeignRun or ErrCounters.
func CheckCounters(region []byte, c Config) (Counters, error) {
	if err := c.Validate(); err != nil {
		return Counters{}, err
	}
	if c.CounterPages == 0 {
		return Counters{}, errors.New("testguest: the guest has no counter pages")
	}
	if len(region) < c.CounterPages*CounterPageSize {
		return Counters{}, fmt.Errorf("testguest: counter region dump of %d bytes, want %d",
			len(region), c.CounterPages*CounterPageSize)
	}
	le := binary.LittleEndian
	counter := func(p int) uint32 { return le.Uint32(region[p*CounterPageSize+CounterOffset:]) }
	for p := range c.CounterPages {
		page := region[p*CounterPageSize:]
		addr := CounterBase + p*CounterPageSize
		if m, idx := le.Uint32(page[CounterMagicOffset:]), le.Uint32(page[CounterIndexOffset:]); m != CounterMagic || idx != uint32(p) {
			return Counters{}, fmt.Errorf("testguest: counter page %d at %#x: %w: magic %#x index %d, want %#x index %d",
				p, addr, ErrCorrupt, m, idx, CounterMagic, p)
		}
		if id := le.Uint32(page[CounterRunIDOffset:]); id != c.RunID {
			return Counters{}, fmt.Errorf("testguest: counter page %d at %#x: %w: run %#x, want %#x",
				p, addr, ErrForeignRun, id, c.RunID)
		}
		if p > 0 {
			if d := counter(p-1) - counter(p); d > 1 {
				return Counters{}, fmt.Errorf("testguest: %w: page %d counts %d, page %d counts %d",
					ErrCounters, p-1, counter(p-1), p, counter(p))
			}
		}
	}
	res := Counters{First: counter(0), Last: counter(c.CounterPages - 1)}
	if d := res.First - res.Last; d > 1 {
		return res, fmt.Errorf("testguest: %w: first page counts %d, last page %d", ErrCounters, res.First, res.Last)
	}
	return res, nil
}
