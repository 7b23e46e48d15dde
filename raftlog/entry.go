package raftlog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// Op kinds in a log entry. Every op sets a range of the volume to a value
// given in full by the op, so applying an op twice, or applying ops over a
// copy of the volume taken at any later point, gives the same result: the
// property catch-up and retries rely on (docs/replication.md).
const (
	opWrite uint8 = 1 // write data at off
	opZero  uint8 = 2 // make [off, off+n) read as zeroes
	opGrow  uint8 = 3 // grow the volume to off bytes
	// opFence makes epoch the volume's writer from generation off on:
	// later writes and zeroes of any other epoch are refused (epoch 0:
	// every writer is accepted). A fence of a generation not above the
	// current one changes nothing, so fences replayed or delayed never
	// undo a newer one.
	opFence uint8 = 4
	// opChecksum hashes n ranges of ChecksumRange bytes from range off
	// when applied: every replica hashes its file at the same log index
	// (pinned.go). It changes nothing.
	opChecksum uint8 = 5
)

// Op flags.
const (
	flagPunch uint8 = 1 << 0 // opZero: deallocate the range if possible
)

const (
	entryVersion   = 3
	entryVersionV2 = 2  // before writer epochs: ops decode with epoch 0
	entryHeader    = 5  // version u8, op count u32
	opHeader       = 30 // kind u8, flags u8, off u64, len u32, id u64, epoch u64
	opHeaderV2     = 22 // the same without epoch
)

// errBadEntry reports a log entry that cannot be decoded: the log is
// corrupt or was written by an incompatible version.
var errBadEntry = errors.New("raftlog: malformed log entry")

// op is one mutation of the volume.
type op struct {
	kind  uint8
	flags uint8
	off   int64
	n     int64  // length for write and zero; unused for grow
	data  []byte // opWrite only; len(data) == n
	// id identifies the request the op comes from (0: none). A request
	// sent again after a leader change keeps its id, and the FSM applies an
	// id only once (see fsm.seen).
	id uint64
	// epoch is the writer epoch the request was sent under (0: none); for
	// opFence, the epoch that becomes the volume's writer.
	epoch uint64
}

// encodedLen is the number of bytes op takes in an entry.
func (o *op) encodedLen() int { return opHeader + len(o.data) }

// allocates reports whether applying o may take disk space: a write, or
// zeroes that must not leave a hole.
func (o *op) allocates() bool {
	return o.kind == opWrite || (o.kind == opZero && o.flags&flagPunch == 0)
}

// encodeEntry returns the encoding of ops in a new slice. bytes.Join
// allocates it without zeroing it first, and then fills it: an entry is up
// to MaxEntryBytes, so clearing it before the copy would cost a pass over
// the data on the leader's write path.
func encodeEntry(ops []*op) []byte {
	hdrs := make([]byte, 0, entryHeader+opHeader*len(ops))
	hdrs = append(hdrs, entryVersion)
	hdrs = binary.BigEndian.AppendUint32(hdrs, uint32(len(ops)))
	if len(ops) == 0 {
		return hdrs
	}
	parts := make([][]byte, 0, 2*len(ops))
	start := 0 // the first op's part carries the entry header too
	for _, o := range ops {
		hdrs = append(hdrs, o.kind, o.flags)
		hdrs = binary.BigEndian.AppendUint64(hdrs, uint64(o.off))
		hdrs = binary.BigEndian.AppendUint32(hdrs, uint32(o.n))
		hdrs = binary.BigEndian.AppendUint64(hdrs, o.id)
		hdrs = binary.BigEndian.AppendUint64(hdrs, o.epoch)
		parts = append(parts, hdrs[start:], o.data)
		start = len(hdrs)
	}
	return bytes.Join(parts, nil)
}

// decodeEntry calls fn for each op in b, in order. The data slices alias b.
// Entries of the previous version (no epochs) decode with epoch 0.
func decodeEntry(b []byte, fn func(op) error) error {
	if len(b) < entryHeader || (b[0] != entryVersion && b[0] != entryVersionV2) {
		return fmt.Errorf("%w: header", errBadEntry)
	}
	hdr := opHeader
	if b[0] == entryVersionV2 {
		hdr = opHeaderV2
	}
	count := binary.BigEndian.Uint32(b[1:])
	b = b[entryHeader:]
	for i := uint32(0); i < count; i++ {
		if len(b) < hdr {
			return fmt.Errorf("%w: op %d truncated", errBadEntry, i)
		}
		o := op{kind: b[0], flags: b[1], off: int64(binary.BigEndian.Uint64(b[2:])), n: int64(binary.BigEndian.Uint32(b[10:])), id: binary.BigEndian.Uint64(b[14:])}
		if hdr == opHeader {
			o.epoch = binary.BigEndian.Uint64(b[22:])
		}
		b = b[hdr:]
		if o.off < 0 {
			return fmt.Errorf("%w: op %d offset", errBadEntry, i)
		}
		switch o.kind {
		case opWrite:
			if int64(len(b)) < o.n {
				return fmt.Errorf("%w: op %d data truncated", errBadEntry, i)
			}
			o.data, b = b[:o.n:o.n], b[o.n:]
		case opZero, opGrow, opFence:
		case opChecksum:
			if o.n < 1 || o.n > MaxPinnedRanges {
				return fmt.Errorf("%w: op %d checksum of %d ranges", errBadEntry, i, o.n)
			}
		default:
			return fmt.Errorf("%w: op %d kind %d", errBadEntry, i, o.kind)
		}
		if err := fn(o); err != nil {
			return err
		}
	}
	if len(b) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", errBadEntry, len(b))
	}
	return nil
}
