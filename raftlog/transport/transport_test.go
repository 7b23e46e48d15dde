package transport

import (
	"bytes"
	"errors"
	"net"
	"runtime"
	"testing"
	"testing/iotest"
	"time"

	"github.com/hashicorp/raft"
)

// tcpLayer is a raft.StreamLayer on a plain loopback listener.
type tcpLayer struct{ net.Listener }

func (l tcpLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return net.DialTimeout("tcp", string(addr), timeout)
}

func newLayer(t *testing.T) tcpLayer {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return tcpLayer{l}
}

func appendReq(data ...[]byte) *raft.AppendEntriesRequest {
	req := &raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{Addr: []byte("leader")}, Term: 3, PrevLogEntry: 1, PrevLogTerm: 2, LeaderCommitIndex: 1}
	for i, d := range data {
		req.Entries = append(req.Entries, &raft.Log{Index: uint64(i + 2), Term: 3, Type: raft.LogCommand, Data: d})
	}
	return req
}

func TestAppendEntriesCarriesData(t *testing.T) {
	a := New(Config{Stream: newLayer(t)})
	b := New(Config{Stream: newLayer(t)})
	defer a.Close()
	defer b.Close()
	big := bytes.Repeat([]byte{7}, 3<<20)
	go func() {
		rpc := <-b.Consumer()
		req := rpc.Command.(*raft.AppendEntriesRequest)
		ok := len(req.Entries) == 3 && bytes.Equal(req.Entries[0].Data, []byte("x")) &&
			req.Entries[1].Data == nil && bytes.Equal(req.Entries[2].Data, big) && req.Entries[2].Index == 4
		rpc.Respond(&raft.AppendEntriesResponse{Term: 3, Success: ok, LastLog: 4}, nil)
	}()
	var resp raft.AppendEntriesResponse
	if err := a.AppendEntries("b", b.LocalAddr(), appendReq([]byte("x"), nil, big), &resp); err != nil {
		t.Fatal(err)
	}
	if !resp.Success || resp.LastLog != 4 {
		t.Fatalf("entries did not arrive intact: %+v", resp)
	}
}

func TestHeartbeatFastPath(t *testing.T) {
	a := New(Config{Stream: newLayer(t)})
	b := New(Config{Stream: newLayer(t)})
	defer a.Close()
	defer b.Close()
	hit := make(chan struct{}, 1)
	b.SetHeartbeatHandler(func(rpc raft.RPC) {
		hit <- struct{}{}
		rpc.Respond(&raft.AppendEntriesResponse{Term: 3, Success: true}, nil)
	})
	hb := &raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{Addr: []byte("leader")}, Term: 3}
	var resp raft.AppendEntriesResponse
	if err := a.AppendEntries("b", b.LocalAddr(), hb, &resp); err != nil || !resp.Success {
		t.Fatalf("heartbeat: %v %+v", err, resp)
	}
	select {
	case <-hit:
	default:
		t.Fatal("heartbeat did not take the fast path")
	}
}

// TestAnswered: Answered tells when a target last answered an
// AppendEntries (heartbeats included), and never for one that did not.
func TestAnswered(t *testing.T) {
	a := New(Config{Stream: newLayer(t), Timeout: 300 * time.Millisecond})
	b := New(Config{Stream: newLayer(t)})
	defer a.Close()
	defer b.Close()
	b.SetHeartbeatHandler(func(rpc raft.RPC) { rpc.Respond(&raft.AppendEntriesResponse{Term: 3, Success: true}, nil) })
	if at := a.Answered(b.LocalAddr()); !at.IsZero() {
		t.Fatalf("answered at %v before any request", at)
	}
	before := time.Now()
	hb := &raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{Addr: []byte("leader")}, Term: 3}
	var resp raft.AppendEntriesResponse
	if err := a.AppendEntries("b", b.LocalAddr(), hb, &resp); err != nil {
		t.Fatal(err)
	}
	if at := a.Answered(b.LocalAddr()); at.Before(before) {
		t.Fatalf("answered at %v, before the heartbeat sent at %v", at, before)
	}
	// A host that accepts connections but never answers.
	silent := newLayer(t)
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	if err := a.AppendEntries("c", raft.ServerAddress(silent.Addr().String()), hb, &resp); err == nil {
		t.Fatal("a host that never answers answered")
	}
	if at := a.Answered(raft.ServerAddress(silent.Addr().String())); !at.IsZero() {
		t.Fatalf("the silent host answered at %v", at)
	}
}

// A pipeline whose peer stops answering must not block its sender once raft
// stops reading responses (it would never get to Close).
func TestPipelineFailureDoesNotBlock(t *testing.T) {
	a := New(Config{Stream: newLayer(t), Timeout: 2 * time.Second, MaxInFlight: 2})
	defer a.Close()
	peer := newLayer(t)
	defer peer.Close()
	go func() {
		c, err := peer.Accept()
		if err != nil {
			return
		}
		// Answer the first request, then drop the connection.
		pc := newConn("", c)
		typ, _ := pc.r.ReadByte()
		var req raft.AppendEntriesRequest
		if typ != rpcAppendEntries || pc.dec.Decode(&req) != nil || readEntriesData(pc.r, &req) != nil {
			c.Close()
			return
		}
		pc.enc.Encode("")
		pc.enc.Encode(&raft.AppendEntriesResponse{Term: 3, Success: true})
		pc.w.Flush()
		time.Sleep(100 * time.Millisecond)
		c.Close()
	}()
	p, err := a.AppendEntriesPipeline("peer", raft.ServerAddress(peer.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.AppendEntries(appendReq([]byte("1")), &raft.AppendEntriesResponse{}); err != nil {
		t.Fatal(err)
	}
	if f := <-p.Consumer(); f.Error() != nil || !f.Response().Success {
		t.Fatalf("first response: %v", f.Error())
	}
	// Like raft after a failure: keep sending, read nothing more.
	done := make(chan error, 1)
	go func() {
		var err error
		for i := 0; i < 10 && err == nil; i++ {
			_, err = p.AppendEntries(appendReq([]byte("2")), &raft.AppendEntriesResponse{})
			time.Sleep(50 * time.Millisecond)
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("sends on a failed pipeline kept succeeding")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("AppendEntries blocked on a failed pipeline")
	}
	closed := make(chan struct{})
	go func() { p.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close blocked")
	}
}

// A pipeline whose peer answers every request but whose consumer stopped
// reading (raft's decoder quits when the leader steps down, while its
// sender may still call AppendEntries) must fail within Timeout rather
// than block the sender, and with it raft's Shutdown, forever.
func TestPipelineWithoutConsumerFails(t *testing.T) {
	a := New(Config{Stream: newLayer(t), Timeout: time.Second, MaxInFlight: 2})
	defer a.Close()
	peer := newLayer(t)
	defer peer.Close()
	go func() {
		c, err := peer.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		pc := newConn("", c)
		for {
			typ, err := pc.r.ReadByte()
			var req raft.AppendEntriesRequest
			if err != nil || typ != rpcAppendEntries || pc.dec.Decode(&req) != nil || readEntriesData(pc.r, &req) != nil {
				return
			}
			pc.enc.Encode("")
			pc.enc.Encode(&raft.AppendEntriesResponse{Term: 3, Success: true})
			pc.w.Flush()
		}
	}()
	p, err := a.AppendEntriesPipeline("peer", raft.ServerAddress(peer.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	done := make(chan error, 1)
	go func() {
		var err error
		for i := 0; i < 1000 && err == nil; i++ {
			_, err = p.AppendEntries(appendReq([]byte("x")), &raft.AppendEntriesResponse{})
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("1000 sends succeeded with nobody reading the responses")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("AppendEntries blocked on a pipeline nobody consumes")
	}
}

// Without MaxInFlight of 2 or more there is no pipeline: raft replicates
// with one AppendEntries at a time, which catches a lagging follower up.
func TestNoPipelineByDefault(t *testing.T) {
	a := New(Config{Stream: newLayer(t)})
	defer a.Close()
	if _, err := a.AppendEntriesPipeline("peer", "127.0.0.1:1"); !errors.Is(err, raft.ErrPipelineReplicationNotSupported) {
		t.Fatalf("AppendEntriesPipeline: %v, want %v", err, raft.ErrPipelineReplicationNotSupported)
	}
}

// TestReadData: entry data arrives whole whatever its size, and a length
// announced but not sent costs at most dataStep bytes of memory.
func TestReadData(t *testing.T) {
	for _, n := range []int{1, 4096, dataStep - 1, dataStep, dataStep + 1, 3*dataStep + 12345} {
		want := make([]byte, n)
		for i := range want {
			want[i] = byte(i * 7)
		}
		got, err := readData(iotest.HalfReader(bytes.NewReader(want)), n)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%d bytes: %v, equal %v", n, err, bytes.Equal(got, want))
		}
	}
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	if _, err := readData(bytes.NewReader(make([]byte, 100)), maxEntryData); err == nil {
		t.Fatal("a short read succeeded")
	}
	runtime.ReadMemStats(&m1)
	if got := m1.TotalAlloc - m0.TotalAlloc; got > 2*dataStep {
		t.Errorf("a claim of %d bytes with 100 sent allocated %d bytes", maxEntryData, got)
	}
}
