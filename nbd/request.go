package nbd

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"
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
	if len(b) < requestHeaderLen {
		return request{}, protoErrorf("short request header (%d bytes)", len(b))
	}
	if m := binary.BigEndian.Uint32(b[0:]); m != magicRequest {
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
func (r request) hasPayload() bool { return r.typ == cmdWrite }

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
	if s.flags&tfSendFUA != 0 {
		allowed |= cfFUA // valid on every command once negotiated
	}
	readOnly := s.flags&tfReadOnly != 0
	switch r.typ {
	case cmdRead:
		if s.structured {
			allowed |= cfDF
		}
	case cmdWrite:
		if readOnly {
			return reject(errPerm, "export is read-only")
		}
	case cmdFlush, cmdDisc:
	case cmdTrim:
		if readOnly {
			return reject(errPerm, "export is read-only")
		}
		if s.flags&tfSendTrim == 0 {
			return reject(errInval, "TRIM was not negotiated")
		}
	case cmdCache:
	case cmdWriteZeroes:
		if readOnly {
			return reject(errPerm, "export is read-only")
		}
		allowed |= cfNoHole
		if s.flags&tfSendFastZero != 0 {
			allowed |= cfFastZero
		}
	case cmdBlockStatus:
		if !s.metaBase {
			return reject(errInval, "BLOCK_STATUS without a negotiated metadata context")
		}
		allowed |= cfReqOne
	default:
		return reject(errInval, "unknown command %d", r.typ)
	}
	if bad := r.flags &^ allowed; bad != 0 {
		return reject(errInval, "flags %#x not valid for %s", bad, commandName(r.typ))
	}

	switch r.typ {
	case cmdFlush:
		if r.off != 0 || r.length != 0 {
			return reject(errInval, "FLUSH with nonzero offset or length")
		}
		return nil
	case cmdDisc:
		return nil
	case cmdRead, cmdWrite:
		if r.length > MaxPayload {
			return reject(errInval, "%s of %d bytes exceeds the maximum of %d", commandName(r.typ), r.length, MaxPayload)
		}
	case cmdBlockStatus:
		if r.length == 0 {
			return reject(errInval, "BLOCK_STATUS of zero length")
		}
	}
	if size < 0 || r.off > math.MaxInt64 || int64(r.off) > size || int64(r.length) > size-int64(r.off) {
		// The spec: ENOSPC for writes past the end, EINVAL for reads and
		// trims.
		switch r.typ {
		case cmdWrite, cmdWriteZeroes:
			return reject(errNoSpc, "%s at %d+%d past the end of the export (%d bytes)", commandName(r.typ), r.off, r.length, size)
		default:
			return reject(errInval, "%s at %d+%d past the end of the export (%d bytes)", commandName(r.typ), r.off, r.length, size)
		}
	}
	return nil
}
