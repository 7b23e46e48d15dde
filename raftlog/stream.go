package raftlog

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"sync"
	"time"

	"github.com/tandem-project/tandem/raftlog/mux"
	"github.com/tandem-project/tandem/volume"
	"github.com/tandem-project/tandem/volume/blockfile"
)

// Volume streaming: a replica that must catch up from a snapshot pulls the
// volume from a replica that has applied at least the snapshot's index. The
// stream is a fuzzy copy (blocks are read while entries keep being applied
// at the source); raft then applies every entry after the snapshot index on
// top, which makes the result exact because entries are idempotent range
// assignments (docs/replication.md).
//
// Wire format, after the mux header (KindStream, volume name):
//
//	client: one JSON line streamRequest
//	server: one JSON line streamResponse, then records in increasing offset
//	order:
//	  [kind u8][off u64][len u32] followed by len bytes for recData
//	  recEnd has len 0 and ends the stream.
//
// Both ends are pipelined (see docs/mirror.md, "Copy speed"): at the
// source, a reader goroutine reads chunks ahead of the sender and turns
// those that read as zeroes into recZero records; the sender writes each
// record with one writev. The destination receives into a few buffers that
// writer goroutines write, starting the writeback of each chunk at once and
// keeping what is not yet on the device within pullDirtyMax, so that the
// copy neither fills the page cache nor leaves a volume of dirty pages for
// a final sync that would stall other writers' syncs on the same disk.

const (
	recData uint8 = 1 // bytes at off
	recZero uint8 = 2 // [off, off+len) reads as zeroes (a hole, or zero bytes, at the source)
	recEnd  uint8 = 3 // end of stream

	streamChunk = 1 << 20
	// progressEvery is how often at least the destination records its
	// progress (see pullSyncEvery).
	progressEvery  = 500 * time.Millisecond
	streamWaitMax  = 30 * time.Second
	streamIOTimout = 60 * time.Second

	// serveBuffers is how many chunks the source reads ahead of the one
	// it sends; pullBuffers how many chunks the destination can hold
	// between the connection and its writers.
	serveBuffers = 2
	pullBuffers  = 4
	// pullWriters is how many writes the destination keeps in flight.
	pullWriters = 2
	// pullDirtyMax bounds the data the destination has written but the
	// device has not: past it, a writer waits for the writeback of the
	// older half (and drops it from the page cache).
	pullDirtyMax = 16 << 20
)

// pullSyncEvery is how often (in bytes of the volume) the destination syncs
// and records how far it got, for a resume after a crash (a variable for
// tests); it also does every progressEvery. The sync is short: the
// writeback of all but pullDirtyMax of the data is under way already.
var pullSyncEvery int64 = 64 << 20

// maxStreamLine bounds a stream request line (bufio's minimum buffer).
const maxStreamLine = 4096

type streamRequest struct {
	MinIndex uint64 `json:"min_index"`
	From     int64  `json:"from"`
}

type streamResponse struct {
	Error string `json:"error,omitempty"`
	Size  int64  `json:"size"`
}

// streamSet tracks the streams a group serves, so that the group ends them
// (and waits for them) before it closes its file.
type streamSet struct {
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// add registers c; false once the group is closing.
func (s *streamSet) add(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.conns == nil {
		s.conns = map[net.Conn]struct{}{}
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

// done unregisters c.
func (s *streamSet) done(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// end refuses new streams, closes the connections of those under way and
// waits until they stopped.
func (s *streamSet) end() {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// serveStream answers one stream request on c for group g.
func serveStream(g *Group, c net.Conn) error {
	if !g.streams.add(c) {
		c.Close()
		return errors.New("raftlog: stream refused: the replica is closing")
	}
	defer g.streams.done(c)
	return serveFile(c, g.file, func(minIndex uint64) error {
		ctx, cancel := context.WithTimeout(context.Background(), streamWaitMax)
		err := g.fsm.waitApplied(ctx, minIndex)
		cancel()
		if err == nil {
			err = g.err()
		}
		if err != nil {
			return fmt.Errorf("replica %s cannot serve index %d: %w", g.cfg.Local, minIndex, err)
		}
		return nil
	})
}

// serveFile answers one stream request on c from file, once ready says the
// file holds the requested index.
func serveFile(c net.Conn, file *blockfile.File, ready func(minIndex uint64) error) error {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(streamIOTimout))
	// A request is one short JSON line: ReadSlice bounds it by the
	// reader's buffer, so a peer that never sends a newline is turned
	// away instead of growing a line until the deadline.
	br := bufio.NewReaderSize(c, maxStreamLine)
	line, err := br.ReadSlice('\n')
	if err != nil {
		return fmt.Errorf("raftlog: stream request: %w", err)
	}
	var req streamRequest
	if err := json.Unmarshal(line, &req); err != nil {
		return fmt.Errorf("raftlog: stream request: %w", err)
	}
	respond := func(r streamResponse) error {
		b, _ := json.Marshal(r)
		if _, err := c.Write(append(b, '\n')); err != nil {
			return fmt.Errorf("raftlog: stream response: %w", err)
		}
		return nil
	}
	if err := ready(req.MinIndex); err != nil {
		return respond(streamResponse{Error: err.Error()})
	}
	size := file.Size()
	if req.From < 0 || req.From > size {
		return respond(streamResponse{Error: fmt.Sprintf("bad offset %d in a volume of %d bytes", req.From, size)})
	}
	if err := respond(streamResponse{Size: size}); err != nil {
		return err
	}

	// The reader goroutine reads ahead of this one, which sends: a
	// record's header and data leave in one writev, with no copy through a
	// bufio.Writer. (sendfile from the page cache was no faster over
	// loopback here: docs/mirror.md, "Copy speed".)
	stop := make(chan struct{})
	recs := make(chan serveRec, serveBuffers)
	defer func() {
		close(stop)
		for range recs { // wait for the reader to leave
		}
	}()
	free := make(chan []byte, serveBuffers+1)
	for range serveBuffers + 1 {
		free <- make([]byte, streamChunk)
	}
	go readAhead(file, req.From, size, recs, free, stop)

	var hdr [13]byte
	send := func(r serveRec) error {
		hdr[0] = r.kind
		binary.BigEndian.PutUint64(hdr[1:], uint64(r.off))
		binary.BigEndian.PutUint32(hdr[9:], uint32(r.n))
		_ = c.SetWriteDeadline(time.Now().Add(streamIOTimout))
		bufs := net.Buffers{hdr[:]}
		if r.kind == recData {
			bufs = append(bufs, r.buf[:r.n])
		}
		if _, err := bufs.WriteTo(c); err != nil {
			return fmt.Errorf("raftlog: stream record at %d: %w", r.off, err)
		}
		return nil
	}
	// Consecutive zero records (holes, zero chunks) leave as one.
	var zero serveRec
	for r := range recs {
		if r.err != nil {
			return r.err
		}
		if r.kind == recZero && zero.n > 0 && zero.off+zero.n == r.off && zero.n+r.n <= math.MaxUint32 {
			zero.n += r.n
			continue
		}
		if zero.n > 0 {
			if err := send(zero); err != nil {
				return err
			}
			zero = serveRec{}
		}
		if r.kind == recZero {
			zero = r
			continue
		}
		err := send(r)
		free <- r.buf
		if err != nil {
			return err
		}
	}
	if zero.n > 0 {
		if err := send(zero); err != nil {
			return err
		}
	}
	return send(serveRec{kind: recEnd, off: size})
}

// serveRec is a record read by readAhead; err ends the stream.
type serveRec struct {
	kind   uint8
	off, n int64
	buf    []byte // recData: the data, to be returned to free once sent
	err    error
}

// zeroChunk is compared with data chunks to find those that read as
// zeroes; never written.
var zeroChunk [streamChunk]byte

// readAhead reads [from, size) of file into buffers taken from free and
// hands its records to recs in order: holes and chunks that read as zeroes
// as recZero (the comparison stops at the first byte that is not zero, so
// it costs little on data), data chunks as recData. It closes recs at the
// end or after an error (sent as a record), and gives up when stop closes.
func readAhead(file *blockfile.File, from, size int64, recs chan<- serveRec, free chan []byte, stop <-chan struct{}) {
	defer close(recs)
	put := func(r serveRec) bool {
		select {
		case recs <- r:
			return true
		case <-stop:
			return false
		}
	}
	bg := context.Background()
	for off := from; off < size; {
		ext, err := file.Extents(bg, off, min(size-off, 64*streamChunk), 1)
		if err != nil {
			put(serveRec{err: fmt.Errorf("raftlog: stream extents at %d: %w", off, err)})
			return
		}
		e := ext[0]
		if e.Flags&volume.Zero != 0 {
			if !put(serveRec{kind: recZero, off: off, n: e.Length}) {
				return
			}
			off += e.Length
			continue
		}
		for end := off + e.Length; off < end; {
			n := min(end-off, streamChunk)
			var buf []byte
			select {
			case buf = <-free:
			case <-stop:
				return
			}
			if err := file.ReadAt(bg, buf[:n], off); err != nil {
				put(serveRec{err: fmt.Errorf("raftlog: stream read: %w", err)})
				return
			}
			r := serveRec{kind: recData, off: off, n: n, buf: buf}
			if bytes.Equal(buf[:n], zeroChunk[:n]) {
				free <- buf
				r = serveRec{kind: recZero, off: off, n: n}
			}
			if !put(r) {
				return
			}
			off += n
		}
	}
}

// errStreamRefused is a source replica saying it cannot serve the stream.
var errStreamRefused = errors.New("raftlog: stream refused")

// pullVolume copies volume name from the replica at addr (a host's raft
// address) into file, starting at byte from, as of at least minIndex.
// progress is called now and then with the offset up to which the copy is
// complete and synced (the place to resume from). It returns the number of
// bytes transferred and where the time went.
//
// meter (nil for none) counts the bytes as they arrive and limits their rate.
//
// This goroutine receives records into buffers; a pullWriter writes them
// (with bounded writeback), syncs every pullSyncEvery bytes of the volume
// and at the end, and reports progress.
func pullVolume(ctx context.Context, d mux.Dialer, addr, name string, minIndex uint64, from int64, file *blockfile.File, meter *copyMeter, progress func(int64)) (pullStats, error) {
	start := time.Now()
	dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
	c, err := d.Dial(dctx, addr, mux.KindStream, name)
	dcancel()
	if err != nil {
		return pullStats{}, fmt.Errorf("raftlog: stream from %s: %w", addr, err)
	}
	return receiveVolume(ctx, c, addr, minIndex, from, file, meter, progress, start)
}

// receiveVolume is pullVolume once connected to addr (for messages) by c,
// which it closes; start is when the pull began.
func receiveVolume(ctx context.Context, c net.Conn, addr string, minIndex uint64, from int64, file *blockfile.File, meter *copyMeter, progress func(int64), start time.Time) (pullStats, error) {
	var st pullStats
	defer c.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	b, _ := json.Marshal(streamRequest{MinIndex: minIndex, From: from})
	_ = c.SetDeadline(time.Now().Add(streamWaitMax + streamIOTimout))
	if _, err := c.Write(append(b, '\n')); err != nil {
		return st, fmt.Errorf("raftlog: stream request to %s: %w", addr, err)
	}
	br := bufio.NewReaderSize(c, 64<<10)
	line, err := br.ReadSlice('\n') // bounded by the buffer, like the request
	if err != nil {
		return st, fmt.Errorf("raftlog: stream response from %s: %w", addr, err)
	}
	var resp streamResponse
	if err := json.Unmarshal(line, &resp); err != nil {
		return st, fmt.Errorf("raftlog: stream response from %s: %w", addr, err)
	}
	st.Setup = time.Since(start)
	if resp.Error != "" {
		return st, fmt.Errorf("%w by %s: %s", errStreamRefused, addr, resp.Error)
	}
	if resp.Size > file.Size() {
		if err := file.Grow(resp.Size); err != nil {
			return st, fmt.Errorf("raftlog: stream copy: %w", err)
		}
	}

	w := newPullWriter(ctx, file, from, progress)
	// A failed write stops the receive.
	stopW := context.AfterFunc(w.ctx, func() { c.Close() })
	defer stopW()
	var hdr [13]byte
	next := from // where the next record starts
	// fail stops the writers and returns the first error: a writer's if
	// one failed (the receive then failed because the connection was
	// closed).
	fail := func(err error) (pullStats, error) {
		if werr := w.finish(err); werr != nil {
			return st, werr
		}
		return st, err
	}
	for {
		_ = c.SetDeadline(time.Now().Add(streamIOTimout))
		t := time.Now()
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return fail(fmt.Errorf("raftlog: stream from %s: %w", addr, err))
		}
		st.Receive += time.Since(t)
		r := pullRec{kind: hdr[0], off: int64(binary.BigEndian.Uint64(hdr[1:])), n: int64(binary.BigEndian.Uint32(hdr[9:]))}
		// Records must tile [from, size) in order: progress (the offset
		// a restart resumes from) counts on it.
		if r.off != next || r.n < 0 || r.n > resp.Size-r.off || (r.kind == recData && r.n > streamChunk) || (r.kind == recEnd && r.off != resp.Size) {
			return fail(fmt.Errorf("raftlog: stream from %s: bad record %d at %d+%d (expected one at %d)", addr, r.kind, r.off, r.n, next))
		}
		next = r.off + r.n
		received := int64(0) // zero records take no time on the wire
		switch r.kind {
		case recData:
			tw := time.Now()
			select {
			case r.buf = <-w.free:
			case <-w.ctx.Done():
				return fail(context.Cause(w.ctx))
			}
			t1 := time.Now()
			st.WriteWait += t1.Sub(tw)
			if _, err := io.ReadFull(br, r.buf[:r.n]); err != nil {
				return fail(fmt.Errorf("raftlog: stream from %s: %w", addr, err))
			}
			st.Receive += time.Since(t1)
			st.Bytes += r.n
			received = r.n
		case recZero:
		case recEnd:
			tf := time.Now()
			if err := w.finish(nil); err != nil {
				return st, err
			}
			if err := file.Flush(ctx); err != nil {
				return st, fmt.Errorf("raftlog: stream copy: %w", err)
			}
			st.Finish = time.Since(tf)
			if progress != nil {
				progress(resp.Size)
			}
			return st, nil
		default:
			return fail(fmt.Errorf("raftlog: stream from %s: unknown record %d", addr, r.kind))
		}
		if err := w.put(r); err != nil {
			return fail(err)
		}
		if err := meter.add(ctx, received, r.off+r.n); err != nil {
			return fail(err)
		}
	}
}

// pullStats tells where a pull's time went, for the log.
type pullStats struct {
	Bytes int64 // data received
	// Setup is the time until the source answered (it waits until it
	// applied the index asked for), Receive the time spent reading
	// records off the connection (waiting for the source and the
	// network), WriteWait the time the receiver waited for a buffer the
	// writers had not written yet (waiting for the disk), Finish the last
	// writes and the final sync.
	Setup, Receive, WriteWait, Finish time.Duration
}

// pullRec is a received record on its way to a writer.
type pullRec struct {
	kind   uint8
	off, n int64
	buf    []byte // recData: the data, returned to free once written
	seq    uint64 // the record's place in the stream
}

// pullWriter writes the records of a stream into the volume file with
// pullWriters goroutines (data through the page cache, its writeback
// started at once and waited for pullDirtyMax/2 behind; zero records by
// punching holes), and tracks the prefix of the volume that is written:
// every pullSyncEvery bytes of it, it syncs the file and reports progress.
type pullWriter struct {
	ctx      context.Context
	cancel   context.CancelCauseFunc
	file     *blockfile.File
	jobs     chan pullRec
	free     chan []byte // pullBuffers buffers
	progress func(int64)
	seq      uint64 // the next record's seq (receiver only)
	wg       sync.WaitGroup

	mu         sync.Mutex
	next       uint64           // seq of the first record not known written
	written    map[uint64]int64 // seq → end offset, for records after next
	mark       int64            // the file is written up to here
	settled    int64            // and written back up to here
	lastReport int64
	lastAt     time.Time // when lastReport was recorded
	err        error     // the first write error
}

func newPullWriter(ctx context.Context, file *blockfile.File, from int64, progress func(int64)) *pullWriter {
	ctx, cancel := context.WithCancelCause(ctx)
	w := &pullWriter{
		ctx: ctx, cancel: cancel, file: file,
		jobs:     make(chan pullRec, pullBuffers),
		free:     make(chan []byte, pullBuffers),
		progress: progress,
		written:  map[uint64]int64{},
		mark:     from, lastReport: from, settled: from, lastAt: time.Now(),
	}
	for range pullBuffers {
		w.free <- make([]byte, streamChunk)
	}
	for range pullWriters {
		w.wg.Add(1)
		go w.run()
	}
	return w
}

// put hands r to the writers.
func (w *pullWriter) put(r pullRec) error {
	r.seq = w.seq
	w.seq++
	select {
	case w.jobs <- r:
		return nil
	case <-w.ctx.Done():
		return context.Cause(w.ctx)
	}
}

// finish waits for the writers to write what they were given (or, with
// err, tells them to stop) and returns the first write error.
func (w *pullWriter) finish(err error) error {
	if err != nil {
		w.cancel(err)
	}
	close(w.jobs)
	w.wg.Wait()
	w.cancel(nil)
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *pullWriter) run() {
	defer w.wg.Done()
	for r := range w.jobs {
		if w.ctx.Err() != nil {
			continue // stopping: drain
		}
		var err error
		switch r.kind {
		case recData:
			err = w.file.WriteAt(w.ctx, r.buf[:r.n], r.off, 0)
			if err == nil {
				_ = w.file.StartWriteback(r.off, r.n) // a hint: Flush makes it durable
			}
			w.free <- r.buf
		case recZero:
			err = w.file.Zero(w.ctx, r.off, r.n, 0)
		}
		if err == nil {
			err = w.done(r.seq, r.off+r.n)
		}
		if err != nil {
			w.mu.Lock()
			if w.err == nil {
				w.err = fmt.Errorf("raftlog: stream copy: %w", err)
			}
			w.mu.Unlock()
			w.cancel(err)
		}
	}
}

// done records that record seq, ending at end, is written; when the written
// prefix of the volume grew by pullSyncEvery since the last report, it
// syncs the file and reports the prefix.
func (w *pullWriter) done(seq uint64, end int64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.written[seq] = end
	for {
		e, ok := w.written[w.next]
		if !ok {
			break
		}
		delete(w.written, w.next)
		w.next++
		w.mark = e
	}
	// Keep what is dirty or queued at the device within pullDirtyMax:
	// wait for the writeback of what lies more than half of it behind.
	if w.mark-w.settled >= pullDirtyMax {
		end := w.mark - pullDirtyMax/2
		_ = w.file.SettleWriteback(w.settled, end-w.settled) // a hint: Flush makes it durable
		w.settled = end
	}
	if w.progress == nil || w.mark == w.lastReport || (w.mark-w.lastReport < pullSyncEvery && time.Since(w.lastAt) < progressEvery) {
		return nil
	}
	// Everything below mark returned from its write before it was marked:
	// the sync covers it.
	if err := w.file.Flush(w.ctx); err != nil {
		return err
	}
	w.lastReport, w.lastAt = w.mark, time.Now()
	w.progress(w.mark)
	return nil
}
