package wal

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"time"

	"github.com/hashicorp/raft"
)

// On-disk format. doc.go describes it in prose; this file is the single
// definition. All integers are little endian.

const (
	// segHeaderSize is the size of the header at offset 0 of every segment.
	segHeaderSize = 32
	// recHeaderSize is the size of every record header.
	recHeaderSize = 48
	// recAlign is the alignment of every record start.
	recAlign = 8

	// recMagic marks a record header. It is non-zero so that zeroed
	// (preallocated) space never looks like a record.
	recMagic = 0xA7
	// flagBatchEnd marks the last record written by one StoreLogs call.
	flagBatchEnd = 1 << 0
	// knownFlags is the set of defined flag bits; others make a header invalid.
	knownFlags = flagBatchEnd

	formatVersion = 1

	// maxPayload bounds Data+Extensions of one record so that lengths fit
	// the header's uint32 fields with room for alignment.
	maxPayload = 1<<32 - 1 - recHeaderSize - recAlign

	metaSize = 32
)

var (
	segMagic  = [8]byte{'T', 'N', 'D', 'M', 'W', 'A', 'L', 'S'}
	metaMagic = [8]byte{'T', 'N', 'D', 'M', 'W', 'A', 'L', 'M'}
)

// castagnoli is the CRC32C table. It is built once per process by the
// standard library and never mutated.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// recHeader is the decoded form of a record header.
//
//	off size field
//	  0    4 hdrCRC   CRC32C of bytes 4..48, seeded with the segment's salt of this header
//	  4    4 dataCRC  CRC32C of Data || Extensions
//	  8    1 magic    0xA7
//	  9    1 type     raft.LogType
//	 10    2 flags    bit 0: last record of its StoreLogs batch
//	 12    4 batchOff Index minus the index of the first record of its batch
//	 16    8 index
//	 24    8 term
//	 32    8 appendedAt (Unix nanoseconds, 0 for the zero time)
//	 40    4 dataLen
//	 44    4 extLen
//
// The record's payload (Data then Extensions) follows the header, then zero
// padding up to the next multiple of 8 bytes.
type recHeader struct {
	dataCRC    uint32
	typ        uint8
	flags      uint16
	batchOff   uint32
	index      uint64
	term       uint64
	appendedAt int64
	dataLen    uint32
	extLen     uint32
}

// recSize returns the aligned on-disk size of a record with the given payload.
func recSize(payload uint64) int64 {
	return int64((recHeaderSize + payload + recAlign - 1) &^ (recAlign - 1))
}

func (h *recHeader) size() int64 { return recSize(uint64(h.dataLen) + uint64(h.extLen)) }

// batchFirst is the index of the first record of the batch h belongs to.
func (h *recHeader) batchFirst() uint64 { return h.index - uint64(h.batchOff) }

// encode writes h into b[:recHeaderSize], computing the header CRC seeded
// with the salt of the segment the record goes to.
func (h *recHeader) encode(b []byte, salt uint32) {
	_ = b[recHeaderSize-1]
	binary.LittleEndian.PutUint32(b[4:], h.dataCRC)
	b[8] = recMagic
	b[9] = h.typ
	binary.LittleEndian.PutUint16(b[10:], h.flags)
	binary.LittleEndian.PutUint32(b[12:], h.batchOff)
	binary.LittleEndian.PutUint64(b[16:], h.index)
	binary.LittleEndian.PutUint64(b[24:], h.term)
	binary.LittleEndian.PutUint64(b[32:], uint64(h.appendedAt))
	binary.LittleEndian.PutUint32(b[40:], h.dataLen)
	binary.LittleEndian.PutUint32(b[44:], h.extLen)
	binary.LittleEndian.PutUint32(b[0:], crc32.Update(salt, castagnoli, b[4:recHeaderSize]))
}

// decodeRecHeader checks and decodes a record header of a segment with the
// given salt. It returns false if b does not hold a valid header (wrong
// magic, unknown flags, bad CRC or another salt, impossible batch offset).
// It does not check the payload.
func decodeRecHeader(b []byte, salt uint32) (recHeader, bool) {
	var h recHeader
	if len(b) < recHeaderSize || b[8] != recMagic {
		return h, false
	}
	if binary.LittleEndian.Uint32(b[0:]) != crc32.Update(salt, castagnoli, b[4:recHeaderSize]) {
		return h, false
	}
	h.dataCRC = binary.LittleEndian.Uint32(b[4:])
	h.typ = b[9]
	h.flags = binary.LittleEndian.Uint16(b[10:])
	h.batchOff = binary.LittleEndian.Uint32(b[12:])
	h.index = binary.LittleEndian.Uint64(b[16:])
	h.term = binary.LittleEndian.Uint64(b[24:])
	h.appendedAt = int64(binary.LittleEndian.Uint64(b[32:]))
	h.dataLen = binary.LittleEndian.Uint32(b[40:])
	h.extLen = binary.LittleEndian.Uint32(b[44:])
	if h.flags&^knownFlags != 0 || h.index == 0 || uint64(h.batchOff) >= h.index {
		return h, false
	}
	if uint64(h.dataLen)+uint64(h.extLen) > maxPayload {
		return h, false
	}
	return h, true
}

// payloadCRC computes the CRC32C of data || ext.
func payloadCRC(data, ext []byte) uint32 {
	return crc32.Update(crc32.Checksum(data, castagnoli), castagnoli, ext)
}

// decodeRecord checks a whole record held in b (header, payload, padding)
// of a segment with the given salt and fills out. Data and Extensions alias b.
func decodeRecord(b []byte, salt uint32, out *raft.Log) (recHeader, error) {
	h, ok := decodeRecHeader(b, salt)
	if !ok {
		return h, fmt.Errorf("%w: invalid record header", ErrCorrupt)
	}
	end := recHeaderSize + int64(h.dataLen) + int64(h.extLen)
	if int64(len(b)) < end {
		return h, fmt.Errorf("%w: record %d truncated", ErrCorrupt, h.index)
	}
	data := b[recHeaderSize : recHeaderSize+int64(h.dataLen) : recHeaderSize+int64(h.dataLen)]
	ext := b[recHeaderSize+int64(h.dataLen) : end : end]
	if payloadCRC(data, ext) != h.dataCRC {
		return h, fmt.Errorf("%w: record %d payload checksum mismatch", ErrCorrupt, h.index)
	}
	out.Index = h.index
	out.Term = h.term
	out.Type = raft.LogType(h.typ)
	out.Data = nil
	if len(data) > 0 {
		out.Data = data
	}
	out.Extensions = nil
	if len(ext) > 0 {
		out.Extensions = ext
	}
	out.AppendedAt = decodeTime(h.appendedAt)
	return h, nil
}

// encodeTime maps the zero time to 0 and other times to Unix nanoseconds.
// Times outside the range of int64 nanoseconds (years 1678..2262) are not
// representable and are clamped by time.Time.UnixNano's own rules.
func encodeTime(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func decodeTime(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// encodeSegHeader writes the segment header for a segment whose first
// record has index base and whose records are sealed with salt.
//
//	off size field
//	  0    8 magic "TNDMWALS"
//	  8    4 format version (1)
//	 12    4 salt
//	 16    8 base index
//	 24    4 reserved (0)
//	 28    4 CRC32C of bytes 0..28
func encodeSegHeader(b []byte, base uint64, salt uint32) {
	_ = b[segHeaderSize-1]
	copy(b[0:8], segMagic[:])
	binary.LittleEndian.PutUint32(b[8:], formatVersion)
	binary.LittleEndian.PutUint32(b[12:], salt)
	binary.LittleEndian.PutUint64(b[16:], base)
	binary.LittleEndian.PutUint32(b[24:], 0)
	binary.LittleEndian.PutUint32(b[28:], crc32.Checksum(b[:28], castagnoli))
}

// decodeSegHeader returns the base index and salt of a valid segment header.
func decodeSegHeader(b []byte) (base uint64, salt uint32, ok bool) {
	if len(b) < segHeaderSize || [8]byte(b[0:8]) != segMagic {
		return 0, 0, false
	}
	if binary.LittleEndian.Uint32(b[28:]) != crc32.Checksum(b[:28], castagnoli) {
		return 0, 0, false
	}
	if binary.LittleEndian.Uint32(b[8:]) != formatVersion || binary.LittleEndian.Uint32(b[24:]) != 0 {
		return 0, 0, false
	}
	base = binary.LittleEndian.Uint64(b[16:])
	return base, binary.LittleEndian.Uint32(b[12:]), base != 0
}

// encodeMeta encodes the meta file, which holds the durable lower bound of
// the log: entries with an index below first are deleted.
//
//	off size field
//	  0    8 magic "TNDMWALM"
//	  8    4 format version (1)
//	 12    4 reserved (0)
//	 16    8 first
//	 24    4 reserved (0)
//	 28    4 CRC32C of bytes 0..28
func encodeMeta(first uint64) []byte {
	b := make([]byte, metaSize)
	copy(b[0:8], metaMagic[:])
	binary.LittleEndian.PutUint32(b[8:], formatVersion)
	binary.LittleEndian.PutUint64(b[16:], first)
	binary.LittleEndian.PutUint32(b[28:], crc32.Checksum(b[:28], castagnoli))
	return b
}

func decodeMeta(b []byte) (uint64, error) {
	if len(b) != metaSize || [8]byte(b[0:8]) != metaMagic ||
		binary.LittleEndian.Uint32(b[28:]) != crc32.Checksum(b[:28], castagnoli) {
		return 0, fmt.Errorf("%w: invalid meta file", ErrCorrupt)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != formatVersion {
		return 0, fmt.Errorf("%w: meta file has unknown format version %d", ErrCorrupt, v)
	}
	return binary.LittleEndian.Uint64(b[16:]), nil
}

// segName is the file name of the segment whose first record has index base
// and whose records are sealed with salt. The name is made durable (rename,
// directory fsync) before any record is written, so recovery knows both even
// when the segment header itself was torn.
func segName(base uint64, salt uint32) string { return fmt.Sprintf("%020d-%08x.seg", base, salt) }

// parseSegName parses a name produced by segName.
func parseSegName(name string) (base uint64, salt uint32, ok bool) {
	if len(name) != 33 || name[20] != '-' || name[29:] != ".seg" {
		return 0, 0, false
	}
	for _, c := range name[:20] {
		if c < '0' || c > '9' {
			return 0, 0, false
		}
		d := uint64(c - '0')
		if base > (1<<64-1-d)/10 {
			return 0, 0, false
		}
		base = base*10 + d
	}
	for _, c := range name[21:29] {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = byte(c - '0')
		case c >= 'a' && c <= 'f':
			d = byte(c-'a') + 10
		default:
			return 0, 0, false
		}
		salt = salt<<4 | uint32(d)
	}
	return base, salt, base != 0
}
