// Package nbdclient is a small NBD client: fixed-newstyle handshake with
// NBD_OPT_GO, structured replies and metadata contexts, and a transmission
// phase that lets many goroutines issue requests on one connection at once,
// with replies matched by handle.
//
// Tandem uses it where it talks NBD to another server: an agent forwarding
// a volume's I/O to the leader's agent, the benchmark's load generator, and
// tests. It needs no kernel NBD device.
package nbdclient

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"sync"
	"time"

	"github.com/tandem-project/tandem/nbd/wire"
)

// Transmission flags reported by Conn.Flags.
const (
	FlagHasFlags     = wire.TfHasFlags
	FlagReadOnly     = wire.TfReadOnly
	FlagSendFlush    = wire.TfSendFlush
	FlagSendFUA      = wire.TfSendFUA
	FlagSendTrim     = wire.TfSendTrim
	FlagSendZeroes   = wire.TfSendZeroes
	FlagSendDF       = wire.TfSendDF
	FlagCanMultiConn = wire.TfCanMultiConn
	FlagSendCache    = wire.TfSendCache
	FlagSendFastZero = wire.TfSendFastZero
)

// Command flags accepted by the request methods.
const (
	CmdFlagFUA      = wire.CfFUA
	CmdFlagNoHole   = wire.CfNoHole
	CmdFlagDF       = wire.CfDF
	CmdFlagReqOne   = wire.CfReqOne
	CmdFlagFastZero = wire.CfFastZero
)

// MetaContextBase is the base:allocation metadata context.
const MetaContextBase = wire.MetaContextBase

// Options configure Dial and Handshake.
type Options struct {
	// Export is the export name; "" asks for the server's default export.
	Export string
	// NoStructured turns off structured replies (on by default).
	NoStructured bool
	// MetaContexts are selected with NBD_OPT_SET_META_CONTEXT (requires
	// structured replies). Use MetaContextBase for BlockStatus.
	MetaContexts []string
	// TLS, when set, upgrades the connection with NBD_OPT_STARTTLS first.
	TLS *tls.Config
}

// Error is an error reply from the server.
type Error struct {
	Errno   uint32 // NBD error value, e.g. 28 for ENOSPC
	Message string // from a structured error chunk, if any
}

func (e *Error) Error() string {
	if e.Message != "" {
		return fmt.Sprintf("nbd: server error %d: %s", e.Errno, e.Message)
	}
	return fmt.Sprintf("nbd: server error %d", e.Errno)
}

// OptionError is an error reply to an option during the handshake.
type OptionError struct {
	Option  uint32
	Reply   uint32 // the NBD_REP_ERR_* value
	Message string
}

func (e *OptionError) Error() string {
	return fmt.Sprintf("nbd: option %d refused (reply %#x): %s", e.Option, e.Reply, e.Message)
}

// ErrClosed is returned by requests on a closed or broken connection.
var ErrClosed = errors.New("nbd: connection closed")

// Extent is one block status descriptor.
type Extent struct {
	Length uint32
	Flags  uint32
}

// Conn is one NBD connection in the transmission phase. Its methods are
// safe for concurrent use.
type Conn struct {
	nc          net.Conn
	size        int64
	flags       uint16
	structured  bool
	contexts    map[string]uint32
	name        string
	description string
	minBlock    uint32
	prefBlock   uint32
	maxBlock    uint32

	wmu sync.Mutex // serializes request writes
	w   *bufio.Writer

	mu      sync.Mutex
	next    uint64
	pending map[uint64]*call
	err     error // set once the connection broke
	done    chan struct{}
}

// call is one request waiting for its reply.
type call struct {
	typ  uint16
	off  uint64
	buf  []byte // READ destination
	ext  []Extent
	err  error
	mu   sync.Mutex // guards buf against an abandoning caller
	gone bool       // the caller stopped waiting; drop the data
	done chan struct{}
}

// Dial connects to addr ("host:port" for tcp, a path for unix) and performs
// the handshake.
func Dial(ctx context.Context, network, addr string, opts Options) (*Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: dial %s: %w", addr, err)
	}
	c, err := Handshake(ctx, nc, opts)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// Handshake negotiates on an established connection and starts the reply
// reader. The connection belongs to the returned Conn.
func Handshake(ctx context.Context, nc net.Conn, opts Options) (*Conn, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	} else {
		_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
	}
	h := &handshake{nc: nc, r: bufio.NewReader(nc), w: bufio.NewWriter(nc)}
	c, err := h.run(ctx, opts)
	if err != nil {
		return nil, err
	}
	_ = c.nc.SetDeadline(time.Time{})
	go c.readLoop(h.r)
	return c, nil
}

// Size returns the export size in bytes.
func (c *Conn) Size() int64 { return c.size }

// Flags returns the transmission flags the server sent.
func (c *Conn) Flags() uint16 { return c.flags }

// Structured reports whether structured replies were negotiated.
func (c *Conn) Structured() bool { return c.structured }

// MetaContext returns the id the server gave a selected metadata context.
func (c *Conn) MetaContext(name string) (uint32, bool) {
	id, ok := c.contexts[name]
	return id, ok
}

// Name and Description return what the server sent with NBD_INFO_NAME and
// NBD_INFO_DESCRIPTION ("" if nothing).
func (c *Conn) Name() string        { return c.name }
func (c *Conn) Description() string { return c.description }

// BlockSizes returns the server's minimum, preferred and maximum block size
// (zero if it did not send them).
func (c *Conn) BlockSizes() (min, preferred, max uint32) {
	return c.minBlock, c.prefBlock, c.maxBlock
}

// ReadAt reads len(p) bytes at off.
func (c *Conn) ReadAt(ctx context.Context, p []byte, off int64, flags uint16) error {
	return c.do(ctx, wire.CmdRead, flags, uint64(off), uint32(len(p)), nil, p, nil)
}

// WriteAt writes p at off.
func (c *Conn) WriteAt(ctx context.Context, p []byte, off int64, flags uint16) error {
	return c.do(ctx, wire.CmdWrite, flags, uint64(off), uint32(len(p)), p, nil, nil)
}

// Flush asks the server to persist every completed write.
func (c *Conn) Flush(ctx context.Context) error {
	return c.do(ctx, wire.CmdFlush, 0, 0, 0, nil, nil, nil)
}

// Trim discards [off, off+n).
func (c *Conn) Trim(ctx context.Context, off int64, n uint32, flags uint16) error {
	return c.do(ctx, wire.CmdTrim, flags, uint64(off), n, nil, nil, nil)
}

// Zero writes zeroes over [off, off+n).
func (c *Conn) Zero(ctx context.Context, off int64, n uint32, flags uint16) error {
	return c.do(ctx, wire.CmdWriteZeroes, flags, uint64(off), n, nil, nil, nil)
}

// Cache asks the server to prefetch [off, off+n).
func (c *Conn) Cache(ctx context.Context, off int64, n uint32) error {
	return c.do(ctx, wire.CmdCache, 0, uint64(off), n, nil, nil, nil)
}

// BlockStatus returns the base:allocation extents of [off, off+n).
func (c *Conn) BlockStatus(ctx context.Context, off int64, n uint32, flags uint16) ([]Extent, error) {
	var ext []Extent
	err := c.do(ctx, wire.CmdBlockStatus, flags, uint64(off), n, nil, nil, &ext)
	return ext, err
}

// autoHandle marks handles the client chose itself; caller-chosen handles
// (WithHandle) have the top bit clear, so the two never collide.
const autoHandle = uint64(1) << 63

type handleKey struct{}

// WithHandle returns a context whose request is sent with the given NBD
// handle (cookie) instead of one the client picks. The handle must be
// below 1<<63 and not in flight on the connection; a server may use it as
// the request's identity (nbd.Export.PassHandle).
func WithHandle(ctx context.Context, handle uint64) context.Context {
	return context.WithValue(ctx, handleKey{}, handle)
}

// Raw sends an arbitrary request, for tests of server error handling. For
// wire.CmdRead-like requests, readLen bytes of simple-reply payload are expected
// on success.
func (c *Conn) Raw(ctx context.Context, typ, flags uint16, off uint64, length uint32, payload []byte, readBuf []byte) error {
	return c.do(ctx, typ, flags, off, length, payload, readBuf, nil)
}

func (c *Conn) do(ctx context.Context, typ, flags uint16, off uint64, length uint32, payload, readBuf []byte, ext *[]Extent) error {
	cl := &call{typ: typ, off: off, buf: readBuf, done: make(chan struct{})}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return c.err
	}
	handle, ok := ctx.Value(handleKey{}).(uint64)
	if !ok {
		c.next++
		handle = c.next | autoHandle
	} else if handle&autoHandle != 0 {
		c.mu.Unlock()
		return fmt.Errorf("nbd: handle %#x has the top bit set (reserved)", handle)
	}
	if _, busy := c.pending[handle]; busy {
		c.mu.Unlock()
		return fmt.Errorf("nbd: handle %#x already in flight", handle)
	}
	c.pending[handle] = cl
	c.mu.Unlock()

	var hdr [28]byte
	binary.BigEndian.PutUint32(hdr[0:], wire.MagicRequest)
	binary.BigEndian.PutUint16(hdr[4:], flags)
	binary.BigEndian.PutUint16(hdr[6:], typ)
	binary.BigEndian.PutUint64(hdr[8:], handle)
	binary.BigEndian.PutUint64(hdr[16:], off)
	binary.BigEndian.PutUint32(hdr[24:], length)
	c.wmu.Lock()
	_, err := c.w.Write(hdr[:])
	if err == nil && payload != nil {
		_, err = c.w.Write(payload)
	}
	if err == nil {
		err = c.w.Flush()
	}
	c.wmu.Unlock()
	if err != nil {
		c.fail(fmt.Errorf("nbd: sending request: %w", err))
	}

	select {
	case <-cl.done:
		if ext != nil {
			*ext = cl.ext
		}
		return cl.err
	case <-ctx.Done():
		cl.mu.Lock()
		cl.gone = true
		cl.mu.Unlock()
		return ctx.Err()
	}
}

// readLoop reads replies until the connection breaks.
func (c *Conn) readLoop(r *bufio.Reader) {
	var err error
	for err == nil {
		err = c.readReply(r)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		err = ErrClosed
	}
	c.fail(err)
}

func (c *Conn) take(handle uint64, final bool) (*call, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl, ok := c.pending[handle]
	if !ok {
		return nil, fmt.Errorf("nbd: reply for unknown handle %d", handle)
	}
	if final {
		delete(c.pending, handle)
	}
	return cl, nil
}

func (c *Conn) readReply(r *bufio.Reader) error {
	var m [4]byte
	if _, err := io.ReadFull(r, m[:]); err != nil {
		return err
	}
	switch binary.BigEndian.Uint32(m[:]) {
	case wire.MagicSimple:
		var h [12]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return err
		}
		errno := binary.BigEndian.Uint32(h[0:])
		cl, err := c.take(binary.BigEndian.Uint64(h[4:]), true)
		if err != nil {
			return err
		}
		if errno != 0 {
			cl.err = &Error{Errno: errno}
		} else if cl.typ == wire.CmdRead && len(cl.buf) > 0 {
			if err := cl.fill(r, 0, len(cl.buf)); err != nil {
				cl.finish(err) // taken from pending: fail will not see it
				return err
			}
		}
		close(cl.done)
		return nil
	case wire.MagicStructured:
		var h [16]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return err
		}
		flags := binary.BigEndian.Uint16(h[0:])
		typ := binary.BigEndian.Uint16(h[2:])
		handle := binary.BigEndian.Uint64(h[4:])
		length := binary.BigEndian.Uint32(h[12:])
		final := flags&wire.ReplyFlagDone != 0
		cl, err := c.take(handle, final)
		if err != nil {
			return err
		}
		if err := c.chunk(r, cl, typ, length); err != nil {
			if final {
				cl.finish(err) // taken from pending: fail will not see it
			}
			return err
		}
		if final {
			close(cl.done)
		}
		return nil
	default:
		return fmt.Errorf("nbd: bad reply magic %#x", m)
	}
}

// chunk consumes one structured reply chunk of length bytes for cl.
func (c *Conn) chunk(r *bufio.Reader, cl *call, typ uint16, length uint32) error {
	switch {
	case typ == wire.ChunkNone:
		if length != 0 {
			return fmt.Errorf("nbd: NONE chunk with %d bytes", length)
		}
	case typ == wire.ChunkOffsetData:
		if length < 8 {
			return fmt.Errorf("nbd: short OFFSET_DATA chunk")
		}
		var o [8]byte
		if _, err := io.ReadFull(r, o[:]); err != nil {
			return err
		}
		off := binary.BigEndian.Uint64(o[:])
		n := uint64(length - 8)
		at, ok := cl.within(off, n)
		if !ok {
			return fmt.Errorf("nbd: OFFSET_DATA chunk %d+%d outside the request", off, n)
		}
		return cl.fill(r, at, int(n))
	case typ == wire.ChunkOffsetHole:
		var b [12]byte
		if length != 12 {
			return fmt.Errorf("nbd: OFFSET_HOLE chunk of %d bytes", length)
		}
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return err
		}
		off := binary.BigEndian.Uint64(b[:])
		n := uint64(binary.BigEndian.Uint32(b[8:]))
		at, ok := cl.within(off, n)
		if !ok {
			return fmt.Errorf("nbd: OFFSET_HOLE chunk %d+%d outside the request", off, n)
		}
		cl.mu.Lock()
		if !cl.gone {
			clear(cl.buf[at : at+int(n)])
		}
		cl.mu.Unlock()
	case typ == wire.ChunkBlockStatus:
		if length < 12 || (length-4)%8 != 0 || (length-4)/8 > maxExtents-uint32(len(cl.ext)) {
			return fmt.Errorf("nbd: BLOCK_STATUS chunk of %d bytes", length)
		}
		b := make([]byte, length)
		if _, err := io.ReadFull(r, b); err != nil {
			return err
		}
		for i := 4; i < len(b); i += 8 {
			cl.ext = append(cl.ext, Extent{Length: binary.BigEndian.Uint32(b[i:]), Flags: binary.BigEndian.Uint32(b[i+4:])})
		}
	case typ&wire.ChunkErrorBit != 0:
		if length < 6 || length > maxErrorChunk {
			return fmt.Errorf("nbd: error chunk of %d bytes", length)
		}
		b := make([]byte, length)
		if _, err := io.ReadFull(r, b); err != nil {
			return err
		}
		msgLen := int(binary.BigEndian.Uint16(b[4:]))
		if 6+msgLen > len(b) {
			return fmt.Errorf("nbd: error chunk message overflows the chunk")
		}
		if cl.err == nil {
			cl.err = &Error{Errno: binary.BigEndian.Uint32(b), Message: string(b[6 : 6+msgLen])}
		}
	default:
		return fmt.Errorf("nbd: unknown chunk type %d", typ)
	}
	return nil
}

// maxExtents bounds the block status descriptors of one reply, and so what
// a server can make the client hold: far more than a server sends for one
// request (Tandem's sends at most 1024).
const maxExtents = 1 << 16

// maxErrorChunk bounds an error chunk: its errno and message length, a
// message of at most 4096 bytes (the NBD spec's limit) and, for
// NBD_REPLY_TYPE_ERROR_OFFSET, an offset.
const maxErrorChunk = 4 + 2 + 4096 + 8

// within locates n bytes at off (from a chunk of the server's) in cl.buf:
// it returns where they start in it, or false when they do not all fall
// inside it.
func (cl *call) within(off, n uint64) (int, bool) {
	if off < cl.off {
		return 0, false
	}
	at := off - cl.off
	size := uint64(len(cl.buf))
	if at > size || n > size-at {
		return 0, false
	}
	return int(at), true
}

// finish fails cl with err.
func (cl *call) finish(err error) {
	cl.err = err
	close(cl.done)
}

// fill reads n bytes into cl.buf[at:], or discards them if the caller gave up.
func (cl *call) fill(r io.Reader, at, n int) error {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.gone {
		_, err := io.CopyN(io.Discard, r, int64(n))
		return err
	}
	_, err := io.ReadFull(r, cl.buf[at:at+n])
	return err
}

// fail marks the connection broken and fails every pending request.
func (c *Conn) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
		close(c.done)
	}
	p := c.pending
	c.pending = map[uint64]*call{}
	c.mu.Unlock()
	for _, cl := range p {
		cl.finish(err)
	}
	c.nc.Close()
}

// Close sends NBD_CMD_DISC after outstanding requests and closes the
// connection.
func (c *Conn) Close() error {
	var hdr [28]byte
	binary.BigEndian.PutUint32(hdr[0:], wire.MagicRequest)
	binary.BigEndian.PutUint16(hdr[6:], wire.CmdDisc)
	c.wmu.Lock()
	_, _ = c.w.Write(hdr[:])
	_ = c.w.Flush()
	c.wmu.Unlock()
	// The server closes after DISC; wait briefly for that so that the
	// disconnect is soft, then close our side regardless.
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
	}
	c.fail(ErrClosed)
	return nil
}

// Abort closes the connection at once: requests in flight fail with
// ErrClosed (whether the server executed them is unknown).
func (c *Conn) Abort() { c.fail(ErrClosed) }

// Done is closed when the connection has ended.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns why the connection ended, or nil while it is up.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// handshake is the client side of the fixed-newstyle negotiation.
type handshake struct {
	nc net.Conn
	r  *bufio.Reader
	w  *bufio.Writer
}

func (h *handshake) run(ctx context.Context, opts Options) (*Conn, error) {
	var greet [18]byte
	if _, err := io.ReadFull(h.r, greet[:]); err != nil {
		return nil, fmt.Errorf("nbd: reading greeting: %w", err)
	}
	if binary.BigEndian.Uint64(greet[0:]) != wire.MagicNBD || binary.BigEndian.Uint64(greet[8:]) != wire.MagicOption {
		return nil, errors.New("nbd: server is not a newstyle NBD server")
	}
	sflags := binary.BigEndian.Uint16(greet[16:])
	if sflags&wire.FlagFixedNew == 0 {
		return nil, errors.New("nbd: server does not support fixed newstyle")
	}
	cflags := uint32(1) // C_FIXED_NEWSTYLE
	if sflags&wire.FlagNoZeroes != 0 {
		cflags |= 2
	}
	if err := binary.Write(h.w, binary.BigEndian, cflags); err != nil {
		return nil, err
	}
	if opts.TLS != nil {
		if err := h.option(wire.OptStartTLS, nil); err != nil {
			return nil, err
		}
		if _, _, err := h.expectAck(wire.OptStartTLS); err != nil {
			return nil, err
		}
		tc := tls.Client(h.nc, opts.TLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, fmt.Errorf("nbd: TLS handshake: %w", err)
		}
		h.nc, h.r, h.w = tc, bufio.NewReader(tc), bufio.NewWriter(tc)
	}
	c := &Conn{pending: map[uint64]*call{}, done: make(chan struct{}), contexts: map[string]uint32{}}
	if !opts.NoStructured {
		if err := h.option(wire.OptStructuredReply, nil); err != nil {
			return nil, err
		}
		typ, _, err := h.readOptReply(wire.OptStructuredReply)
		if err != nil {
			return nil, err
		}
		c.structured = typ == wire.RepAck
	}
	if len(opts.MetaContexts) > 0 {
		if !c.structured {
			return nil, errors.New("nbd: metadata contexts need structured replies")
		}
		d := binary.BigEndian.AppendUint32(nil, uint32(len(opts.Export)))
		d = append(d, opts.Export...)
		d = binary.BigEndian.AppendUint32(d, uint32(len(opts.MetaContexts)))
		for _, q := range opts.MetaContexts {
			d = binary.BigEndian.AppendUint32(d, uint32(len(q)))
			d = append(d, q...)
		}
		if err := h.option(wire.OptSetMetaContext, d); err != nil {
			return nil, err
		}
		for {
			typ, data, err := h.readOptReply(wire.OptSetMetaContext)
			if err != nil {
				return nil, err
			}
			if typ == wire.RepAck {
				break
			}
			if typ == wire.RepMetaContext && len(data) >= 4 {
				c.contexts[string(data[4:])] = binary.BigEndian.Uint32(data)
			}
		}
	}
	d := binary.BigEndian.AppendUint32(nil, uint32(len(opts.Export)))
	d = append(d, opts.Export...)
	d = binary.BigEndian.AppendUint16(d, 3)
	d = binary.BigEndian.AppendUint16(d, wire.InfoBlockSize)
	d = binary.BigEndian.AppendUint16(d, wire.InfoName)
	d = binary.BigEndian.AppendUint16(d, wire.InfoDescription)
	if err := h.option(wire.OptGo, d); err != nil {
		return nil, err
	}
	gotExport := false
	for {
		typ, data, err := h.readOptReply(wire.OptGo)
		if err != nil {
			return nil, err
		}
		if typ == wire.RepAck {
			break
		}
		if typ != wire.RepInfo || len(data) < 2 {
			continue
		}
		switch binary.BigEndian.Uint16(data) {
		case wire.InfoExport:
			if len(data) != 12 {
				return nil, fmt.Errorf("nbd: NBD_INFO_EXPORT of %d bytes", len(data))
			}
			size := binary.BigEndian.Uint64(data[2:])
			if size > math.MaxInt64 {
				return nil, fmt.Errorf("nbd: export size %d", size)
			}
			c.size = int64(size)
			c.flags = binary.BigEndian.Uint16(data[10:])
			gotExport = true
		case wire.InfoName:
			c.name = string(data[2:])
		case wire.InfoDescription:
			c.description = string(data[2:])
		case wire.InfoBlockSize:
			if len(data) == 14 {
				c.minBlock = binary.BigEndian.Uint32(data[2:])
				c.prefBlock = binary.BigEndian.Uint32(data[6:])
				c.maxBlock = binary.BigEndian.Uint32(data[10:])
			}
		}
	}
	if !gotExport {
		return nil, errors.New("nbd: server finished NBD_OPT_GO without NBD_INFO_EXPORT")
	}
	c.nc, c.w = h.nc, bufio.NewWriterSize(h.nc, 256<<10)
	return c, nil
}

func (h *handshake) option(opt uint32, data []byte) error {
	b := binary.BigEndian.AppendUint64(nil, wire.MagicOption)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	b = append(b, data...)
	if _, err := h.w.Write(b); err != nil {
		return err
	}
	return h.w.Flush()
}

// readOptReply reads one option reply; error replies become *OptionError.
func (h *handshake) readOptReply(opt uint32) (uint32, []byte, error) {
	var hdr [20]byte
	if _, err := io.ReadFull(h.r, hdr[:]); err != nil {
		return 0, nil, fmt.Errorf("nbd: reading option reply: %w", err)
	}
	if binary.BigEndian.Uint64(hdr[0:]) != wire.MagicOptReply {
		return 0, nil, errors.New("nbd: bad option reply magic")
	}
	if got := binary.BigEndian.Uint32(hdr[8:]); got != opt {
		return 0, nil, fmt.Errorf("nbd: reply for option %d, want %d", got, opt)
	}
	typ := binary.BigEndian.Uint32(hdr[12:])
	n := binary.BigEndian.Uint32(hdr[16:])
	if n > 1<<20 {
		return 0, nil, fmt.Errorf("nbd: option reply of %d bytes", n)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(h.r, data); err != nil {
		return 0, nil, err
	}
	if typ&wire.RepErrBit != 0 {
		if opt == wire.OptStructuredReply {
			return typ, data, nil // not supported: carry on without
		}
		return 0, nil, &OptionError{Option: opt, Reply: typ, Message: string(data)}
	}
	return typ, data, nil
}

func (h *handshake) expectAck(opt uint32) (uint32, []byte, error) {
	typ, data, err := h.readOptReply(opt)
	if err == nil && typ != wire.RepAck {
		err = fmt.Errorf("nbd: option %d: reply %d, want ACK", opt, typ)
	}
	return typ, data, err
}
