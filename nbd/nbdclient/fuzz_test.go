package nbdclient

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/tandem-project/tandem/nbd/wire"
)

// Handles of the requests FuzzConn sends, so that inputs can answer them.
const (
	fuzzRead   = 1
	fuzzStatus = 2
	fuzzFlush  = 3
	fuzzWrite  = 4
)

// serverStream builds what a server sends.
type serverStream []byte

// handshakeScript is a server's side of the handshake of a client asking for
// structured replies and one metadata context, with an export of size
// bytes.
func handshakeScript(size uint64) serverStream {
	s := serverStream(binary.BigEndian.AppendUint64(nil, wire.MagicNBD))
	s = binary.BigEndian.AppendUint64(s, wire.MagicOption)
	s = binary.BigEndian.AppendUint16(s, wire.FlagFixedNew|wire.FlagNoZeroes)
	s = s.optReply(wire.OptStructuredReply, wire.RepAck, nil)
	s = s.optReply(wire.OptSetMetaContext, wire.RepMetaContext, append([]byte{0, 0, 0, 1}, "base:allocation"...))
	s = s.optReply(wire.OptSetMetaContext, wire.RepAck, nil)
	info := binary.BigEndian.AppendUint16(nil, wire.InfoExport)
	info = binary.BigEndian.AppendUint64(info, size)
	info = binary.BigEndian.AppendUint16(info, wire.TfHasFlags)
	s = s.optReply(wire.OptGo, wire.RepInfo, info)
	return s.optReply(wire.OptGo, wire.RepAck, nil)
}

func (s serverStream) optReply(opt, typ uint32, data []byte) serverStream {
	s = binary.BigEndian.AppendUint64(s, wire.MagicOptReply)
	s = binary.BigEndian.AppendUint32(s, opt)
	s = binary.BigEndian.AppendUint32(s, typ)
	s = binary.BigEndian.AppendUint32(s, uint32(len(data)))
	return append(s, data...)
}

func (s serverStream) chunk(flags, typ uint16, handle uint64, payload []byte) serverStream {
	s = binary.BigEndian.AppendUint32(s, wire.MagicStructured)
	s = binary.BigEndian.AppendUint16(s, flags)
	s = binary.BigEndian.AppendUint16(s, typ)
	s = binary.BigEndian.AppendUint64(s, handle)
	s = binary.BigEndian.AppendUint32(s, uint32(len(payload)))
	return append(s, payload...)
}

// chunkClaiming is a chunk header announcing length bytes that never come.
func chunkClaiming(typ uint16, handle uint64, length uint32) serverStream {
	s := serverStream(nil).chunk(wire.ReplyFlagDone, typ, handle, nil)
	binary.BigEndian.PutUint32(s[len(s)-4:], length)
	return s
}

func (s serverStream) simple(handle uint64, errno uint32, data []byte) serverStream {
	s = binary.BigEndian.AppendUint32(s, wire.MagicSimple)
	s = binary.BigEndian.AppendUint32(s, errno)
	s = binary.BigEndian.AppendUint64(s, handle)
	return append(s, data...)
}

func offsetChunk(off uint64, rest ...[]byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, off)
	for _, r := range rest {
		b = append(b, r...)
	}
	return b
}

// The replies of TestScriptedReplies, also FuzzConn's seeds.
var (
	goodReplies = serverStream(nil).
			chunk(0, wire.ChunkOffsetHole, fuzzRead, offsetChunk(8192, []byte{0, 0, 8, 0})).
			chunk(wire.ReplyFlagDone, wire.ChunkOffsetData, fuzzRead, offsetChunk(8192+2048, bytes.Repeat([]byte{0xa5}, 2048))).
			chunk(wire.ReplyFlagDone, wire.ChunkBlockStatus, fuzzStatus, []byte{0, 0, 0, 1, 0, 0, 16, 0, 0, 0, 0, 3}).
			simple(fuzzFlush, 0, nil).
			simple(fuzzWrite, 0, nil)
	errorReplies = serverStream(nil).
			chunk(wire.ReplyFlagDone, wire.ChunkError, fuzzRead, []byte{0, 0, 0, 5, 0, 2, 'n', 'o'}).
			simple(fuzzFlush, 28, nil)
	// Offsets that wrap around when the request's offset is subtracted.
	wrappingData = serverStream(nil).chunk(wire.ReplyFlagDone, wire.ChunkOffsetData, fuzzRead, offsetChunk(1<<64-1, make([]byte, 8194)))
	wrappingHole = serverStream(nil).chunk(wire.ReplyFlagDone, wire.ChunkOffsetHole, fuzzRead, offsetChunk(1<<64-1, []byte{0, 0, 32, 2}))
	// Chunks announcing more than a client should hold.
	manyExtents = chunkClaiming(wire.ChunkBlockStatus, fuzzStatus, 4+8*(maxExtents+1))
	longError   = chunkClaiming(wire.ChunkError, fuzzFlush, 0xfffffff0)
)

// FuzzConn feeds arbitrary server bytes to the client: a handshake, then
// replies to four requests in flight (a 4 KiB READ at 8192, BLOCK_STATUS,
// FLUSH and WRITE, with handles 1-4). The client is what an agent uses to
// forward I/O to a volume's leader, so a broken or hostile peer must get a
// clean error: no panic, no request left waiting, and no allocation sized
// by the peer.
func FuzzConn(f *testing.F) {
	hs := []byte(handshakeScript(1 << 20))
	for _, r := range []serverStream{goodReplies, errorReplies, wrappingData, wrappingHole, manyExtents, longError,
		chunkClaiming(wire.ChunkOffsetData, fuzzRead, 0xfffffff0)} {
		f.Add(hs, []byte(r))
	}
	f.Add(hs[:len(hs)-30], []byte(nil))
	f.Add([]byte(serverStream(hs[:18]).optReply(wire.OptStructuredReply, wire.RepErrUnsup, nil)), []byte(nil))
	f.Fuzz(func(t *testing.T, handshake, replies []byte) {
		conn := newScriptConn(handshake, replies, 4)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := Handshake(ctx, conn, Options{Export: "e", MetaContexts: []string{"base:allocation"}})
		if err != nil {
			conn.Close()
			return
		}
		defer c.Close()
		var calls sync.WaitGroup
		buf := make([]byte, 4096)
		for i, op := range fourRequests(c, buf, nil) {
			calls.Add(1)
			go func() {
				defer calls.Done()
				_ = op(WithHandle(ctx, uint64(i+1)))
			}()
		}
		calls.Wait()
		if ctx.Err() != nil {
			t.Fatal("a request outlived the connection")
		}
	})
}

// fourRequests are the requests of FuzzConn: READ into buf, BLOCK_STATUS
// (its extents into *ext, if ext is not nil), FLUSH and WRITE.
func fourRequests(c *Conn, buf []byte, ext *[]Extent) [4]func(context.Context) error {
	return [4]func(context.Context) error{
		func(ctx context.Context) error { return c.ReadAt(ctx, buf, 8192, 0) },
		func(ctx context.Context) error {
			e, err := c.BlockStatus(ctx, 0, 4096, 0)
			if ext != nil {
				*ext = e
			}
			return err
		},
		func(ctx context.Context) error { return c.Flush(ctx) },
		func(ctx context.Context) error { return c.WriteAt(ctx, make([]byte, 512), 0, 0) },
	}
}

// scriptConn is a server that says its handshake and then, once the client
// has sent the requests it waits for, its replies; then it hangs up. It
// ignores what the client writes. Holding the replies back makes the
// client read them while their requests are in flight. Handshake sets a
// deadline and clears it when done: a read past the handshake under a
// deadline (a handshake cut short) ends the connection instead of waiting.
type scriptConn struct {
	net.Conn    // nil: only the methods below are used
	mu          sync.Mutex
	cond        sync.Cond
	handshake   *bytes.Reader
	replies     *bytes.Reader
	wait        int // requests to wait for before the replies
	requests    int
	handshaking bool // a deadline is set
	closed      bool
}

func newScriptConn(handshake, replies []byte, requests int) *scriptConn {
	c := &scriptConn{handshake: bytes.NewReader(handshake), replies: bytes.NewReader(replies), wait: requests}
	c.cond.L = &c.mu
	return c
}

func (c *scriptConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.closed:
		return 0, net.ErrClosed
	case c.handshake.Len() > 0:
		return c.handshake.Read(p)
	case c.handshaking:
		return 0, io.EOF
	}
	for c.requests < c.wait && !c.closed {
		c.cond.Wait()
	}
	if c.closed {
		return 0, net.ErrClosed
	}
	return c.replies.Read(p)
}

func (c *scriptConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	if len(p) >= 4 && binary.BigEndian.Uint32(p) == wire.MagicRequest {
		c.requests++
		c.cond.Broadcast()
	}
	return len(p), nil
}

func (c *scriptConn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.cond.Broadcast()
	c.mu.Unlock()
	return nil
}

func (c *scriptConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	c.handshaking = !t.IsZero()
	c.mu.Unlock()
	return nil
}

func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }

// TestScriptedReplies checks what FuzzConn builds on: scripted replies
// reach the four requests, and replies a client must refuse fail their
// request (and the connection) instead of panicking or leaving it waiting.
func TestScriptedReplies(t *testing.T) {
	all := [4]bool{true, true, true, true}
	tests := []struct {
		name    string
		replies serverStream
		wantErr [4]bool // read, block status, flush, write
	}{
		{"good", goodReplies, [4]bool{}},
		{"errors", errorReplies, all}, // the last two never answered
		{"data offset wraps around", wrappingData, all},
		{"hole offset wraps around", wrappingHole, all},
		{"too many extents", manyExtents, all},
		{"long error", longError, all},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conn := newScriptConn(handshakeScript(1<<20), tc.replies, 4)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := Handshake(ctx, conn, Options{Export: "e", MetaContexts: []string{"base:allocation"}})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if id, ok := c.MetaContext("base:allocation"); !ok || id != 1 || c.Size() != 1<<20 {
				t.Fatalf("handshake: context %d %v, size %d", id, ok, c.Size())
			}
			buf := make([]byte, 4096)
			var ext []Extent
			var errs [4]error
			var wg sync.WaitGroup
			for i, op := range fourRequests(c, buf, &ext) {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs[i] = op(WithHandle(ctx, uint64(i+1)))
				}()
			}
			wg.Wait()
			for i, err := range errs {
				if (err != nil) != tc.wantErr[i] || errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("request %d: %v, want error %v", i+1, err, tc.wantErr[i])
				}
			}
			if tc.wantErr[0] {
				return
			}
			if want := append(make([]byte, 2048), bytes.Repeat([]byte{0xa5}, 2048)...); !bytes.Equal(buf, want) {
				t.Error("READ: wrong data")
			}
			if len(ext) != 1 || ext[0] != (Extent{Length: 4096, Flags: 3}) {
				t.Errorf("BLOCK_STATUS: %v", ext)
			}
		})
	}
}
