package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"

	"github.com/tandem-project/tandem/nbd/wire"
)

// maxOptionLen bounds the data of one option. Longer options are discarded
// (bounded memory) and answered NBD_REP_ERR_TOO_BIG.
const maxOptionLen = 64 << 10

// maxStringLen is the protocol's bound on export names and query strings.
const maxStringLen = 4096

// metaContextID is the id the server gives base:allocation.
const metaContextID = 1

// errAborted ends a handshake the client gave up with NBD_OPT_ABORT.
var errAborted = errors.New("nbd: client aborted the handshake")

// session is what a successful handshake hands to the transmission phase.
type session struct {
	conn       net.Conn
	r          *bufio.Reader
	export     Export
	requested  string // the export name the client asked for
	flags      uint16 // transmission flags sent to the client
	structured bool   // structured replies negotiated
	metaBase   bool   // base:allocation selected for this export
}

// handshake runs the fixed-newstyle negotiation on one connection.
type handshake struct {
	srv  *Server
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer

	noZeroes   bool
	structured bool
	tlsDone    bool
	// Metadata contexts selected by NBD_OPT_SET_META_CONTEXT, valid only
	// for the export they were selected for.
	metaSet    bool
	metaExport string
	metaBase   bool
}

// protocolError reports client input the server cannot go on from; the
// connection is closed.
type protocolError struct{ msg string }

func (e *protocolError) Error() string { return "nbd: protocol error: " + e.msg }

func protoErrorf(format string, args ...any) error {
	return &protocolError{msg: fmt.Sprintf(format, args...)}
}

func (h *handshake) run(ctx context.Context) (*session, error) {
	var greet [18]byte
	binary.BigEndian.PutUint64(greet[0:], wire.MagicNBD)
	binary.BigEndian.PutUint64(greet[8:], wire.MagicOption)
	binary.BigEndian.PutUint16(greet[16:], wire.FlagFixedNew|wire.FlagNoZeroes)
	if _, err := h.w.Write(greet[:]); err != nil {
		return nil, err
	}
	if err := h.w.Flush(); err != nil {
		return nil, err
	}
	var cf [4]byte
	if _, err := io.ReadFull(h.r, cf[:]); err != nil {
		return nil, fmt.Errorf("nbd: reading client flags: %w", err)
	}
	clientFlags := binary.BigEndian.Uint32(cf[:])
	if clientFlags&^wire.KnownClientFlag != 0 {
		return nil, protoErrorf("unknown client flags %#x", clientFlags)
	}
	h.noZeroes = clientFlags&wire.ClientNoZeroes != 0

	for {
		var hdr [16]byte
		if _, err := io.ReadFull(h.r, hdr[:]); err != nil {
			return nil, fmt.Errorf("nbd: reading option header: %w", err)
		}
		if m := binary.BigEndian.Uint64(hdr[0:]); m != wire.MagicOption {
			return nil, protoErrorf("bad option magic %#x", m)
		}
		opt := binary.BigEndian.Uint32(hdr[8:])
		length := binary.BigEndian.Uint32(hdr[12:])

		if length > maxOptionLen {
			if opt == wire.OptExportName {
				return nil, protoErrorf("NBD_OPT_EXPORT_NAME of %d bytes", length)
			}
			if _, err := io.CopyN(io.Discard, h.r, int64(length)); err != nil {
				return nil, fmt.Errorf("nbd: discarding option data: %w", err)
			}
			if err := h.reply(opt, wire.RepErrTooBig, fmt.Appendf(nil, "option data of %d bytes is too large", length)); err != nil {
				return nil, err
			}
			continue
		}
		data := make([]byte, length)
		if _, err := io.ReadFull(h.r, data); err != nil {
			return nil, fmt.Errorf("nbd: reading option data: %w", err)
		}

		if h.srv.cfg.TLS != nil && h.srv.cfg.TLSRequired && !h.tlsDone && opt != wire.OptStartTLS && opt != wire.OptAbort {
			if opt == wire.OptExportName {
				return nil, protoErrorf("NBD_OPT_EXPORT_NAME before TLS on a server that requires TLS")
			}
			if err := h.reply(opt, wire.RepErrTLSReqd, []byte("TLS is required: send NBD_OPT_STARTTLS first")); err != nil {
				return nil, err
			}
			continue
		}
		if h.srv.shuttingDown() && opt != wire.OptAbort {
			if opt == wire.OptExportName {
				return nil, errors.New("nbd: server shutting down")
			}
			if err := h.reply(opt, wire.RepErrShutdown, []byte("server is shutting down")); err != nil {
				return nil, err
			}
			continue
		}

		s, err := h.option(ctx, opt, data)
		if s != nil || err != nil {
			return s, err
		}
	}
}

// option handles one option. It returns a session when the client entered
// the transmission phase, an error when the connection must close, and
// (nil, nil) when haggling goes on.
func (h *handshake) option(ctx context.Context, opt uint32, data []byte) (*session, error) {
	switch opt {
	case wire.OptExportName:
		return h.exportName(string(data))
	case wire.OptAbort:
		// The client may already have closed; a failed ack is fine.
		_ = h.reply(opt, wire.RepAck, nil)
		return nil, errAborted
	case wire.OptList:
		if len(data) != 0 {
			return nil, h.reply(opt, wire.RepErrInvalid, []byte("NBD_OPT_LIST takes no data"))
		}
		for _, name := range h.srv.exports.List() {
			// The name, then a description for humans.
			p := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
			p = append(p, name...)
			if exp, err := h.srv.exports.Lookup(name); err == nil {
				p = append(p, exp.Description...)
			}
			if err := h.reply(opt, wire.RepServer, p); err != nil {
				return nil, err
			}
		}
		return nil, h.reply(opt, wire.RepAck, nil)
	case wire.OptStartTLS:
		return nil, h.startTLS(ctx, data)
	case wire.OptInfo, wire.OptGo:
		return h.infoGo(opt, data)
	case wire.OptStructuredReply:
		if len(data) != 0 {
			return nil, h.reply(opt, wire.RepErrInvalid, []byte("NBD_OPT_STRUCTURED_REPLY takes no data"))
		}
		h.structured = true
		return nil, h.reply(opt, wire.RepAck, nil)
	case wire.OptListMetaContext, wire.OptSetMetaContext:
		return nil, h.metaContext(opt, data)
	default:
		return nil, h.reply(opt, wire.RepErrUnsup, fmt.Appendf(nil, "option %d is not supported", opt))
	}
}

func (h *handshake) exportName(name string) (*session, error) {
	exp, err := h.srv.exports.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("nbd: NBD_OPT_EXPORT_NAME %q: %w", name, err)
	}
	flags := h.transmissionFlags(exp)
	b := binary.BigEndian.AppendUint64(nil, uint64(exp.Backend.Size()))
	b = binary.BigEndian.AppendUint16(b, flags)
	if !h.noZeroes {
		b = append(b, make([]byte, 124)...)
	}
	if _, err := h.w.Write(b); err != nil {
		return nil, err
	}
	if err := h.w.Flush(); err != nil {
		return nil, err
	}
	return h.session(name, exp, flags), nil
}

func (h *handshake) session(name string, exp Export, flags uint16) *session {
	return &session{
		conn:       h.conn,
		r:          h.r,
		export:     exp,
		requested:  name,
		flags:      flags,
		structured: h.structured,
		metaBase:   h.structured && h.metaSet && h.metaBase && h.metaExport == name,
	}
}

// transmissionFlags derives the flags advertised for exp from its backend's
// capabilities and what has been negotiated so far.
func (h *handshake) transmissionFlags(exp Export) uint16 {
	caps := exp.Backend.Caps()
	f := wire.TfHasFlags | wire.TfSendFlush | wire.TfSendCache
	if caps.ReadOnly {
		f |= wire.TfReadOnly
	} else {
		f |= wire.TfSendFUA | wire.TfSendZeroes | wire.TfSendFastZero
		if caps.Trim {
			f |= wire.TfSendTrim
		}
	}
	if caps.MultiConn {
		f |= wire.TfCanMultiConn
	}
	if h.structured {
		f |= wire.TfSendDF
	}
	return f
}

func (h *handshake) infoGo(opt uint32, data []byte) (*session, error) {
	if len(data) < 6 {
		return nil, h.reply(opt, wire.RepErrInvalid, []byte("option data too short"))
	}
	nameLen := binary.BigEndian.Uint32(data)
	if uint64(nameLen) > uint64(len(data)-6) {
		return nil, h.reply(opt, wire.RepErrInvalid, []byte("export name length exceeds option data"))
	}
	name := string(data[4 : 4+nameLen])
	rest := data[4+nameLen:]
	n := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*n {
		return nil, h.reply(opt, wire.RepErrInvalid, fmt.Appendf(nil, "%d information requests do not match %d bytes", n, len(rest)))
	}
	exp, err := h.srv.exports.Lookup(name)
	if err != nil {
		return nil, h.reply(opt, wire.RepErrUnknown, fmt.Appendf(nil, "export %q not found", name))
	}
	flags := h.transmissionFlags(exp)
	info := binary.BigEndian.AppendUint16(nil, wire.InfoExport)
	info = binary.BigEndian.AppendUint64(info, uint64(exp.Backend.Size()))
	info = binary.BigEndian.AppendUint16(info, flags)
	if err := h.reply(opt, wire.RepInfo, info); err != nil {
		return nil, err
	}
	var sent []uint16
	for i := range n {
		typ := binary.BigEndian.Uint16(rest[2*i:])
		if slices.Contains(sent, typ) {
			continue
		}
		sent = append(sent, typ)
		var p []byte
		switch typ {
		case wire.InfoName:
			p = append(binary.BigEndian.AppendUint16(nil, wire.InfoName), exp.Name...)
		case wire.InfoDescription:
			if exp.Description == "" {
				continue
			}
			p = append(binary.BigEndian.AppendUint16(nil, wire.InfoDescription), exp.Description...)
		case wire.InfoBlockSize:
			p = binary.BigEndian.AppendUint16(nil, wire.InfoBlockSize)
			p = binary.BigEndian.AppendUint32(p, minBlockSize)
			p = binary.BigEndian.AppendUint32(p, preferredBlockSize)
			p = binary.BigEndian.AppendUint32(p, MaxPayload)
		default:
			continue // unknown requests are ignored, as the spec says
		}
		if err := h.reply(opt, wire.RepInfo, p); err != nil {
			return nil, err
		}
	}
	if err := h.reply(opt, wire.RepAck, nil); err != nil {
		return nil, err
	}
	if opt == wire.OptInfo {
		return nil, nil
	}
	return h.session(name, exp, flags), nil
}

// metaContext answers NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT.
// The only context is base:allocation.
func (h *handshake) metaContext(opt uint32, data []byte) error {
	if !h.structured {
		return h.reply(opt, wire.RepErrInvalid, []byte("structured replies must be negotiated first"))
	}
	name, queries, ok := parseMetaContext(data)
	if !ok {
		return h.reply(opt, wire.RepErrInvalid, []byte("malformed metadata context request"))
	}
	if _, err := h.srv.exports.Lookup(name); err != nil {
		return h.reply(opt, wire.RepErrUnknown, fmt.Appendf(nil, "export %q not found", name))
	}
	base := false
	switch {
	case opt == wire.OptListMetaContext && len(queries) == 0:
		base = true
	default:
		for _, q := range queries {
			if q == wire.MetaContextBase || (opt == wire.OptListMetaContext && q == "base:") {
				base = true
			}
		}
	}
	if opt == wire.OptSetMetaContext {
		h.metaSet, h.metaExport, h.metaBase = true, name, base
	}
	if base {
		id := uint32(0) // reserved for LIST replies
		if opt == wire.OptSetMetaContext {
			id = metaContextID
		}
		p := binary.BigEndian.AppendUint32(nil, id)
		if err := h.reply(opt, wire.RepMetaContext, append(p, wire.MetaContextBase...)); err != nil {
			return err
		}
	}
	return h.reply(opt, wire.RepAck, nil)
}

// parseMetaContext splits the data of a metadata context option into the
// export name and the queries.
func parseMetaContext(data []byte) (name string, queries []string, ok bool) {
	str := func() (string, bool) {
		if len(data) < 4 {
			return "", false
		}
		n := binary.BigEndian.Uint32(data)
		if n > maxStringLen || uint64(n) > uint64(len(data)-4) {
			return "", false
		}
		s := string(data[4 : 4+n])
		data = data[4+n:]
		return s, true
	}
	if name, ok = str(); !ok {
		return "", nil, false
	}
	if len(data) < 4 {
		return "", nil, false
	}
	count := binary.BigEndian.Uint32(data)
	data = data[4:]
	if uint64(count)*4 > uint64(len(data)) {
		return "", nil, false
	}
	for range count {
		q, ok := str()
		if !ok {
			return "", nil, false
		}
		queries = append(queries, q)
	}
	if len(data) != 0 {
		return "", nil, false
	}
	return name, queries, true
}

func (h *handshake) startTLS(ctx context.Context, data []byte) error {
	switch {
	case len(data) != 0:
		return h.reply(wire.OptStartTLS, wire.RepErrInvalid, []byte("NBD_OPT_STARTTLS takes no data"))
	case h.srv.cfg.TLS == nil:
		return h.reply(wire.OptStartTLS, wire.RepErrUnsup, []byte("TLS is not configured on this server"))
	case h.tlsDone:
		return h.reply(wire.OptStartTLS, wire.RepErrInvalid, []byte("TLS is already active"))
	}
	if err := h.reply(wire.OptStartTLS, wire.RepAck, nil); err != nil {
		return err
	}
	if h.r.Buffered() != 0 {
		return protoErrorf("data sent after NBD_OPT_STARTTLS before the TLS handshake")
	}
	tc := tls.Server(h.conn, h.srv.cfg.TLS)
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("nbd: TLS handshake: %w", err)
	}
	h.conn = tc
	h.r = bufio.NewReaderSize(tc, readBufferSize)
	h.w = bufio.NewWriterSize(tc, handshakeWriteBuffer)
	h.tlsDone = true
	// Nothing negotiated in the clear carries over into the TLS session.
	h.structured, h.metaSet, h.metaBase, h.metaExport = false, false, false, ""
	return nil
}

// reply sends one option reply and flushes it.
func (h *handshake) reply(opt, typ uint32, data []byte) error {
	var hdr [20]byte
	binary.BigEndian.PutUint64(hdr[0:], wire.MagicOptReply)
	binary.BigEndian.PutUint32(hdr[8:], opt)
	binary.BigEndian.PutUint32(hdr[12:], typ)
	binary.BigEndian.PutUint32(hdr[16:], uint32(len(data)))
	if _, err := h.w.Write(hdr[:]); err != nil {
		return err
	}
	if _, err := h.w.Write(data); err != nil {
		return err
	}
	return h.w.Flush()
}
