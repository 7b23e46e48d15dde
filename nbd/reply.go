package nbd

import (
	"encoding/binary"
	"net"
	"sync"

	"github.com/tandem-project/tandem/nbd/wire"
)

// smallPayload is the largest payload copied into the batch buffer; larger
// payloads are sent in place with writev.
const smallPayload = 16 << 10

// maxPending bounds the reply bytes queued behind a write in progress. A
// client that stops reading replies thus stops the server from reading its
// requests (TCP pushes back) instead of growing the queue.
const maxPending = 4 << 20

// asyncMin is the smallest batch that flush leaves to the background writer.
const asyncMin = 256 << 10

// replyWriter sends replies from many goroutines over one connection.
//
// Replies queued while a write is in progress are batched into the next
// write, so a burst of completions costs one syscall, and nothing waits for
// a timer: a goroutine that finds the writer idle writes until the queue is
// empty. The request reader may also queue replies without writing them
// (sendLater) and flush once it has no more requests buffered, so that the
// replies to a burst of requests answered inline leave in one writev. Once
// asyncMin bytes of such replies are queued, a background goroutine writes
// them while the reader goes on reading the next requests' data: reading
// from the page cache and writing to the socket then overlap on two cores,
// as they do in a threaded server.
type replyWriter struct {
	conn net.Conn

	mu      sync.Mutex
	drained sync.Cond // signalled after every write
	writing bool
	err     error
	arena   []byte      // headers and small payloads not yet in segs
	mark    int         // arena[:mark] is already referenced by segs
	segs    net.Buffers // queued output, in order
	pending int         // bytes queued and not yet taken by a writer
	release []func()    // run once the queued output has been written
	spare   []byte      // arena of the previous batch, for reuse

	kick    chan struct{} // wakes the background writer
	started bool          // the background writer runs
	closed  bool          // kick is closed: no more background writes
}

func newReplyWriter(c net.Conn) *replyWriter {
	w := &replyWriter{conn: c, kick: make(chan struct{}, 1)}
	w.drained.L = &w.mu
	return w
}

// send queues hdr and payload (which may be nil) as one reply and makes sure
// it gets written: by this goroutine if no write is in progress. release, if
// not nil, runs once payload is no longer needed.
func (w *replyWriter) send(hdr, payload []byte, release func()) {
	w.put(hdr, payload, release, true)
}

// sendLater queues a reply like send but leaves the write to the next flush
// (or to a write already in progress).
func (w *replyWriter) sendLater(hdr, payload []byte, release func()) {
	w.put(hdr, payload, release, false)
}

// flush writes out queued replies unless a write is already in progress
// (which will take them). Large batches are handed to the background
// writer, so that the caller can go on reading while they are sent.
func (w *replyWriter) flush() {
	w.mu.Lock()
	if !w.writing && w.pending > 0 && w.err == nil {
		if w.pending >= asyncMin {
			w.kickLocked()
		} else {
			w.drainLocked()
		}
	}
	w.mu.Unlock()
}

// kickLocked hands the queued output to the background writer.
func (w *replyWriter) kickLocked() {
	if w.closed {
		w.drainLocked()
		return
	}
	w.writing = true
	if !w.started {
		w.started = true
		go w.background()
	}
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// background writes what kickLocked hands it until close.
func (w *replyWriter) background() {
	for range w.kick {
		w.mu.Lock()
		w.drainLocked()
		w.mu.Unlock()
	}
}

// close writes out what is queued, waits for writes in progress and stops
// the background writer.
func (w *replyWriter) close() {
	w.mu.Lock()
	for w.writing {
		w.drained.Wait()
	}
	if w.pending > 0 && w.err == nil {
		w.drainLocked()
	}
	if !w.closed {
		w.closed = true
		close(w.kick)
	}
	w.mu.Unlock()
}

func (w *replyWriter) put(hdr, payload []byte, release func(), now bool) {
	w.mu.Lock()
	for w.writing && w.pending >= maxPending && w.err == nil {
		w.drained.Wait()
	}
	if w.err != nil {
		w.mu.Unlock()
		if release != nil {
			release()
		}
		return
	}
	w.arena = append(w.arena, hdr...)
	if len(payload) <= smallPayload {
		w.arena = append(w.arena, payload...)
		if release != nil {
			release() // copied already
		}
	} else {
		w.segs = append(w.segs, w.arena[w.mark:], payload)
		w.mark = len(w.arena)
		if release != nil {
			w.release = append(w.release, release)
		}
	}
	w.pending += len(hdr) + len(payload)
	switch {
	case w.writing:
		// The writer in progress takes it.
	case now:
		w.drainLocked()
	case w.pending >= asyncMin:
		w.kickLocked()
	}
	w.mu.Unlock()
}

// drainLocked writes until nothing is queued. It is called with w.mu held
// and returns with it held, releasing it around each write.
func (w *replyWriter) drainLocked() {
	w.writing = true
	for w.pending > 0 {
		bufs := append(w.segs, w.arena[w.mark:])
		rel := w.release
		w.segs, w.release, w.pending = nil, nil, 0
		w.arena, w.spare, w.mark = w.spare[:0], w.arena, 0
		w.mu.Unlock()

		_, err := bufs.WriteTo(w.conn)
		for _, f := range rel {
			f()
		}

		w.mu.Lock()
		w.drained.Broadcast()
		if err != nil {
			w.err = err
			for _, f := range w.release {
				f()
			}
			w.segs, w.release, w.arena, w.mark, w.pending = nil, nil, nil, 0, 0
			break
		}
	}
	w.writing = false
	w.drained.Broadcast()
}

// failed returns the first write error, if any.
func (w *replyWriter) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Reply encoders. Each returns the header bytes; payloads are passed
// separately so that large reads are never copied.

func simpleReply(handle uint64, errno uint32) []byte {
	b := make([]byte, wire.SimpleHeaderLen)
	binary.BigEndian.PutUint32(b[0:], wire.MagicSimple)
	binary.BigEndian.PutUint32(b[4:], errno)
	binary.BigEndian.PutUint64(b[8:], handle)
	return b
}

func chunkHeader(b []byte, flags, typ uint16, handle uint64, length uint32) []byte {
	b = binary.BigEndian.AppendUint32(b, wire.MagicStructured)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, handle)
	return binary.BigEndian.AppendUint32(b, length)
}

// readDataHeader is the header of a one-chunk structured READ reply carrying
// n bytes from off.
func readDataHeader(handle, off uint64, n int) []byte {
	b := chunkHeader(make([]byte, 0, wire.ChunkHeaderLen+8), wire.ReplyFlagDone, wire.ChunkOffsetData, handle, uint32(8+n))
	return binary.BigEndian.AppendUint64(b, off)
}

// errorChunk is a final NBD_REPLY_TYPE_ERROR chunk with a message.
func errorChunk(handle uint64, errno uint32, msg string) []byte {
	if len(msg) > 4096 {
		msg = msg[:4096]
	}
	b := chunkHeader(make([]byte, 0, wire.ChunkHeaderLen+6+len(msg)), wire.ReplyFlagDone, wire.ChunkError, handle, uint32(6+len(msg)))
	b = binary.BigEndian.AppendUint32(b, errno)
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	return append(b, msg...)
}
