package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/tandem-project/tandem/nbd/nbdclient"
)

// LoadSpec describes one run of the built-in Go load generator.
type LoadSpec struct {
	// Workload gives the I/O pattern: mix, block size, queue depth (the
	// number of goroutines issuing requests on each connection),
	// connections, and durability (a flush after each write).
	Workload
	// Duration is how long requests are measured, after Warmup.
	Duration time.Duration
	// Warmup runs the workload unmeasured before Duration starts.
	Warmup time.Duration
	// Region limits the I/O to the first Region bytes of the export
	// (0: the whole export).
	Region int64
	// OnePass ends the run once a sequential workload has covered the
	// region once, instead of after Duration (used to fill exports).
	OnePass bool
	// Verify writes self-checking data (see blockfmt.go) and checks every
	// read: blocks this run wrote must hold exactly what it wrote (or, after
	// a failed write, either the old or the new data). Blocks the run has
	// not written are checked too when Prefilled is set, and skipped
	// otherwise. Each block is owned by one goroutine, so that its expected
	// content is known exactly. BlockSize must be a multiple of 4 KiB.
	Verify bool
	// Prefilled says that every block of the region holds data this
	// generator wrote with Verify (as the harness's fill does), so that
	// blocks not written in this run can be checked for header, offset and
	// checksum too.
	Prefilled bool
	// Reconnect keeps going through errors: failed requests are counted,
	// broken connections are dialed again (every 10 ms until they come
	// back). Without it, the first error ends the run with that error.
	Reconnect bool
	// Seed makes the offsets and data reproducible.
	Seed uint64
	// Stop, when closed, ends the run early (Duration still bounds it).
	Stop <-chan struct{}
	// Live, when set, is kept up to date while the run goes, for callers
	// that act on it (scenarios wait for I/O to resume).
	Live *Live
}

// Live shows a run of the load generator while it goes.
type Live struct {
	last      atomic.Int64 // UnixNano of the last successful completion
	completed atomic.Int64
}

// LastCompletion returns when a request last completed successfully (the
// zero time before the first).
func (l *Live) LastCompletion() time.Time {
	if n := l.last.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// Completed returns how many requests completed successfully so far.
func (l *Live) Completed() int64 { return l.completed.Load() }

// LoadResult is what a run of the Go load generator measured.
type LoadResult struct {
	Result
	// Started is when the run started (the warm-up included).
	Started time.Time `json:"started"`
	// Reconnects counts successful re-dials after a broken connection.
	Reconnects int `json:"reconnects"`
	// FirstError is the first failed request's error.
	FirstError string `json:"first_error,omitempty"`
	// FirstErrorAt and LastErrorAt are when the first and the last failed
	// request completed, since Started.
	FirstErrorAt time.Duration `json:"first_error_at_ns,omitempty"`
	LastErrorAt  time.Duration `json:"last_error_at_ns,omitempty"`
	// MaxGap is the longest time during which no request completed
	// successfully (on any connection), MaxGapAt when it began, since
	// Started. A gap still open at the end of the run counts up to the end.
	MaxGap   time.Duration `json:"max_gap_ns"`
	MaxGapAt time.Duration `json:"max_gap_at_ns"`
	// Gaps lists every gap of at least GapThreshold (the first maxGaps of
	// them), in the order they ended.
	Gaps []Gap `json:"gaps"`
	// Stopped is when the run stopped issuing requests, since Started.
	Stopped time.Duration `json:"stopped_ns"`
}

// Gap is a time during which no request completed successfully.
type Gap struct {
	// At is when the gap began (the last completion before it), since the
	// run started.
	At time.Duration `json:"at_ns"`
	// Length is how long it lasted.
	Length time.Duration `json:"length_ns"`
}

// GapThreshold is the shortest gap LoadResult.Gaps lists.
const GapThreshold = time.Millisecond

// maxGaps bounds LoadResult.Gaps.
const maxGaps = 10000

// Histogram range and precision: 1 ns to 100 s with two significant
// digits (values within 1%, finer than fio's own latency bins), small
// enough (≈30 KB) for one histogram per goroutine with no locking.
const (
	histMax    = int64(100 * time.Second)
	histDigits = 2

	redialEvery = 10 * time.Millisecond
	dialTimeout = 10 * time.Second
	// requestGrace bounds how long requests may still run once the run has
	// stopped: a server that never answers cannot hang the harness.
	requestGrace = 5 * time.Second
)

// blockState is what a verifying run knows a block holds: the stamp of
// the last acknowledged write (0: unknown) and those of writes that failed
// after it, which may or may not have reached the disk.
type blockState struct {
	want  uint64
	maybe []uint64
}

// allows reports whether a unit holding stamp is consistent with st.
func (st blockState) allows(stamp uint64) bool {
	return stamp == st.want || slices.Contains(st.maybe, stamp)
}

// generator is the shared state of one RunLoad.
type generator struct {
	spec    LoadSpec
	ep      Endpoint
	slots   []*connSlot
	nblocks int64
	workers int
	start   time.Time
	measure time.Time // start of the measured window
	end     time.Time // end of the measured window (zero for OnePass)
	nonce   uint64

	seq   atomic.Int64 // next block of the shared sequential stream
	state []blockState // Verify: indexed by block, each touched by its owner only

	lastDone atomic.Int64 // UnixNano of the last successful completion
	gapMu    sync.Mutex
	maxGap   atomic.Int64
	maxGapAt int64
	gaps     []Gap

	errors     atomic.Int64
	verified   atomic.Int64
	mismatches atomic.Int64
	errMu      sync.Mutex
	firstErr   string
	firstErrAt time.Time
	lastErrAt  time.Time
	firstMis   string
	fatal      error

	stopCtx context.Context
	stop    context.CancelFunc
}

// worker is the per-goroutine part of a run.
type worker struct {
	g                 *generator
	id                int
	slot              *connSlot
	rng               *rand.Rand
	rbuf, wbuf        []byte
	n                 uint64
	next              int64 // Verify + sequential: next block index of this worker
	reads, writes     int64
	read, write, sync *hdrhistogram.Histogram
}

// RunLoad runs the Go load generator against ep as spec says and returns
// what it measured. It honours ctx: cancelling it ends the run with
// ctx.Err(). Data verification failures are reported in the result
// (Mismatches), not as an error.
func RunLoad(ctx context.Context, ep Endpoint, spec LoadSpec) (*LoadResult, error) {
	if err := spec.Workload.Validate(); err != nil {
		return nil, err
	}
	if !spec.OnePass && spec.Duration <= 0 {
		return nil, fmt.Errorf("load %s: duration must be positive", spec.Name)
	}
	if spec.OnePass && spec.Random {
		return nil, fmt.Errorf("load %s: one pass needs a sequential workload", spec.Name)
	}
	if spec.Verify && spec.BlockSize%unitSize != 0 {
		return nil, fmt.Errorf("load %s: verification needs a block size that is a multiple of %d, got %d", spec.Name, unitSize, spec.BlockSize)
	}
	g := &generator{spec: spec, ep: ep, workers: spec.Conns * spec.QueueDepth}
	defer g.closeConns()
	var size int64
	for i := 0; i < spec.Conns; i++ {
		s := &connSlot{ep: ep}
		if err := s.dial(ctx); err != nil {
			return nil, fmt.Errorf("load %s: %w", spec.Name, err)
		}
		g.slots = append(g.slots, s)
		size = s.c.Size()
	}
	region := spec.Region
	if region == 0 {
		region = size
	}
	if region > size {
		return nil, fmt.Errorf("load %s: region of %d bytes but the export %s has only %d", spec.Name, region, ep.URI(), size)
	}
	g.nblocks = region / int64(spec.BlockSize)
	if g.nblocks < 1 {
		return nil, fmt.Errorf("load %s: export of %d bytes is smaller than one %d-byte block", spec.Name, region, spec.BlockSize)
	}
	if spec.Verify {
		if g.nblocks < int64(g.workers) {
			return nil, fmt.Errorf("load %s: verification gives each of the %d goroutines its own blocks, but the region has only %d blocks", spec.Name, g.workers, g.nblocks)
		}
		g.state = make([]blockState, g.nblocks)
	}
	// Stamps: a per-run nonce, the goroutine, its write count.
	g.nonce = uint64(rand.Uint32()&0xff) << 56

	g.start = time.Now()
	g.measure = g.start.Add(spec.Warmup)
	if !spec.OnePass {
		g.end = g.measure.Add(spec.Duration)
	}
	g.lastDone.Store(g.start.UnixNano())
	g.stopCtx, g.stop = context.WithCancel(ctx)
	defer g.stop()
	// Requests get requestGrace after the stop to finish.
	reqCtx, cancelReq := context.WithCancel(ctx)
	defer cancelReq()

	var stoppedAt atomic.Int64
	workersDone := make(chan struct{})
	go func() {
		var timer <-chan time.Time
		if !spec.OnePass {
			t := time.NewTimer(time.Until(g.end))
			defer t.Stop()
			timer = t.C
		}
		select {
		case <-timer:
		case <-spec.Stop:
		case <-g.stopCtx.Done():
		case <-workersDone:
		}
		stoppedAt.Store(time.Now().UnixNano())
		g.stop()
		select {
		case <-workersDone:
		case <-time.After(requestGrace):
			cancelReq()
		}
	}()

	ws := make([]*worker, g.workers)
	var wg sync.WaitGroup
	for i := range ws {
		w := &worker{
			g: g, id: i, slot: g.slots[i/spec.QueueDepth],
			rng:  rand.New(rand.NewPCG(spec.Seed, uint64(i)+1)),
			rbuf: make([]byte, spec.BlockSize),
			wbuf: make([]byte, spec.BlockSize),
			next: int64(i),
		}
		fillBody(w.wbuf, spec.Seed+uint64(i))
		ws[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.run(ctx, reqCtx)
		}()
	}
	wg.Wait()
	close(workersDone)
	finished := time.Now()
	if stoppedAt.Load() == 0 {
		stoppedAt.Store(finished.UnixNano())
	}
	stopped := time.Unix(0, stoppedAt.Load())
	// A gap still open when the run stopped counts up to the stop.
	g.spec.Live = nil
	g.completed(stopped.UnixNano())

	res := g.result(ws, stopped)
	if g.fatal != nil {
		return res, g.fatal
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	return res, nil
}

// result merges the workers' figures.
func (g *generator) result(ws []*worker, stopped time.Time) *LoadResult {
	read := hdrhistogram.New(1, histMax, histDigits)
	write := hdrhistogram.New(1, histMax, histDigits)
	syn := hdrhistogram.New(1, histMax, histDigits)
	var reads, writes int64
	for _, w := range ws {
		reads += w.reads
		writes += w.writes
		for _, p := range []struct{ to, from *hdrhistogram.Histogram }{{read, w.read}, {write, w.write}, {syn, w.sync}} {
			if p.from != nil {
				p.to.Merge(p.from)
			}
		}
	}
	endAt := stopped
	if !g.end.IsZero() && g.end.Before(endAt) {
		endAt = g.end
	}
	elapsed := endAt.Sub(g.measure)
	res := &LoadResult{
		Result: Result{
			Client:        "go",
			Elapsed:       elapsed,
			Read:          latencyOf(read),
			Write:         latencyOf(write),
			Sync:          latencyOf(syn),
			Errors:        g.errors.Load(),
			Verified:      g.verified.Load(),
			Mismatches:    g.mismatches.Load(),
			FirstMismatch: g.firstMis,
		},
		Started:  g.start,
		MaxGap:   time.Duration(g.maxGap.Load()),
		MaxGapAt: time.Duration(g.maxGapAt - g.start.UnixNano()),
		Stopped:  stopped.Sub(g.start),
		Gaps:     g.gaps,
	}
	if res.Gaps == nil {
		res.Gaps = []Gap{}
	}
	if elapsed > 0 {
		s := elapsed.Seconds()
		res.ReadIOPS = float64(reads) / s
		res.WriteIOPS = float64(writes) / s
		res.IOPS = res.ReadIOPS + res.WriteIOPS
		res.BytesPerSec = res.IOPS * float64(g.spec.BlockSize)
	}
	for _, s := range g.slots {
		res.Reconnects += s.reconnects
	}
	if g.firstErr != "" {
		res.FirstError = g.firstErr
		res.FirstErrorAt = g.firstErrAt.Sub(g.start)
		res.LastErrorAt = g.lastErrAt.Sub(g.start)
	}
	return res
}

func (g *generator) closeConns() {
	for _, s := range g.slots {
		s.close()
	}
}

// completed records a successful completion at t (UnixNano) for the gap
// measurement. Completions of concurrent goroutines may be recorded
// slightly out of order; such negative gaps are ignored.
func (g *generator) completed(t int64) {
	if l := g.spec.Live; l != nil {
		l.last.Store(t)
		l.completed.Add(1)
	}
	prev := g.lastDone.Swap(t)
	gap := t - prev
	if gap < int64(GapThreshold) {
		return
	}
	g.gapMu.Lock()
	defer g.gapMu.Unlock()
	if len(g.gaps) < maxGaps {
		g.gaps = append(g.gaps, Gap{At: time.Duration(prev - g.start.UnixNano()), Length: time.Duration(gap)})
	}
	if gap > g.maxGap.Load() {
		g.maxGap.Store(gap)
		g.maxGapAt = prev
	}
}

// failed records a failed request; without Reconnect it ends the run.
func (g *generator) failed(err error) {
	g.errors.Add(1)
	now := time.Now()
	g.errMu.Lock()
	if g.firstErr == "" {
		g.firstErr = err.Error()
		g.firstErrAt = now
	}
	g.lastErrAt = now
	if !g.spec.Reconnect && g.fatal == nil {
		g.fatal = fmt.Errorf("load %s on %s: %w", g.spec.Name, g.ep.URI(), err)
		g.stop()
	}
	g.errMu.Unlock()
}

// mismatch records a verification failure.
func (g *generator) mismatch(err error) {
	g.mismatches.Add(1)
	g.errMu.Lock()
	if g.firstMis == "" {
		g.firstMis = err.Error()
	}
	g.errMu.Unlock()
}

// stopped reports whether the run has ended.
func (g *generator) stopped() bool {
	select {
	case <-g.stopCtx.Done():
		return true
	default:
		return false
	}
}

// pick returns the next block index, or false when a one-pass run is done.
func (w *worker) pick() (int64, bool) {
	g := w.g
	W := int64(g.workers)
	switch {
	case g.spec.Verify && g.spec.Random:
		// Blocks id, id+W, id+2W, … belong to this worker.
		return int64(w.id) + W*w.rng.Int64N((g.nblocks-int64(w.id)+W-1)/W), true
	case g.spec.Random:
		return w.rng.Int64N(g.nblocks), true
	case g.spec.Verify:
		b := w.next
		if b >= g.nblocks {
			if g.spec.OnePass {
				return 0, false
			}
			b = int64(w.id)
		}
		w.next = b + W
		return b, true
	default:
		b := g.seq.Add(1) - 1
		if b >= g.nblocks {
			if g.spec.OnePass {
				return 0, false
			}
			b %= g.nblocks
		}
		return b, true
	}
}

// hist returns *h, creating it on first use.
func hist(h **hdrhistogram.Histogram) *hdrhistogram.Histogram {
	if *h == nil {
		*h = hdrhistogram.New(1, histMax, histDigits)
	}
	return *h
}

// run issues requests one after another until the run stops.
func (w *worker) run(ctx, reqCtx context.Context) {
	g := w.g
	bs := int64(g.spec.BlockSize)
	for !g.stopped() {
		b, ok := w.pick()
		if !ok {
			return
		}
		off := b * bs
		isRead := g.spec.ReadPercent == 100 || (g.spec.ReadPercent > 0 && w.rng.IntN(100) < g.spec.ReadPercent)
		c, gen := w.slot.get()
		if c == nil {
			return // the slot was closed: the run is over
		}
		var stamp uint64
		var err error
		t0 := time.Now()
		var tw time.Time
		if isRead {
			err = c.ReadAt(reqCtx, w.rbuf, off, 0)
		} else {
			if g.spec.Verify {
				w.n++
				stamp = g.nonce | uint64(w.id+1)<<32 | (w.n & 0xffffffff) // id+1 < 2^24
				formatUnits(w.wbuf, off, stamp)
			}
			err = c.WriteAt(reqCtx, w.wbuf, off, 0)
			if err == nil && g.spec.Verify {
				g.state[b] = blockState{want: stamp} // drops older failed writes
			}
			if err == nil && g.spec.Durable {
				tw = time.Now()
				err = c.Flush(reqCtx)
			}
		}
		t1 := time.Now()
		if err != nil {
			if ctx.Err() != nil {
				return // cancelled by the caller: not the server's fault
			}
			if errors.Is(err, context.Canceled) && reqCtx.Err() != nil {
				err = fmt.Errorf("request still unanswered %v after the run ended", requestGrace)
			}
			if !isRead && g.spec.Verify && tw.IsZero() {
				g.state[b].maybe = append(g.state[b].maybe, stamp)
			}
			g.failed(err)
			if g.spec.Reconnect && c.Err() != nil {
				w.slot.redial(g.stopCtx, gen)
			}
			continue
		}
		g.completed(t1.UnixNano())
		if isRead && g.spec.Verify {
			w.check(b, off)
		}
		if t0.Before(g.measure) || (!g.end.IsZero() && t1.After(g.end)) {
			continue // warm-up, or past the measured window
		}
		if isRead {
			w.reads++
			_ = hist(&w.read).RecordValue(int64(t1.Sub(t0)))
		} else {
			w.writes++
			if tw.IsZero() {
				_ = hist(&w.write).RecordValue(int64(t1.Sub(t0)))
			} else {
				_ = hist(&w.write).RecordValue(int64(tw.Sub(t0)))
				_ = hist(&w.sync).RecordValue(int64(t1.Sub(tw)))
			}
		}
	}
}

// check verifies the block b just read at off into w.rbuf.
func (w *worker) check(b, off int64) {
	g := w.g
	st := g.state[b]
	for u := 0; u < len(w.rbuf); u += unitSize {
		uoff := off + int64(u)
		stamp, err := unitStamp(w.rbuf[u:u+unitSize], uoff)
		switch {
		case st.want == 0 && !g.spec.Prefilled:
			// Unknown content: nothing to hold it against, unless it claims
			// to be ours.
			if err == nil {
				g.verified.Add(1)
			}
			continue
		case err != nil:
			g.mismatch(err)
		case st.want == 0, st.allows(stamp):
			g.verified.Add(1)
		default:
			g.mismatch(fmt.Errorf("unit at %d holds the data of write %#x, want write %#x (lost or stale write)", uoff, stamp, st.want))
		}
	}
}

// connSlot is one NBD connection of a run, re-dialed when it breaks.
type connSlot struct {
	ep         Endpoint
	mu         sync.Mutex
	c          *nbdclient.Conn
	gen        uint64
	reconnects int
	closed     bool
}

func (s *connSlot) dial(ctx context.Context) error {
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	c, err := nbdclient.Dial(dctx, s.ep.Network, s.ep.Addr, nbdclient.Options{Export: s.ep.Export})
	if err != nil {
		return err
	}
	s.c = c
	s.gen++
	return nil
}

// get returns the current connection and its generation.
func (s *connSlot) get() (*nbdclient.Conn, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, 0
	}
	return s.c, s.gen
}

// redial replaces the broken connection of generation gen, retrying every
// redialEvery until it succeeds or ctx ends. Goroutines that saw the same
// broken connection wait here, and find it replaced.
func (s *connSlot) redial(ctx context.Context, gen uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gen != gen || s.closed {
		return
	}
	s.c.Close()
	for ctx.Err() == nil {
		if err := s.dial(ctx); err == nil {
			s.reconnects++
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(redialEvery):
		}
	}
}

func (s *connSlot) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c != nil && !s.closed {
		s.c.Close()
	}
	s.closed = true
}
