package nbd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/tandem-project/tandem/nbd/wire"
	"github.com/tandem-project/tandem/volume"
)

// maxExtents bounds the descriptors of one BLOCK_STATUS reply.
const maxExtents = 1024

// inlineReadMax is the largest READ tried on the reader goroutine. Serving
// cached reads inline and flushing their replies in large batches costs the
// least CPU per byte on every size measured (see docs/nbd-server.md).
const inlineReadMax = MaxPayload

// conn is the transmission phase of one connection.
type conn struct {
	srv    *Server
	s      *session
	b      volume.Backend
	log    *slog.Logger
	ctx    context.Context    // canceled by a hard disconnect or server Close
	cancel context.CancelFunc // cancels ctx
	// hardClose is set when the client went away without NBD_CMD_DISC.
	hardClose bool

	out     *replyWriter
	slots   chan struct{}       // one per request in flight
	budget  *semaphore.Weighted // payload bytes in flight
	pending sync.WaitGroup      // requests handed to workers

	// work hands requests to idle workers; workers counts them (only the
	// reader goroutine touches it). Workers live as long as the
	// connection: a goroutine per request grew its stack anew for every
	// request, which cost 8 % of the CPU under 4 KiB writes at QD32.
	work    chan job
	workers int

	// nowait is the backend's non-blocking read, if it has one: small
	// cached reads are then answered on the reader goroutine.
	nowait volume.NowaitReader
	// mapped is the backend's page-cache view, if it has one: large cached
	// reads are then written to the socket from the page cache.
	mapped volume.MappedReader
	// durable is set when the backend's writes are durable once they
	// return (volume.Caps.DurableWrites): FLUSH is then answered by the
	// reader at once, since every write it must cover has been answered,
	// hence is durable.
	durable bool
	// obs is told about every answered request (nil: nobody listens).
	obs Observer
}

// serve reads requests until the client disconnects, sends NBD_CMD_DISC, or
// the input cannot be framed; then it waits for the requests in flight.
// After NBD_CMD_DISC requests in flight complete normally; after a hard
// disconnect their context is canceled, so that a backend does not keep
// retrying requests for a client that is gone (it may have reconnected and
// written newer data since).
func (c *conn) serve() (err error) {
	defer close(c.work) // after the wait below: the workers are idle
	defer c.pending.Wait()
	defer func() {
		if err != nil || c.hardClose {
			c.cancel()
		}
	}()
	var hdr [wire.RequestHeaderLen]byte
	for {
		c.flushIfIdle(wire.RequestHeaderLen)
		if _, err := io.ReadFull(c.s.r, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				c.hardClose = true
				return nil // client hung up between requests
			}
			return fmt.Errorf("nbd: reading request: %w", err)
		}
		r, err := decodeRequest(hdr[:])
		if err != nil {
			return err
		}
		if c.obs != nil {
			r.start = time.Now()
		}
		if r.typ == wire.CmdDisc {
			return nil
		}
		if err := c.dispatch(r); err != nil {
			return err
		}
	}
}

// dispatch validates one request, reads its payload and starts it. It
// returns an error only when the connection must close.
func (c *conn) dispatch(r request) error {
	rej := c.s.check(r, c.b.Size())
	if rej == nil && c.srv.shuttingDown() {
		rej = &rejection{errno: wire.ErrShutdown, msg: "server is shutting down"}
	}

	var payload []byte
	var weight int64
	if r.typ == wire.CmdRead || r.typ == wire.CmdWrite {
		weight = int64(r.length)
	}
	if r.hasPayload() {
		if rej != nil && r.length > MaxPayload {
			// Too large to buffer: skip it in place.
			if _, err := io.CopyN(io.Discard, c.s.r, int64(r.length)); err != nil {
				return fmt.Errorf("nbd: discarding WRITE payload: %w", err)
			}
			c.replyError(r, rej.errno, rej.msg)
			return nil
		}
		if err := c.budget.Acquire(c.ctx, weight); err != nil {
			return err
		}
		payload = c.srv.bufs.get(int(r.length))
		c.flushIfIdle(len(payload))
		if _, err := io.ReadFull(c.s.r, payload); err != nil {
			c.srv.bufs.put(payload)
			c.budget.Release(weight)
			return fmt.Errorf("nbd: reading WRITE payload: %w", err)
		}
	}
	if rej != nil {
		if payload != nil {
			c.srv.bufs.put(payload)
			c.budget.Release(weight)
		}
		c.replyError(r, rej.errno, rej.msg)
		return nil
	}
	if r.typ == wire.CmdFlush && c.durable {
		c.observe(r, 0)
		c.out.sendLater(simpleReply(r.handle, 0), nil, nil)
		return nil
	}
	if r.typ == wire.CmdRead {
		if err := c.budget.Acquire(c.ctx, weight); err != nil {
			return err
		}
		if c.mapped != nil && r.length > smallPayload && c.readMapped(r, weight) {
			return nil
		}
		if c.nowait != nil && r.length <= inlineReadMax && c.readInline(r, weight) {
			return nil
		}
	}
	select {
	case c.slots <- struct{}{}:
	case <-c.ctx.Done():
		return c.ctx.Err()
	}
	c.pending.Add(1)
	c.srv.inflightCount.Add(1)
	c.start(job{r, payload, weight})
	return nil
}

// job is one request handed to a worker.
type job struct {
	r       request
	payload []byte
	weight  int64
}

// start hands j to an idle worker, or to a new one while there are fewer
// workers than requests allowed in flight. Otherwise every worker is
// between two requests (the caller holds a slot, so at most cap(slots)-1
// requests are being served): it waits for the first to come back.
func (c *conn) start(j job) {
	select {
	case c.work <- j:
		return
	default:
	}
	if c.workers < cap(c.slots) {
		c.workers++
		go c.worker(j)
		return
	}
	c.work <- j
}

// worker serves j, then the requests start hands it, until the
// connection ends.
func (c *conn) worker(j job) {
	for ok := true; ok; j, ok = <-c.work {
		c.handle(j.r, j.payload, j.weight)
	}
}

// flushIfIdle writes out queued replies when fewer than n request bytes are
// buffered, that is before the reader may block on the socket.
func (c *conn) flushIfIdle(n int) {
	if c.s.r.Buffered() < n {
		c.out.flush()
	}
}

// readInline serves a small READ on the reader goroutine when the backend
// can do it without waiting for storage (the data is cached), and queues the
// reply for the next flush. It reports false, having done nothing, when the
// read would block; the caller then serves it on its own goroutine.
func (c *conn) readInline(r request, weight int64) bool {
	buf := c.srv.bufs.get(int(r.length))
	done, err := c.nowait.ReadAtNowait(buf, int64(r.off))
	if !done {
		c.srv.bufs.put(buf)
		return false
	}
	if err != nil {
		c.srv.bufs.put(buf)
		c.budget.Release(weight)
		c.backendError(r, err)
		return true
	}
	c.replyRead(r, buf, weight, c.out.sendLater)
	return true
}

// readMapped answers a large READ on the reader goroutine with a view of
// the backend's page cache, which the reply writer hands to writev: the
// kernel copies the data once, from the page cache into the socket. It
// reports false, having done nothing, when the range is not all cached.
// The view is never copied here (the reply writer copies only payloads of
// at most smallPayload bytes).
func (c *conn) readMapped(r request, weight int64) bool {
	view, release, err := c.mapped.ReadMapped(int64(r.off), int64(r.length))
	if err != nil {
		c.budget.Release(weight)
		c.backendError(r, err)
		return true
	}
	if view == nil {
		return false
	}
	c.sendRead(r, view, func() {
		release()
		c.budget.Release(weight)
	}, c.out.sendLater)
	return true
}

// handle runs one valid request against the backend and replies.
func (c *conn) handle(r request, payload []byte, weight int64) {
	defer func() {
		<-c.slots
		c.srv.inflightCount.Add(-1)
		c.pending.Done()
	}()
	off := int64(r.off)
	n := int64(r.length)
	flags := volume.Flags(0)
	if r.flags&wire.CfFUA != 0 {
		flags |= volume.FUA
	}
	ctx := c.ctx
	if c.s.export.PassHandle {
		ctx = context.WithValue(ctx, handleKey{}, r.handle)
	}
	var err error
	switch r.typ {
	case wire.CmdRead:
		buf := c.srv.bufs.get(int(n))
		if err = c.b.ReadAt(ctx, buf, off); err == nil {
			c.replyRead(r, buf, weight, c.out.send)
			return
		}
		c.srv.bufs.put(buf)
		c.budget.Release(weight)
	case wire.CmdWrite:
		err = c.b.WriteAt(ctx, payload, off, flags)
		c.srv.bufs.put(payload)
		c.budget.Release(weight)
	case wire.CmdFlush:
		err = c.b.Flush(ctx)
	case wire.CmdTrim:
		err = c.b.Trim(ctx, off, n, flags)
	case wire.CmdCache:
		err = c.b.Cache(ctx, off, n)
	case wire.CmdWriteZeroes:
		if r.flags&wire.CfNoHole != 0 {
			flags |= volume.NoHole
		}
		if r.flags&wire.CfFastZero != 0 {
			flags |= volume.FastZero
		}
		err = c.b.Zero(ctx, off, n, flags)
	case wire.CmdBlockStatus:
		max := maxExtents
		if r.flags&wire.CfReqOne != 0 {
			max = 1
		}
		var ext []volume.Extent
		if ext, err = c.b.Extents(ctx, off, n, max); err == nil {
			c.replyExtents(r, ext)
			return
		}
	}
	if err != nil {
		c.backendError(r, err)
		return
	}
	c.out.send(simpleReply(r.handle, 0), nil, nil)
	c.observe(r, 0)
}

// observe reports an answered request to the Observer, if any.
func (c *conn) observe(r request, errno uint32) {
	if c.obs != nil {
		c.obs.Observe(c.s.export.Name, commandName(r.typ), r.length, time.Since(r.start), errno)
	}
}

// backendError replies to r with the NBD error for a backend failure.
func (c *conn) backendError(r request, err error) {
	errno := errnoOf(err)
	if errno == wire.ErrIO {
		c.log.Warn("backend I/O error", "command", commandName(r.typ), "offset", r.off, "length", r.length, "err", err)
	}
	c.replyError(r, errno, err.Error())
}

// replyRead sends the successful reply to a READ with send or sendLater;
// buf comes from the buffer pool.
func (c *conn) replyRead(r request, buf []byte, weight int64, send func(hdr, payload []byte, release func())) {
	c.sendRead(r, buf, func() {
		c.srv.bufs.put(buf)
		c.budget.Release(weight)
	}, send)
}

// sendRead sends the successful reply to a READ carrying buf with send or
// sendLater; release runs once buf is no longer needed.
func (c *conn) sendRead(r request, buf []byte, release func(), send func(hdr, payload []byte, release func())) {
	c.observe(r, 0)
	if c.s.structured {
		if len(buf) == 0 {
			send(chunkHeader(nil, wire.ReplyFlagDone, wire.ChunkNone, r.handle, 0), nil, release)
			return
		}
		send(readDataHeader(r.handle, r.off, len(buf)), buf, release)
		return
	}
	send(simpleReply(r.handle, 0), buf, release)
}

func (c *conn) replyExtents(r request, ext []volume.Extent) {
	c.observe(r, 0)
	b := chunkHeader(make([]byte, 0, wire.ChunkHeaderLen+4+8*len(ext)), wire.ReplyFlagDone, wire.ChunkBlockStatus, r.handle, uint32(4+8*len(ext)))
	b = binary.BigEndian.AppendUint32(b, metaContextID)
	for _, e := range ext {
		b = binary.BigEndian.AppendUint32(b, uint32(e.Length))
		b = binary.BigEndian.AppendUint32(b, uint32(e.Flags))
	}
	c.out.send(b, nil, nil)
}

// replyError sends an error reply: a structured error chunk with the message
// when structured replies were negotiated (always for READ), a simple reply
// otherwise. A simple error reply to READ carries no payload.
func (c *conn) replyError(r request, errno uint32, msg string) {
	c.observe(r, errno)
	if c.s.structured {
		c.out.send(errorChunk(r.handle, errno, msg), nil, nil)
		return
	}
	c.out.send(simpleReply(r.handle, errno), nil, nil)
}

// errnoOf maps a backend error to the NBD error sent to the client.
func errnoOf(err error) uint32 {
	switch {
	case errors.Is(err, volume.ErrReadOnly), errors.Is(err, volume.ErrFenced):
		return wire.ErrPerm
	case errors.Is(err, volume.ErrNotFast):
		return wire.ErrNotSup
	case errors.Is(err, volume.ErrNoSpace):
		return wire.ErrNoSpc
	case errors.Is(err, volume.ErrOutOfRange):
		return wire.ErrInval
	case errors.Is(err, context.Canceled), errors.Is(err, volume.ErrClosed), errors.Is(err, volume.ErrUnavailable):
		return wire.ErrShutdown
	default:
		return wire.ErrIO
	}
}
