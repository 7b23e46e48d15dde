package cluster

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/tandem-project/tandem/internal/testbin"
	"github.com/tandem-project/tandem/nbd/nbdclient"
)

// The linearizability check's model: every block is a register holding
// the value of the last write (0 before any), and the history is
// partitioned per block.
type regInput struct {
	write bool
	blk   int64
	val   uint64 // written value
}

type regOutput struct {
	val     uint64 // value read
	unknown bool   // a write whose outcome is unknown
}

var registerModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		by := map[int64][]porcupine.Operation{}
		var order []int64
		for _, op := range history {
			b := op.Input.(regInput).blk
			if _, ok := by[b]; !ok {
				order = append(order, b)
			}
			by[b] = append(by[b], op)
		}
		var out [][]porcupine.Operation
		for _, b := range order {
			out = append(out, by[b])
		}
		return out
	},
	Init: func() any { return uint64(0) },
	Step: func(state, input, output any) (bool, any) {
		in, out := input.(regInput), output.(regOutput)
		if in.write {
			return true, in.val
		}
		return out.val == state.(uint64), state
	},
	DescribeOperation: func(input, output any) string {
		in, ok1 := input.(regInput)
		out, ok2 := output.(regOutput)
		if !ok1 || !ok2 {
			return fmt.Sprintf("%v -> %v", input, output)
		}
		switch {
		case in.write && out.unknown:
			return fmt.Sprintf("write(b%d, %d) ?", in.blk, in.val)
		case in.write:
			return fmt.Sprintf("write(b%d, %d)", in.blk, in.val)
		}
		return fmt.Sprintf("read(b%d) -> %d", in.blk, out.val)
	},
	DescribeState: func(state any) string { return fmt.Sprint(state.(uint64)) },
}

// history records the operations of the linearizability test's clients.
type history struct {
	t0 time.Time

	mu      sync.Mutex
	ops     []porcupine.Operation
	pending []int // indexes in ops of writes whose outcome is unknown
	faults  []porcupine.Annotation
	clients int
	corrupt []corruptRead
}

// corruptRead is a read that returned neither zeroes nor a whole block
// as some write wrote it.
type corruptRead struct {
	client, host int
	blk          int64
	data         []byte
	call, ret    int64
}

func (h *history) now() int64 { return int64(time.Since(h.t0)) }

func (h *history) newClient() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.clients++
	return h.clients - 1
}

func (h *history) add(op porcupine.Operation, unknown bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if unknown {
		h.pending = append(h.pending, len(h.ops))
	}
	h.ops = append(h.ops, op)
}

// fault records a fault injected from start to now.
func (h *history) fault(start int64, desc string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.faults = append(h.faults, porcupine.Annotation{Tag: "faults", Start: start, End: h.now(), Description: desc, BackgroundColor: "#f4c7c3"})
}

// finish gives writes of unknown outcome the end of the history as their
// return time: they may have taken effect at any point after their call.
func (h *history) finish() []porcupine.Operation {
	h.mu.Lock()
	defer h.mu.Unlock()
	var end int64
	for _, op := range h.ops {
		end = max(end, op.Call)
		if op.Return != math.MaxInt64 {
			end = max(end, op.Return)
		}
	}
	for _, i := range h.pending {
		h.ops[i].Return = end + 1
	}
	return h.ops
}

// linClient does random whole-block reads and writes of the registers,
// one at a time, through host home (or another running host when home is
// down), until stop is closed.
func linClient(h *history, c *testbin.Cluster, r *rand.Rand, home int, nextVal *atomic.Uint64, stop <-chan struct{}, wg *sync.WaitGroup) {
	defer wg.Done()
	dialCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-dialCtx.Done():
		}
	}()
	id := h.newClient()
	host := home
	var conn *nbdclient.Conn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	buf := make([]byte, blockSize)
	for {
		select {
		case <-stop:
			return
		default:
		}
		if conn == nil {
			dctx, dcancel := context.WithTimeout(dialCtx, 2*time.Second)
			var err error
			conn, err = c.Dial(dctx, host, vol)
			dcancel()
			if err != nil {
				conn = nil
				if dialCtx.Err() != nil {
					return
				}
				// The host is down or unreachable: try another one.
				host = r.IntN(len(c.Nodes))
				time.Sleep(50 * time.Millisecond)
				continue
			}
		}
		in := regInput{write: r.IntN(2) == 0, blk: linBlocks[r.IntN(len(linBlocks))]}
		ctx, ocancel := context.WithTimeout(context.Background(), linOpTimeout)
		call := h.now()
		var err error
		var out regOutput
		if in.write {
			in.val = nextVal.Add(1)
			err = conn.WriteAt(ctx, stamp(in.blk, in.val), in.blk*blockSize, 0)
		} else {
			err = conn.ReadAt(ctx, buf, in.blk*blockSize, 0)
		}
		ret := h.now()
		ocancel()
		if err == nil && !in.write {
			var uerr error
			if out.val, uerr = unstamp(buf, in.blk); uerr != nil {
				h.mu.Lock()
				h.corrupt = append(h.corrupt, corruptRead{client: id, host: host, blk: in.blk, data: bytes.Clone(buf), call: call, ret: ret})
				h.mu.Unlock()
				continue
			}
		}
		switch {
		case err == nil:
			h.add(porcupine.Operation{ClientId: id, Input: in, Call: call, Output: out, Return: ret}, false)
		case in.write:
			// Unknown outcome: it may still take effect later. The
			// client continues as a new process in the history.
			h.add(porcupine.Operation{ClientId: id, Input: in, Call: call, Output: regOutput{unknown: true}, Return: math.MaxInt64}, true)
			id = h.newClient()
		}
		if err != nil {
			// Failed reads are dropped. Start over on a fresh connection,
			// at home if it runs.
			conn.Close()
			conn = nil
			host = home
		}
	}
}

var linBlocks = []int64{0, 1, 64, 4095}

// linOpTimeout bounds one request of the linearizability clients: a
// client on an isolated host gives up (its write's outcome is unknown)
// and moves on.
const linOpTimeout = 10 * time.Second

// TestLinearizable runs clients doing random whole-block reads and writes
// of a few blocks through all three agents while faults are injected:
// kill -9 of the leader and its restart, a clean restart of a follower,
// kill -9 of the leader again, a partition of the leader (when network
// namespaces are available) and its healing, and kill -9 of the leader. porcupine then checks that
// the history is linearizable, one register per block; writes that failed
// count as possibly taken at any time after their call.
func TestLinearizable(t *testing.T) {
	s := seed(t)
	r := newRand(s, 6)
	var c *testbin.Cluster
	nn, why := tryNetnet(t, 3)
	if nn != nil {
		c = testbin.StartCluster(t, nn.clusterConfig(fastArgs...))
		nn.checkWiring(c)
	} else {
		if os.Getenv("TANDEM_REQUIRE_TOOLS") != "" {
			t.Fatalf("network namespaces: %s (TANDEM_REQUIRE_TOOLS is set)", why)
		}
		t.Logf("no partition in this run: network namespaces: %s", why)
		c = startCluster(t, fastArgs...)
	}
	c.Leader(vol)

	h := &history{t0: time.Now()}
	t.Logf("history time 0 is %s", h.t0.UTC().Format(time.RFC3339Nano))
	var nextVal atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	const clients = 6
	for k := range clients {
		wg.Add(1)
		go linClient(h, c, newRand(s, 100+uint64(k)), k%3, &nextVal, stop, &wg)
	}
	pause := func(min, span int) {
		time.Sleep(time.Duration(min+r.IntN(span)) * time.Millisecond)
	}
	leader := func() int {
		l, err := c.WaitLeader(vol, 30*time.Second)
		if err != nil {
			close(stop)
			wg.Wait()
			t.Fatal(err)
		}
		return l
	}

	killLeader := func() {
		pause(1500, 1000)
		l := leader()
		start := h.now()
		c.Kill(l)
		pause(500, 1500)
		c.Start(l)
		h.fault(start, fmt.Sprintf("kill -9 of leader n%d, restart", l+1))
		t.Logf("killed and restarted leader n%d", l+1)
	}

	killLeader()

	pause(1500, 1000)
	l := leader()
	f := c.Followers(l)[r.IntN(2)]
	start := h.now()
	c.Stop(f)
	pause(0, 1000)
	c.Start(f)
	h.fault(start, fmt.Sprintf("restart of follower n%d", f+1))
	t.Logf("restarted follower n%d", f+1)

	killLeader()

	if nn != nil {
		pause(1500, 1000)
		l = leader()
		start = h.now()
		nn.cut(l)
		pause(2000, 2000)
		nn.heal(l)
		h.fault(start, fmt.Sprintf("partition of leader n%d", l+1))
		t.Logf("partitioned leader n%d and healed", l+1)
	}

	killLeader()
	pause(1500, 1000)

	close(stop)
	wg.Wait()
	checkLinearizable(t, h, s)
}

// checkLinearizable reports torn reads in h and checks with porcupine that
// its history is linearizable, one register per block; seed is the test's
// (to replay it).
func checkLinearizable(t *testing.T, h *history, s uint64) {
	t.Helper()
	ops := h.finish()
	var reads, writes int
	for _, op := range ops {
		if op.Input.(regInput).write {
			writes++
		} else {
			reads++
		}
	}
	t.Logf("history: %d reads, %d writes (%d of unknown outcome) by %d client processes over %v",
		reads, writes, len(h.pending), h.clients, time.Duration(h.now()).Round(time.Millisecond))
	for _, cr := range h.corrupt {
		var vals []uint64
		for _, op := range ops {
			if in := op.Input.(regInput); in.write && in.blk == cr.blk {
				vals = append(vals, in.val)
			}
		}
		t.Errorf("TORN READ: client %d read block %d through n%d (%s–%s) as a mix of writes: %s", cr.client, cr.blk, cr.host+1,
			time.Duration(cr.call).Round(time.Microsecond), time.Duration(cr.ret).Round(time.Microsecond), explainBlock(cr.data, cr.blk, vals))
	}
	if reads < 200 || writes < 200 {
		t.Errorf("too few operations to check anything: %d reads, %d writes", reads, writes)
	}

	checkStart := time.Now()
	res, info := porcupine.CheckOperationsVerbose(registerModel, ops, 2*time.Minute)
	t.Logf("porcupine: %s in %v", res, time.Since(checkStart).Round(time.Millisecond))
	if res != porcupine.Ok {
		info.AddAnnotations(h.faults)
		f, err := os.CreateTemp("", "tandem-linearizability-*.html")
		if err == nil {
			err = porcupine.Visualize(registerModel, info, f)
			f.Close()
		}
		if err != nil {
			t.Logf("writing the visualization: %v", err)
		} else {
			t.Logf("porcupine visualization: %s", f.Name())
		}
		if res == porcupine.Illegal {
			t.Errorf("the history is not linearizable (seed %d)", s)
			for _, f := range h.faults {
				t.Logf("fault %s–%s: %s", time.Duration(f.Start).Round(time.Millisecond), time.Duration(f.End).Round(time.Millisecond), f.Description)
			}
			for _, w := range witnesses(ops, h.t0, 10) {
				t.Log(w)
			}
			if p, err := saveHistory(ops); err == nil {
				t.Logf("history (JSON lines: client, write, block, value, unknown, call ns, return ns): %s", p)
			}
		} else {
			t.Errorf("porcupine could not decide within its time limit: %s", res)
		}
	}
}

// witnesses looks for simple proofs that a register history is not
// linearizable, to name the operations involved in the test log: a read of
// a value written after the read returned, a read of a value overwritten
// (by a completed write) before the read began, a read that returns an
// older value than a read that finished before it began, and a value that
// comes back after another one replaced it (a write taking effect twice).
func witnesses(ops []porcupine.Operation, t0 time.Time, limit int) []string {
	writes := map[uint64]porcupine.Operation{}
	byBlock := map[int64][]porcupine.Operation{}
	for _, op := range ops {
		in := op.Input.(regInput)
		if in.write {
			writes[in.val] = op
		}
		byBlock[in.blk] = append(byBlock[in.blk], op)
	}
	at := func(ns int64) string {
		if ns == math.MaxInt64 {
			return "never"
		}
		return time.Duration(ns).Round(time.Microsecond).String()
	}
	desc := func(op porcupine.Operation) string {
		return fmt.Sprintf("[client %d %s, %s–%s]", op.ClientId, registerModel.DescribeOperation(op.Input, op.Output), at(op.Call), at(op.Return))
	}
	unknown := func(op porcupine.Operation) bool { return op.Output.(regOutput).unknown }
	var out []string
	for blk, bops := range byBlock {
		var reads, done []porcupine.Operation
		for _, op := range bops {
			if !op.Input.(regInput).write {
				reads = append(reads, op)
			} else if !unknown(op) {
				done = append(done, op)
			}
		}
		firstSeen := map[uint64]porcupine.Operation{}
		for _, r := range reads {
			v := r.Output.(regOutput).val
			if f, ok := firstSeen[v]; !ok || r.Return < f.Return {
				firstSeen[v] = r
			}
		}
		for _, r := range reads {
			v := r.Output.(regOutput).val
			for _, r1 := range reads {
				r0 := firstSeen[v]
				if v1 := r1.Output.(regOutput).val; v1 != v && r1.Return < r.Call && r0.Return < r1.Call {
					out = append(out, fmt.Sprintf("block %d: value %d came back: %s, then %s, then %s", blk, v, desc(r0), desc(r1), desc(r)))
					break
				}
			}
			w, ok := writes[v]
			if v != 0 && !ok {
				out = append(out, fmt.Sprintf("block %d: %s read a value never written", blk, desc(r)))
				continue
			}
			if v != 0 && w.Call > r.Return {
				out = append(out, fmt.Sprintf("block %d: %s read the value of %s, which began after the read returned", blk, desc(r), desc(w)))
			}
			for _, w2 := range done {
				if w2.Input.(regInput).val == v || w2.Return >= r.Call {
					continue
				}
				if v == 0 || (!unknown(w) && w.Return < w2.Call) {
					out = append(out, fmt.Sprintf("block %d: %s is stale: %s completed before it began, after the write of what it read", blk, desc(r), desc(w2)))
					break
				}
			}
			for _, r1 := range reads {
				v1 := r1.Output.(regOutput).val
				if r1.Return >= r.Call || v1 == v {
					continue
				}
				w1, ok1 := writes[v1]
				if ok1 && (v == 0 || (!unknown(w) && w.Return < w1.Call)) {
					out = append(out, fmt.Sprintf("block %d: %s is older than %s, which returned before it began (and the write of %d came after the write of %d)", blk, desc(r), desc(r1), v1, v))
					break
				}
			}
			if len(out) >= limit {
				return out
			}
		}
	}
	return out
}

// saveHistory writes ops to a temporary file, one JSON array a line.
func saveHistory(ops []porcupine.Operation) (string, error) {
	f, err := os.CreateTemp("", "tandem-history-*.jsonl")
	if err != nil {
		return "", err
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	for _, op := range ops {
		in, out := op.Input.(regInput), op.Output.(regOutput)
		fmt.Fprintf(w, "[%d,%t,%d,%d,%t,%d,%d]\n", op.ClientId, in.write, in.blk, max(in.val, out.val), out.unknown, op.Call, op.Return)
	}
	return f.Name(), w.Flush()
}

// explainBlock describes b, the content of block blk, as ranges of bytes
// each equal to the same range of the block as one of the writes vals
// wrote it (value 0: zeroes).
func explainBlock(b []byte, blk int64, vals []uint64) string {
	stamps := map[uint64][]byte{0: zeroBlock}
	for _, v := range vals {
		stamps[v] = stamp(blk, v)
	}
	var parts []string
	for off := 0; off < len(b); {
		best, bestEnd := uint64(0), off
		for v, st := range stamps {
			end := off
			for end < len(b) && b[end] == st[end] {
				end++
			}
			if end > bestEnd {
				best, bestEnd = v, end
			}
		}
		if bestEnd == off {
			parts = append(parts, fmt.Sprintf("byte %d matches no write", off))
			off++
			continue
		}
		parts = append(parts, fmt.Sprintf("bytes %d-%d from value %d", off, bestEnd, best))
		off = bestEnd
	}
	if len(parts) > 12 {
		parts = append(parts[:12], "...")
	}
	return strings.Join(parts, ", ")
}
