package transport

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"

	"github.com/tandem-project/tandem/internal/fuzzconn"
)

// noLayer is a raft.StreamLayer that accepts nothing until closed.
type noLayer struct{ closed chan struct{} }

func (l noLayer) Accept() (net.Conn, error) { <-l.closed; return nil, net.ErrClosed }
func (l noLayer) Close() error              { close(l.closed); return nil }
func (l noLayer) Addr() net.Addr            { return &net.TCPAddr{} }
func (l noLayer) Dial(raft.ServerAddress, time.Duration) (net.Conn, error) {
	return nil, net.ErrClosed
}

// encodeRPCs returns what a sending Transport writes for each request, one
// after the other on one connection.
func encodeRPCs(t testing.TB, rpcs ...any) []byte {
	var buf bytes.Buffer
	w := bufio.NewWriter(&buf)
	c := &conn{w: w, enc: codec.NewEncoder(w, &codec.MsgpackHandle{})}
	for _, rpc := range rpcs {
		var err error
		switch r := rpc.(type) {
		case *raft.AppendEntriesRequest:
			err = sendRPC(c, rpcAppendEntries, r)
		case *raft.RequestVoteRequest:
			err = sendRPC(c, rpcRequestVote, r)
		case *raft.RequestPreVoteRequest:
			err = sendRPC(c, rpcRequestPreVote, r)
		case *raft.TimeoutNowRequest:
			err = sendRPC(c, rpcTimeoutNow, r)
		case *raft.InstallSnapshotRequest:
			if err = w.WriteByte(rpcInstallSnapshot); err == nil {
				err = c.enc.Encode(r)
			}
			if err == nil {
				_, err = w.Write(make([]byte, r.Size))
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// FuzzHandleConn feeds arbitrary peer bytes to the receiving side of the
// transport: the RPC decoder, the raw entry data framing, the heartbeat
// fast path and snapshot streaming. Whatever arrives, the connection must
// end (no panic, no hang), and every RPC handed to raft must be whole.
func FuzzHandleConn(f *testing.F) {
	hdr := raft.RPCHeader{Addr: []byte("127.0.0.1:10810"), ID: []byte("n1")}
	f.Add(encodeRPCs(f,
		appendReq([]byte("one"), nil, bytes.Repeat([]byte{7}, 5000)),
		&raft.AppendEntriesRequest{RPCHeader: hdr, Term: 4}, // a heartbeat
		&raft.RequestVoteRequest{RPCHeader: hdr, Term: 5, LastLogIndex: 9, LastLogTerm: 4},
		&raft.RequestPreVoteRequest{RPCHeader: hdr, Term: 5, LastLogIndex: 9, LastLogTerm: 4},
		&raft.TimeoutNowRequest{RPCHeader: hdr},
	))
	f.Add(encodeRPCs(f, &raft.InstallSnapshotRequest{RPCHeader: hdr, Term: 5, LastLogIndex: 100, LastLogTerm: 4, Size: 300}))
	f.Add(encodeRPCs(f, &raft.InstallSnapshotRequest{RPCHeader: hdr, Term: 5, LastLogIndex: 7, LastLogTerm: 2, Size: 10}))
	f.Add([]byte{rpcAppendEntries, 0x80})
	f.Add([]byte{99})

	closed := make(chan struct{})
	tr := New(Config{Stream: noLayer{closed: closed}})
	f.Cleanup(func() { tr.Close() })
	tr.SetHeartbeatHandler(func(rpc raft.RPC) { rpc.Respond(&raft.AppendEntriesResponse{}, nil) })
	stop := make(chan struct{})
	f.Cleanup(func() { close(stop) })
	go func() { // stands in for raft: checks and answers every RPC
		for {
			var rpc raft.RPC
			select {
			case rpc = <-tr.Consumer():
			case <-stop:
				return
			}
			var resp any
			switch cmd := rpc.Command.(type) {
			case *raft.AppendEntriesRequest:
				for _, e := range cmd.Entries {
					if e == nil {
						panic("AppendEntries with a nil entry")
					}
				}
				resp = &raft.AppendEntriesResponse{}
			case *raft.RequestVoteRequest:
				resp = &raft.RequestVoteResponse{}
			case *raft.RequestPreVoteRequest:
				resp = &raft.RequestPreVoteResponse{}
			case *raft.TimeoutNowRequest:
				resp = &raft.TimeoutNowResponse{}
			case *raft.InstallSnapshotRequest:
				if _, err := io.Copy(io.Discard, rpc.Reader); err != nil {
					panic(err)
				}
				resp = &raft.InstallSnapshotResponse{}
			default:
				panic("unexpected RPC")
			}
			rpc.Respond(resp, nil)
		}
	}()

	f.Fuzz(func(t *testing.T, data []byte) {
		done := make(chan struct{})
		tr.wg.Add(1)
		go func() {
			defer close(done)
			tr.handleConn(fuzzconn.New(data))
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("connection did not end on a %d-byte input", len(data))
		}
	})
}
