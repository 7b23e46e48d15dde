package cluster

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-project/tandem/admin/client"
	"github.com/tandem-project/tandem/internal/testbin"
	"github.com/tandem-project/tandem/nbd/nbdclient"
)

const (
	vol       = "v"
	volSize   = 64 << 20
	blockSize = 4096

	// opTimeout bounds one client request. Tandem stalls I/O for an
	// election (a few seconds at most); a request that takes this long
	// is a hang.
	opTimeout = 30 * time.Second
)

// fastArgs make failover quick where a test does not measure the default
// stall: half-second heartbeats, and I/O that fails after 30 s without a
// leader rather than 60 s.
var fastArgs = []string{"--heartbeat-timeout", "500ms", "--stall-timeout", "30s"}

// startCluster starts three agents serving volume v.
func startCluster(t *testing.T, args ...string) *testbin.Cluster {
	t.Helper()
	return testbin.StartCluster(t, testbin.ClusterConfig{
		Volumes: []string{fmt.Sprintf("%s=%d", vol, volSize)},
		Args:    args,
	})
}

// seed returns the seed of a test's random choices: TANDEM_SEED if set,
// else a fresh one. It is logged so that a failure can be replayed.
func seed(t *testing.T) uint64 {
	t.Helper()
	s := rand.Uint64()
	if v := os.Getenv("TANDEM_SEED"); v != "" {
		var err error
		if s, err = strconv.ParseUint(v, 0, 64); err != nil {
			t.Fatalf("TANDEM_SEED=%q: %v", v, err)
		}
	}
	t.Logf("seed %d (replay with TANDEM_SEED=%d)", s, s)
	return s
}

func newRand(seed uint64, stream uint64) *rand.Rand {
	return rand.New(rand.NewPCG(seed, stream))
}

// dial connects to volume v on host i, failing the test on error; the
// connection is closed when the test ends.
func dial(t *testing.T, c *testbin.Cluster, i int) *nbdclient.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := c.Dial(ctx, i, vol)
	if err != nil {
		t.Fatalf("connecting to n%d: %v", i+1, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// dialRetry connects to volume v on host i, retrying until ctx ends (the
// host may be restarting).
func dialRetry(ctx context.Context, c *testbin.Cluster, i int) (*nbdclient.Conn, error) {
	for {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := c.Dial(dctx, i, vol)
		cancel()
		if err == nil {
			return conn, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connecting to n%d: %w (last error: %v)", i+1, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Blocks are stamped: a block written with tag T (never 0) holds a header
// naming T and the block, then bytes generated from both, so that a read
// tells which write a block holds and detects torn or misplaced blocks.
// An all-zero block has tag 0 (never written).
var stampMagic = [8]byte{'t', 'a', 'n', 'd', 'e', 'm', 'T', 'B'}

func stamp(blk int64, tag uint64) []byte {
	b := make([]byte, blockSize)
	copy(b, stampMagic[:])
	binary.LittleEndian.PutUint64(b[8:], tag)
	binary.LittleEndian.PutUint64(b[16:], uint64(blk))
	x := tag*0x9e3779b97f4a7c15 ^ uint64(blk)*0xbf58476d1ce4e5b9 | 1
	for i := 24; i < blockSize; i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(b[i:], x)
	}
	return b
}

var zeroBlock = make([]byte, blockSize)

// unstamp returns the tag of block blk's content b (0 for zeroes), or an
// error if b is neither zeroes nor a whole stamped block of blk.
func unstamp(b []byte, blk int64) (uint64, error) {
	if bytes.Equal(b, zeroBlock) {
		return 0, nil
	}
	if !bytes.Equal(b[:8], stampMagic[:]) {
		return 0, fmt.Errorf("block %d holds no stamp: % x...", blk, b[:24])
	}
	tag := binary.LittleEndian.Uint64(b[8:])
	if got := int64(binary.LittleEndian.Uint64(b[16:])); got != blk {
		return tag, fmt.Errorf("block %d holds the stamp of block %d (%s)", blk, got, tagString(tag))
	}
	if !bytes.Equal(b, stamp(blk, tag)) {
		return tag, fmt.Errorf("block %d holds a torn or corrupt copy of %s", blk, tagString(tag))
	}
	return tag, nil
}

// tagOf names write number seq of writer w.
func tagOf(w int, seq uint64) uint64 { return uint64(w+1)<<40 | seq }

func tagString(tag uint64) string {
	if tag == 0 {
		return "zeroes"
	}
	return fmt.Sprintf("w%d#%d", tag>>40-1, tag&(1<<40-1))
}

func writeBlock(ctx context.Context, conn *nbdclient.Conn, blk int64, tag uint64) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	return conn.WriteAt(ctx, stamp(blk, tag), blk*blockSize, 0)
}

func readBlock(ctx context.Context, conn *nbdclient.Conn, blk int64) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	b := make([]byte, blockSize)
	if err := conn.ReadAt(ctx, b, blk*blockSize, 0); err != nil {
		return 0, err
	}
	return unstamp(b, blk)
}

// model is what each block must hold: the tag of its last acknowledged
// write, plus tags of writes whose outcome is unknown (failed requests
// that may or may not have been applied) issued since.
//
// A write acknowledged after a write of unknown outcome to the same block
// (by the same writer, which had given up on the first one and closed its
// connection) supersedes it: a disk that applied the abandoned write after
// the newer one would have lost an acknowledged write. The abandoned tags
// are kept to say so when it happens.
type model struct {
	acked     map[int64]uint64
	maybe     map[int64][]uint64
	abandoned map[int64][]uint64
}

func newModel() *model {
	return &model{acked: map[int64]uint64{}, maybe: map[int64][]uint64{}, abandoned: map[int64][]uint64{}}
}

func (m *model) blocks() []int64 {
	var bs []int64
	for b := range m.acked {
		bs = append(bs, b)
	}
	for b := range m.maybe {
		if _, ok := m.acked[b]; !ok {
			bs = append(bs, b)
		}
	}
	slices.Sort(bs)
	return bs
}

// unknown records a write of unknown outcome.
func (m *model) unknown(blk int64, tag uint64) {
	m.maybe[blk] = append(m.maybe[blk], tag)
	m.abandoned[blk] = append(m.abandoned[blk], tag)
}

// allows reports whether block blk may hold tag.
func (m *model) allows(blk int64, tag uint64) bool {
	return m.acked[blk] == tag || slices.Contains(m.maybe[blk], tag)
}

func (m *model) want(blk int64) string {
	s := tagString(m.acked[blk])
	for _, tag := range m.maybe[blk] {
		s += " or " + tagString(tag)
	}
	return s
}

// mismatch describes block blk holding tag, which m does not allow.
func (m *model) mismatch(blk int64, tag uint64) string {
	s := fmt.Sprintf("block %d holds %s, want %s", blk, tagString(tag), m.want(blk))
	if slices.Contains(m.abandoned[blk], tag) {
		s += fmt.Sprintf(": LOST WRITE: %s, a write whose client gave up on it and disconnected, was applied after the later write %s to the block had been acknowledged", tagString(tag), tagString(m.acked[blk]))
	} else if tag != 0 && tag>>40 == m.acked[blk]>>40 && tag&(1<<40-1) < m.acked[blk]&(1<<40-1) {
		s += ": LOST WRITE: it holds an older write than the last acknowledged one"
	}
	return s
}

// settle records that block blk was read back holding tag (allowed by
// the model): from now on it must hold that.
func (m *model) settle(blk int64, tag uint64) {
	m.acked[blk] = tag
	delete(m.maybe, blk)
}

// writer returns a function that writes block blk through conn with the
// next tag of writer 0, failing the test on error, and settles it in m.
// It is for the test's goroutine only.
func (m *model) writer(t *testing.T) func(conn *nbdclient.Conn, blk int64) {
	seq := uint64(0)
	return func(conn *nbdclient.Conn, blk int64) {
		t.Helper()
		seq++
		tag := tagOf(0, seq)
		if err := writeBlock(context.Background(), conn, blk, tag); err != nil {
			t.Fatalf("writing block %d: %v", blk, err)
		}
		m.settle(blk, tag)
	}
}

// checkThrough reads every block of m through host i and returns one
// error per block that does not hold what m allows (at most 10).
func checkThrough(ctx context.Context, c *testbin.Cluster, i int, m *model) []error {
	conn, err := dialRetry(ctx, c, i)
	if err != nil {
		return []error{err}
	}
	defer conn.Close()
	blocks := m.blocks()
	got := make([]uint64, len(blocks))
	errs := make([]error, len(blocks))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for k, blk := range blocks {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			got[k], errs[k] = readBlock(ctx, conn, blk)
		}()
	}
	wg.Wait()
	var out []error
	for k, blk := range blocks {
		switch {
		case errs[k] != nil:
			out = append(out, fmt.Errorf("n%d: reading block %d: %w", i+1, blk, errs[k]))
		case !m.allows(blk, got[k]):
			out = append(out, fmt.Errorf("n%d: %s", i+1, m.mismatch(blk, got[k])))
		}
		if len(out) == 10 {
			out = append(out, errors.New("(more errors not shown)"))
			break
		}
	}
	return out
}

// verifyThrough fails the test unless every block of m reads back through
// every running host as m allows.
func verifyThrough(t *testing.T, c *testbin.Cluster, m *model, hosts ...int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if len(hosts) == 0 {
		for i := range c.Nodes {
			if c.Running(i) {
				hosts = append(hosts, i)
			}
		}
	}
	for _, i := range hosts {
		for _, err := range checkThrough(ctx, c, i, m) {
			t.Error(err)
		}
	}
}

// checkReplicaFile compares the replica file of host i with m, block by
// block, and returns the first difference.
func checkReplicaFile(c *testbin.Cluster, i int, m *model) error {
	f, err := os.Open(c.VolumePath(i, vol))
	if err != nil {
		return err
	}
	defer f.Close()
	b := make([]byte, blockSize)
	for _, blk := range m.blocks() {
		if _, err := f.ReadAt(b, blk*blockSize); err != nil {
			return fmt.Errorf("reading block %d: %w", blk, err)
		}
		tag, err := unstamp(b, blk)
		if err != nil {
			return err
		}
		if !m.allows(blk, tag) {
			return errors.New(m.mismatch(blk, tag))
		}
	}
	return nil
}

// waitReplicaFile waits until the replica file of host i (read directly,
// while the agent runs or not) holds every block of m as m allows: the
// proof that this host's replica, not just the leader's, has the data.
func waitReplicaFile(t *testing.T, c *testbin.Cluster, i int, m *model, timeout time.Duration) {
	t.Helper()
	if err := waitReplicaFileErr(t, c, i, m, timeout); err != nil {
		t.Fatal(err)
	}
}

// waitReplicaFileErr is waitReplicaFile returning the failure.
func waitReplicaFileErr(t *testing.T, c *testbin.Cluster, i int, m *model, timeout time.Duration) error {
	t.Helper()
	start := time.Now()
	for {
		err := checkReplicaFile(c, i, m)
		if err == nil {
			t.Logf("n%d: replica file holds all %d blocks (after %v)", i+1, len(m.blocks()), time.Since(start).Round(time.Millisecond))
			return nil
		}
		if time.Since(start) > timeout {
			return fmt.Errorf("n%d: replica file %s still differs after %v: %v", i+1, c.VolumePath(i, vol), timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// filesEqual fails the test unless the replica files of every host are
// byte for byte identical (call it with the agents stopped); differing
// blocks are named with what each file holds.
func filesEqual(t *testing.T, c *testbin.Cluster) {
	t.Helper()
	var first []byte
	for i := range c.Nodes {
		b, err := os.ReadFile(c.VolumePath(i, vol))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = b
			continue
		}
		if len(b) != len(first) {
			t.Errorf("replica files differ: n1 has %d bytes, n%d %d", len(first), i+1, len(b))
			continue
		}
		var diff []string
		n := 0
		for off := 0; off < len(b); off += blockSize {
			if bytes.Equal(b[off:off+blockSize], first[off:off+blockSize]) {
				continue
			}
			n++
			if len(diff) < 5 {
				blk := int64(off / blockSize)
				diff = append(diff, fmt.Sprintf("block %d: n1 %s, n%d %s", blk, describeBlock(first[off:off+blockSize], blk), i+1, describeBlock(b[off:off+blockSize], blk)))
			}
		}
		if n > 0 {
			t.Errorf("replica files of n1 and n%d differ in %d blocks: %s", i+1, n, strings.Join(diff, "; "))
		}
	}
}

// describeBlock names the content of block blk.
func describeBlock(b []byte, blk int64) string {
	tag, err := unstamp(b, blk)
	if err != nil {
		return err.Error()
	}
	return tagString(tag)
}

// writers runs a stream of stamped block writes: writer w has its own
// connection and its own blocks, writes them round-robin one at a time,
// and records which writes were acknowledged and when.
type writers struct {
	c        *testbin.Cluster
	opts     writerOpts
	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup

	mu    sync.Mutex
	m     *model
	times []time.Time // completion time of each acknowledged write
	end   time.Time   // when halt was called
	errs  []string
	seqs  []uint64
}

type writerOpts struct {
	n       int                  // writers
	blocks  int                  // blocks per writer
	base    int64                // first block
	host    func(w int) int      // host writer w connects to first
	redial  bool                 // on an error, reconnect and go on (else the writer stops)
	pick    func(w int) int      // host to reconnect to (default: host(w))
	errs    func(err error) bool // optional: returns true if err is to be recorded as a test error
	timeout time.Duration        // of one request (default opTimeout)
	seq0    uint64               // writes are numbered from seq0+1
}

// startWriters starts the writers; they stop when halt is called, or at
// the end of the test at the latest.
func startWriters(t *testing.T, c *testbin.Cluster, m *model, o writerOpts) *writers {
	if o.pick == nil {
		o.pick = o.host
	}
	if o.timeout == 0 {
		o.timeout = opTimeout
	}
	ws := &writers{c: c, opts: o, stop: make(chan struct{}), m: m, seqs: make([]uint64, o.n)}
	for w := range ws.seqs {
		ws.seqs[w] = o.seq0
	}
	for w := range o.n {
		ws.wg.Add(1)
		go ws.run(w)
	}
	t.Cleanup(func() { ws.stopOnce.Do(func() { close(ws.stop) }) })
	return ws
}

// settle is m.settle for a model the writers are updating concurrently.
func (ws *writers) settle(blk int64, tag uint64) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.m.settle(blk, tag)
}

// unknown is m.unknown for a model the writers are updating concurrently.
func (ws *writers) unknown(blk int64, tag uint64) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.m.unknown(blk, tag)
}

func (ws *writers) stopped() bool {
	select {
	case <-ws.stop:
		return true
	default:
		return false
	}
}

func (ws *writers) run(w int) {
	defer ws.wg.Done()
	// Dialing gives up when the writers stop; a request in flight then
	// still completes (or times out after opTimeout).
	dialCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-ws.stop:
			cancel()
		case <-dialCtx.Done():
		}
	}()
	ctx := context.Background()
	host := ws.opts.host(w)
	var conn *nbdclient.Conn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	for !ws.stopped() {
		if conn == nil {
			var err error
			conn, err = dialRetry(dialCtx, ws.c, host)
			if err != nil {
				if ws.stopped() {
					return
				}
				ws.fail(w, err)
				return
			}
		}
		ws.mu.Lock()
		ws.seqs[w]++
		seq := ws.seqs[w]
		ws.mu.Unlock()
		blk := ws.opts.base + int64(w*ws.opts.blocks) + int64(seq)%int64(ws.opts.blocks)
		tag := tagOf(w, seq)
		wctx, cancel := context.WithTimeout(ctx, ws.opts.timeout)
		err := writeBlock(wctx, conn, blk, tag)
		cancel()
		now := time.Now()
		ws.mu.Lock()
		if err == nil {
			ws.m.settle(blk, tag)
			ws.times = append(ws.times, now)
		} else {
			ws.m.unknown(blk, tag)
		}
		ws.mu.Unlock()
		if err != nil {
			if !ws.opts.redial {
				ws.fail(w, fmt.Errorf("write %s to block %d through n%d: %w", tagString(tag), blk, host+1, err))
				return
			}
			if ws.opts.errs != nil && ws.opts.errs(err) {
				ws.fail(w, fmt.Errorf("write %s to block %d through n%d: %w", tagString(tag), blk, host+1, err))
			}
			conn.Close()
			conn = nil
			host = ws.opts.pick(w)
		}
	}
}

func (ws *writers) fail(w int, err error) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.errs = append(ws.errs, fmt.Sprintf("writer %d: %v", w, err))
}

// halt stops the writers once their current request completed and
// returns the errors they recorded.
func (ws *writers) halt() []string {
	ws.mu.Lock()
	ws.end = time.Now()
	ws.mu.Unlock()
	ws.stopOnce.Do(func() { close(ws.stop) })
	ws.wg.Wait()
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return ws.errs
}

// acked returns the number of acknowledged writes so far.
func (ws *writers) acked() int {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return len(ws.times)
}

// longestGap returns the longest time between two consecutive
// acknowledgements (of any writers), or between the last one and the
// call of halt, and when it started.
func (ws *writers) longestGap() (time.Duration, time.Time) {
	ws.mu.Lock()
	times := slices.Clone(ws.times)
	if !ws.end.IsZero() {
		times = append(times, ws.end)
	}
	ws.mu.Unlock()
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	var gap time.Duration
	var at time.Time
	for k := 1; k < len(times); k++ {
		if d := times[k].Sub(times[k-1]); d > gap {
			gap, at = d, times[k-1]
		}
	}
	return gap, at
}

// firstAfter returns the first acknowledgement after ts (zero if none).
func (ws *writers) firstAfter(ts time.Time) time.Time {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	var first time.Time
	for _, x := range ws.times {
		if x.After(ts) && (first.IsZero() || x.Before(first)) {
			first = x
		}
	}
	return first
}

// waitAcked waits until n more writes than now were acknowledged, and
// fails the test if that takes longer than timeout.
func (ws *writers) waitAcked(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	if err := ws.waitAckedErr(n, timeout); err != nil {
		t.Fatal(err)
	}
}

// waitAckedErr waits until n more writes than now were acknowledged, for
// up to timeout.
func (ws *writers) waitAckedErr(n int, timeout time.Duration) error {
	start := ws.acked()
	deadline := time.Now().Add(timeout)
	for ws.acked() < start+n {
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d writes acknowledged in %v", ws.acked()-start, n, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// smallLast returns HostArgs that offer the last of n hosts only capacity
// (an agent --capacity value), so that placement passes it over while
// the others have room: the host self-healing then moves replicas to.
func smallLast(n int, capacity string) func(i int) []string {
	return func(i int) []string {
		if i == n-1 {
			return []string{"--capacity", capacity}
		}
		return nil
	}
}

// waitReplicasOn waits until volume v's replicas are on hosts (sorted)
// and it is not moving.
func waitReplicasOn(t *testing.T, api *client.Client, timeout time.Duration, what string, hosts ...string) {
	t.Helper()
	testbin.WaitFor(t, timeout, what, func() error {
		v, err := api.Volume(context.Background(), vol)
		if err != nil {
			return err
		}
		on := slices.Sorted(slices.Values(v.Hosts))
		if !slices.Equal(on, hosts) || v.Move != nil {
			return fmt.Errorf("replicas on %v, move %+v, last move %+v", on, v.Move, v.LastMove)
		}
		return nil
	})
}
