package nbd

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"

	"github.com/tandem-project/tandem/nbd/wire"
)

// request is one decoded transmission-phase request header.
type request struct {
	flags  uint16
	typ    uint16
	handle uint64
	off    uint64
	length uint32
	start  time.Time // when the header was read (for the Observer)
}

// decodeRequest decodes a 28-byte request header. A bad magic means the
// stream cannot be framed any more: the caller closes the connection.
func decodeRequest(b []byte) (request, error) {
	if len(b) < wire.RequestHeaderLen {
		return request{}, protoErrorf("short request header (%d bytes)", len(b))
	}
	if m := binary.BigEndian.Uint32(b[0:]); m != wire.MagicRequest {
		return request{}, protoErrorf("bad request magic %#x", m)
	}
	return request{
		flags:  binary.BigEndian.Uint16(b[4:]),
		typ:    binary.BigEndian.Uint16(b[6:]),
		handle: binary.BigEndian.Uint64(b[8:]),
		off:    binary.BigEndian.Uint64(b[16:]),
		length: binary.BigEndian.Uint32(b[24:]),
	}, nil
}

// hasPayload reports whether a WRITE payload follows the header on the wire.
// The payload must be consumed even when the request is refused.
func (r request) hasPayload() bool { return r.typ == wire.CmdWrite }

// rejection is why a request is refused before it reaches the backend.
type rejection struct {
	errno uint32
	msg   string
}

// check validates r against the negotiated session and the export size. It
// returns nil when the request may go to the backend. It is the one place
// where client input becomes NBD errors; the backend below sees only valid
// ranges and flags.
func (s *session) check(r request, size int64) *rejection {
	reject := func(errno uint32, format string, args ...any) *rejection {
		return &rejection{errno: errno, msg: fmt.Sprintf(format, args...)}
	}
	allowed := uint16(0)
	if s.flags&wire.TfSendFUA != 0 {
		allowed |= wire.CfFUA // valid on every command once negotiated
	}
	readOnly := s.flags&wire.TfReadOnly != 0
	switch r.typ {
	case wire.CmdRead:
		if s.structured {
			allowed |= wire.CfDF
		}
	case wire.CmdWrite:
		if readOnly {
			return reject(wire.ErrPerm, "export is read-only")
		}
	case wire.CmdFlush, wire.CmdDisc:
	case wire.CmdTrim:
		if readOnly {
			return reject(wire.ErrPerm, "export is read-only")
		}
		if s.flags&wire.TfSendTrim == 0 {
			return reject(wire.ErrInval, "TRIM was not negotiated")
		}
	case wire.CmdCache:
	case wire.CmdWriteZeroes:
		if readOnly {
			return reject(wire.ErrPerm, "export is read-only")
		}
		allowed |= wire.CfNoHole
		if s.flags&wire.TfSendFastZero != 0 {
			allowed |= wire.CfFastZero
		}
	case wire.CmdBlockStatus:
		if !s.metaBase {
			return reject(wire.ErrInval, "BLOCK_STATUS without a negotiated metadata context")
		}
		allowed |= wire.CfReqOne
	default:
		return reject(wire.ErrInval, "unknown command %d", r.typ)
	}
	if bad := r.flags &^ allowed; bad != 0 {
		return reject(wire.ErrInval, "flags %#x not valid for %s", bad, commandName(r.typ))
	}

	switch r.typ {
	case wire.CmdFlush:
		if r.off != 0 || r.length != 0 {
			return reject(wire.ErrInval, "FLUSH with nonzero offset or length")
		}
		return nil
	case wire.CmdDisc:
		return nil
	case wire.CmdRead, wire.CmdWrite:
		if r.length > MaxPayload {
			return reject(wire.ErrInval, "%s of %d bytes exceeds the maximum of %d", commandName(r.typ), r.length, MaxPayload)
		}
	case wire.CmdBlockStatus:
		if r.length == 0 {
			return reject(wire.ErrInval, "BLOCK_STATUS of zero length")
		}
	}
	if size < 0 || r.off > math.MaxInt64 || int64(r.off) > size || int64(r.length) > size-int64(r.off) {
		// The spec: ENOSPC for writes past the end, EINVAL for reads and
		// trims.
		switch r.typ {
		case wire.CmdWrite, wire.CmdWriteZeroes:
			return reject(wire.ErrNoSpc, "%s at %d+%d past the end of the export (%d bytes)", commandName(r.typ), r.off, r.length, size)
		default:
			return reject(wire.ErrInval, "%s at %d+%d past the end of the export (%d bytes)", commandName(r.typ), r.off, r.length, size)
		}
	}
	return nil
}
