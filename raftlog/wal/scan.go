package wal

import "fmt"

// tailState classifies what follows the last valid record of a segment.
type tailState int

const (
	// tailClean: nothing but zeros (preallocated space) or end of file.
	tailClean tailState = iota
	// tailTorn: non-zero bytes that are a partial write of the batch being
	// written at the crash: garbage, or valid records of that same batch
	// after a damaged one. The log is cut at end.
	tailTorn
	// tailCorrupt: damage that a crash cannot explain.
	tailCorrupt
)

func (s tailState) String() string {
	switch s {
	case tailClean:
		return "clean"
	case tailTorn:
		return "torn"
	default:
		return "corrupt"
	}
}

// segScan is the result of scanning one segment's bytes.
type segScan struct {
	// headerOK reports whether the segment header is valid (and names the
	// expected base index).
	headerOK bool
	// offsets holds the start offset of each valid record, in index order;
	// record i has index base+i.
	offsets []int64
	// end is the offset just past the last valid record (segHeaderSize if
	// there is none, 0 if the header is invalid).
	end   int64
	state tailState
	// why explains a torn or corrupt state.
	why string
}

// scanSegment scans a segment image b whose file name says its first record
// has index base and its records are sealed with salt. It never fails:
// damage is reported in the result. offsets is reused if it has capacity.
// With payloads false it checks each record's header (its checksum
// covers the index, term, lengths and payload checksum) but not the
// payload's checksum and padding, so it reads one block per record: for a
// sealed segment, whose every batch was synced before the next segment
// was written, and whose payloads GetLog verifies when it reads them.
// Records sealed with another salt (left in a recycled file by the segment
// it used to be) are never valid here.
//
// The scan accepts records while each one has a valid header and payload
// checksum, the expected index (base, base+1, ...) and a batch offset that
// either starts a new batch (0) or continues the previous record's batch
// when that record was not marked as the end of its batch. At the first
// record that fails (position p, expected index e), the rest of the segment
// is classified:
//
//   - only zeros: clean (the normal end of a preallocated segment);
//   - no valid record after p: torn (a partial write of the last batch);
//   - valid records after p, all with index > e and belonging to the batch
//     the failed record could belong to (the batch of the previous record if
//     it was not marked as its batch's end, or a batch starting at e): torn.
//     Under power loss the pages of an unsynced batch reach the disk in any
//     order, so a hole inside the last batch is expected;
//   - any other valid record after p: corrupt. Batches are written one after
//     the other and each is synced before the next starts, so a record of a
//     later batch proves that the failed record had been synced.
func scanSegment(b []byte, base uint64, salt uint32, offsets []int64, payloads bool) segScan {
	s := segScan{offsets: offsets[:0]}
	if gotBase, gotSalt, ok := decodeSegHeader(b); !ok || gotBase != base || gotSalt != salt {
		// Torn, damaged, or the header of the segment a recycled file
		// used to be: the first batch did not land (or the header was
		// damaged, which classify reports if later batches exist).
		s.why = "invalid segment header"
		s.classify(b, 0, base, salt, nil)
		return s
	}
	s.headerOK = true
	p := int64(segHeaderSize)
	next := base
	var prev *recHeader
	var prevHdr recHeader
	for {
		h, ok := validRecordAt(b, p, salt, payloads)
		if ok && h.index != next {
			ok = false
		}
		if ok && h.batchOff != 0 && (prev == nil || prev.flags&flagBatchEnd != 0 || h.batchFirst() != prev.batchFirst()) {
			ok = false
		}
		if !ok {
			s.end = p
			s.classify(b, p, next, salt, prev)
			return s
		}
		s.offsets = append(s.offsets, p)
		p += h.size()
		next++
		prevHdr = h
		prev = &prevHdr
	}
}

// validRecordAt decodes and checks the record at offset p of b: its header
// and bounds, and with payloads also its payload checksum and zero padding.
func validRecordAt(b []byte, p int64, salt uint32, payloads bool) (recHeader, bool) {
	if p < 0 || p+recHeaderSize > int64(len(b)) {
		return recHeader{}, false
	}
	h, ok := decodeRecHeader(b[p:], salt)
	if !ok {
		return h, false
	}
	size := h.size()
	if size > int64(len(b))-p {
		return h, false
	}
	if !payloads {
		return h, true
	}
	payloadEnd := p + recHeaderSize + int64(h.dataLen) + int64(h.extLen)
	data := b[p+recHeaderSize : p+recHeaderSize+int64(h.dataLen)]
	ext := b[p+recHeaderSize+int64(h.dataLen) : payloadEnd]
	if payloadCRC(data, ext) != h.dataCRC {
		return h, false
	}
	for _, c := range b[payloadEnd : p+size] {
		if c != 0 {
			return h, false
		}
	}
	return h, true
}

// classify sets s.state for the bytes of b from offset p on, where the
// record with index e was expected and prev (nil if none in this segment)
// is the last valid record.
func (s *segScan) classify(b []byte, p int64, e uint64, salt uint32, prev *recHeader) {
	if allZero(b[min(p, int64(len(b))):]) {
		s.state = tailClean
		return
	}
	// The failed record at p belongs to a batch that starts at e or, if
	// prev did not end its batch, to prev's batch.
	okFirst := func(first uint64) bool {
		return first == e || (prev != nil && prev.flags&flagBatchEnd == 0 && first == prev.batchFirst())
	}
	s.state, s.why = tailTorn, fmt.Sprintf("damaged record at offset %d (index %d expected)", p, e)
	for q := p + recAlign; q+recHeaderSize <= int64(len(b)); {
		if b[q+8] != recMagic {
			q += recAlign
			continue
		}
		h, ok := validRecordAt(b, q, salt, true)
		if !ok {
			q += recAlign
			continue
		}
		if h.index <= e || !okFirst(h.batchFirst()) {
			s.state = tailCorrupt
			s.why = fmt.Sprintf("damaged record at offset %d (index %d expected) is followed by a valid record of another batch (index %d, batch from %d) at offset %d",
				p, e, h.index, h.batchFirst(), q)
			return
		}
		q += h.size()
	}
}

// allZero reports whether b holds only zero bytes.
func allZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
