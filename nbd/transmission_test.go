package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-project/tandem/nbd/nbdclient"
	"github.com/tandem-project/tandem/nbd/wire"
	"github.com/tandem-project/tandem/volume"
)

func errnoOfClient(err error) uint32 {
	var e *nbdclient.Error
	if errors.As(err, &e) {
		return e.Errno
	}
	return 0
}

func TestReadWriteRoundTrip(t *testing.T) {
	for _, structured := range []bool{true, false} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			mem := newMem(64 << 20)
			srv := testServer(t, nil, Export{Name: "a", Backend: mem})
			c := dial(t, srv, nbdclient.Options{Export: "a", NoStructured: !structured})
			ctx := context.Background()
			for _, size := range []int{1, 511, 4096, 16<<10 + 1, 1 << 20, MaxPayload} {
				p := bytes.Repeat([]byte{byte(size)}, size)
				off := int64(size) // unaligned offsets are fine: minimum block size 1
				if err := c.WriteAt(ctx, p, off, 0); err != nil {
					t.Fatalf("write %d: %v", size, err)
				}
				got := make([]byte, size)
				if err := c.ReadAt(ctx, got, off, 0); err != nil {
					t.Fatalf("read %d: %v", size, err)
				}
				if !bytes.Equal(got, p) {
					t.Fatalf("read back %d bytes differs", size)
				}
			}
			// Zero-length requests are harmless no-ops.
			if err := c.ReadAt(ctx, nil, 0, 0); err != nil {
				t.Errorf("zero-length read: %v", err)
			}
			if err := c.WriteAt(ctx, []byte{}, 0, 0); err != nil {
				t.Errorf("zero-length write: %v", err)
			}
		})
	}
}

// TestMappedReads reads through a backend that hands out views of its
// data (volume.MappedReader): large reads are answered from the views,
// which are all released once sent; small ones never ask for a view;
// errors are reported like any other.
func TestMappedReads(t *testing.T) {
	mem := &mappedMem{memBackend: newMem(16 << 20)}
	srv := testServer(t, nil, Export{Name: "a", Backend: mem})
	ctx := context.Background()
	for _, structured := range []bool{true, false} {
		c := dial(t, srv, nbdclient.Options{Export: "a", NoStructured: !structured})
		var wg sync.WaitGroup
		for i := range 16 {
			wg.Go(func() {
				size := 1 + i*(1<<20)/16 // 1 byte to almost 1 MiB
				p := bytes.Repeat([]byte{byte(i + 1)}, size)
				off := int64(i) << 20
				if err := c.WriteAt(ctx, p, off, 0); err != nil {
					t.Error(err)
					return
				}
				for range 6 {
					got := make([]byte, size)
					if err := c.ReadAt(ctx, got, off, 0); err != nil || !bytes.Equal(got, p) {
						t.Errorf("read %d bytes at %d: %v", size, off, err)
						return
					}
				}
			})
		}
		wg.Wait()
		mem.setFail(errDisk)
		if err := c.ReadAt(ctx, make([]byte, 64<<10), 0, 0); errnoOfClient(err) != wire.ErrIO {
			t.Fatalf("mapped read error: %v, want EIO", err)
		}
		mem.setFail(nil)
	}
	if mem.small.Load() != 0 {
		t.Errorf("%d views asked for reads of at most %d bytes (copied by the reply writer)", mem.small.Load(), smallPayload)
	}
	if mem.given.Load() == 0 {
		t.Fatal("no read was answered from a view")
	}
	// Replies are written before the client sees them, and views are
	// released right after.
	deadline := time.Now().Add(5 * time.Second)
	for mem.released.Load() != mem.given.Load() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if g, r := mem.given.Load(), mem.released.Load(); g != r {
		t.Fatalf("%d views given, %d released", g, r)
	}
}

// TestMappedReadsNotOverTLS checks that a TLS connection never asks for a
// view: encryption would read it in the process.
func TestMappedReadsNotOverTLS(t *testing.T) {
	srvTLS, cliTLS := selfSigned(t)
	cfg := DefaultConfig()
	cfg.TLS = srvTLS
	mem := &mappedMem{memBackend: newMem(4 << 20)}
	srv := testServer(t, &cfg, Export{Name: "a", Backend: mem})
	c := dial(t, srv, nbdclient.Options{Export: "a", TLS: cliTLS})
	if err := c.ReadAt(context.Background(), make([]byte, 1<<20), 0, 0); err != nil {
		t.Fatal(err)
	}
	if n := mem.calls.Load(); n != 0 {
		t.Fatalf("%d views asked for over TLS", n)
	}
}

func TestInlineReads(t *testing.T) {
	mem := &nowaitMem{memBackend: newMem(8 << 20)}
	srv := testServer(t, nil, Export{Name: "a", Backend: mem})
	for _, structured := range []bool{true, false} {
		c := dial(t, srv, nbdclient.Options{Export: "a", NoStructured: !structured})
		ctx := context.Background()
		var wg sync.WaitGroup
		for i := range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				size := 1 + i*1000
				p := bytes.Repeat([]byte{byte(i + 1)}, size)
				off := int64(i) * 100000
				if err := c.WriteAt(ctx, p, off, 0); err != nil {
					t.Error(err)
					return
				}
				for range 4 {
					got := make([]byte, size)
					if err := c.ReadAt(ctx, got, off, 0); err != nil || !bytes.Equal(got, p) {
						t.Errorf("read %d bytes at %d: %v", size, off, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		// Large replies go out through the background writer, while the
		// reader serves the next ones.
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p := bytes.Repeat([]byte{byte(i + 100)}, 1<<20)
				off := int64(i) << 20
				if err := c.WriteAt(ctx, p, off, 0); err != nil {
					t.Error(err)
					return
				}
				for range 4 {
					got := make([]byte, len(p))
					if err := c.ReadAt(ctx, got, off, 0); err != nil || !bytes.Equal(got, p) {
						t.Errorf("read 1 MiB at %d: %v", off, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		// Errors on the inline path are reported like any other.
		mem.setFail(errDisk)
		for range 2 {
			if err := c.ReadAt(ctx, make([]byte, 100), 0, 0); errnoOfClient(err) != wire.ErrIO {
				t.Fatalf("inline read error: %v, want EIO", err)
			}
		}
		mem.setFail(nil)
	}
}

func TestCommandsReachBackendWithFlags(t *testing.T) {
	mem := newMem(1 << 20)
	srv := testServer(t, nil, Export{Name: "a", Backend: mem})
	c := dial(t, srv, nbdclient.Options{Export: "a"})
	ctx := context.Background()
	steps := []struct {
		do   func() error
		want string
	}{
		{func() error { return c.WriteAt(ctx, []byte("x"), 10, nbdclient.CmdFlagFUA) }, fmt.Sprintf("write 10 1 %d", volume.FUA)},
		{func() error { return c.Flush(ctx) }, "flush 0 0 0"},
		{func() error { return c.Trim(ctx, 4096, 8192, nbdclient.CmdFlagFUA) }, fmt.Sprintf("trim 4096 8192 %d", volume.FUA)},
		{func() error { return c.Zero(ctx, 0, 4096, 0) }, "zero 0 4096 0"},
		{func() error { return c.Zero(ctx, 0, 4096, nbdclient.CmdFlagNoHole) }, fmt.Sprintf("zero 0 4096 %d", volume.NoHole)},
		{func() error { return c.Zero(ctx, 0, 4096, nbdclient.CmdFlagFastZero|nbdclient.CmdFlagFUA) }, fmt.Sprintf("zero 0 4096 %d", volume.FastZero|volume.FUA)},
		{func() error { return c.Cache(ctx, 8192, 100) }, "cache 8192 100 0"},
		{func() error { return c.ReadAt(ctx, make([]byte, 3), 7, nbdclient.CmdFlagDF|nbdclient.CmdFlagFUA) }, "read 7 3 0"},
	}
	for i, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		log := mem.callLog()
		if got := log[len(log)-1]; got != s.want {
			t.Errorf("step %d: backend saw %q, want %q", i, got, s.want)
		}
	}
}

// TestFlushDurableWrites checks that FLUSH on a backend whose writes are
// durable once answered (volume.Caps.DurableWrites) is answered without
// calling the backend, even when the backend fails, and still validated.
func TestFlushDurableWrites(t *testing.T) {
	mem := newMem(1 << 20)
	mem.caps.DurableWrites = true
	srv := testServer(t, nil, Export{Name: "a", Backend: mem})
	c := dial(t, srv, nbdclient.Options{Export: "a"})
	ctx := context.Background()
	if err := c.WriteAt(ctx, []byte("x"), 10, 0); err != nil {
		t.Fatal(err)
	}
	mem.setFail(errDisk)
	for range 3 {
		if err := c.Flush(ctx); err != nil {
			t.Fatalf("flush: %v", err)
		}
	}
	mem.setFail(nil)
	for _, call := range mem.callLog() {
		if strings.HasPrefix(call, "flush") {
			t.Fatalf("the backend saw %q", call)
		}
	}
	r := newRaw(t, srv)
	r.goSimple("a")
	r.write(reqBytes(wire.CmdFlush, 0, 7, 1, 0))
	if errno, handle := r.simple(); errno != wire.ErrInval || handle != 7 {
		t.Fatalf("flush with an offset: errno %d handle %d, want EINVAL for 7", errno, handle)
	}
}

func TestFastZeroNotSupported(t *testing.T) {
	mem := newMem(1 << 20)
	mem.notFast = true
	srv := testServer(t, nil, Export{Name: "a", Backend: mem})
	c := dial(t, srv, nbdclient.Options{Export: "a"})
	err := c.Zero(context.Background(), 0, 4096, nbdclient.CmdFlagFastZero)
	if errnoOfClient(err) != wire.ErrNotSup {
		t.Fatalf("fast zero: %v, want ENOTSUP", err)
	}
	if err := c.Zero(context.Background(), 0, 4096, 0); err != nil {
		t.Fatalf("slow zero: %v", err)
	}
}

func TestRequestErrors(t *testing.T) {
	const size = 1 << 20
	ro := newMem(size)
	ro.caps.ReadOnly = true
	type req struct {
		typ, flags uint16
		off        uint64
		length     uint32
	}
	tests := []struct {
		name       string
		readOnly   bool
		structured bool
		meta       bool
		r          req
		want       uint32
	}{
		{"write past end", false, true, false, req{wire.CmdWrite, 0, size - 1, 2}, wire.ErrNoSpc},
		{"write at huge offset", false, true, false, req{wire.CmdWrite, 0, math.MaxUint64, 1}, wire.ErrNoSpc},
		{"write offset past int64", false, false, false, req{wire.CmdWrite, 0, 1 << 63, 1}, wire.ErrNoSpc},
		{"trim past end", false, true, false, req{wire.CmdTrim, 0, size, 1}, wire.ErrInval},
		{"zero past end", false, true, false, req{wire.CmdWriteZeroes, 0, 0, size + 1}, wire.ErrNoSpc},
		{"read past end", false, true, false, req{wire.CmdRead, 0, size, 1}, wire.ErrInval},
		{"read past end simple", false, false, false, req{wire.CmdRead, 0, size - 4, 8}, wire.ErrInval},
		{"read wraps around", false, true, false, req{wire.CmdRead, 0, math.MaxUint64 - 1, 4}, wire.ErrInval},
		{"cache past end", false, true, false, req{wire.CmdCache, 0, size, 4096}, wire.ErrInval},
		{"block status past end", false, true, true, req{wire.CmdBlockStatus, 0, size - 1, 2}, wire.ErrInval},
		{"block status zero length", false, true, true, req{wire.CmdBlockStatus, 0, 0, 0}, wire.ErrInval},
		{"block status without context", false, true, false, req{wire.CmdBlockStatus, 0, 0, 4096}, wire.ErrInval},
		{"read too large", false, true, false, req{wire.CmdRead, 0, 0, MaxPayload + 1}, wire.ErrInval},
		{"unknown command", false, true, false, req{42, 0, 0, 0}, wire.ErrInval},
		{"resize not supported", false, true, false, req{8, 0, 0, 0}, wire.ErrInval},
		{"unknown flag", false, true, false, req{wire.CmdRead, 1 << 9, 0, 512}, wire.ErrInval},
		{"DF without structured", false, false, false, req{wire.CmdRead, wire.CfDF, 0, 512}, wire.ErrInval},
		{"DF on write", false, true, false, req{wire.CmdWrite, wire.CfDF, 0, 1}, wire.ErrInval},
		{"REQ_ONE on read", false, true, false, req{wire.CmdRead, wire.CfReqOne, 0, 512}, wire.ErrInval},
		{"NO_HOLE on trim", false, true, false, req{wire.CmdTrim, wire.CfNoHole, 0, 512}, wire.ErrInval},
		{"FAST_ZERO on write", false, true, false, req{wire.CmdWrite, wire.CfFastZero, 0, 1}, wire.ErrInval},
		{"flush with offset", false, true, false, req{wire.CmdFlush, 0, 1, 0}, wire.ErrInval},
		{"flush with length", false, false, false, req{wire.CmdFlush, 0, 0, 1}, wire.ErrInval},
		{"write read-only", true, true, false, req{wire.CmdWrite, 0, 0, 4}, wire.ErrPerm},
		{"trim read-only", true, false, false, req{wire.CmdTrim, 0, 0, 4}, wire.ErrPerm},
		{"zero read-only", true, true, false, req{wire.CmdWriteZeroes, 0, 0, 4}, wire.ErrPerm},
		{"FUA on read-only", true, true, false, req{wire.CmdRead, wire.CfFUA, 0, 4}, wire.ErrInval},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b volume.Backend = newMem(size)
			if tc.readOnly {
				b = ro
			}
			srv := testServer(t, nil, Export{Name: "a", Backend: b})
			opts := nbdclient.Options{Export: "a", NoStructured: !tc.structured}
			if tc.meta {
				opts.MetaContexts = []string{nbdclient.MetaContextBase}
			}
			c := dial(t, srv, opts)
			ctx := context.Background()
			var payload, readBuf []byte
			if tc.r.typ == wire.CmdWrite {
				payload = make([]byte, tc.r.length)
			}
			err := c.Raw(ctx, tc.r.typ, tc.r.flags, tc.r.off, tc.r.length, payload, readBuf)
			if got := errnoOfClient(err); got != tc.want {
				t.Fatalf("got %v (errno %d), want errno %d", err, got, tc.want)
			}
			// The connection is still good afterwards.
			if err := c.ReadAt(ctx, make([]byte, 512), 0, 0); err != nil {
				t.Fatalf("read after error: %v", err)
			}
		})
	}
}

func TestOversizedWriteIsSkipped(t *testing.T) {
	mem := newMem(1 << 20)
	srv := testServer(t, nil, Export{Name: "a", Backend: mem})
	r := newRaw(t, srv)
	r.goSimple("a")
	n := MaxPayload + 4096
	go func() {
		// Write concurrently: the server consumes the payload while we
		// would otherwise block.
		r.c.Write(append(reqBytes(wire.CmdWrite, 0, 1, 0, uint32(n)), make([]byte, n)...))
		r.c.Write(reqBytes(wire.CmdFlush, 0, 2, 0, 0))
	}()
	if errno, h := r.simple(); errno != wire.ErrInval || h != 1 {
		t.Fatalf("oversized write: errno %d handle %d, want EINVAL for 1", errno, h)
	}
	if errno, h := r.simple(); errno != 0 || h != 2 {
		t.Fatalf("flush after oversized write: errno %d handle %d", errno, h)
	}
	for _, c := range mem.callLog() {
		if c[:5] == "write" {
			t.Fatalf("oversized write reached the backend: %s", c)
		}
	}
}

func TestRejectedWritePayloadConsumed(t *testing.T) {
	ro := newMem(1 << 20)
	ro.caps.ReadOnly = true
	srv := testServer(t, nil, Export{Name: "a", Backend: ro})
	r := newRaw(t, srv)
	r.goSimple("a")
	// A refused write's payload must be skipped, not parsed as requests:
	// make the payload look like a request with handle 99.
	payload := reqBytes(wire.CmdFlush, 0, 99, 0, 0)
	r.write(append(reqBytes(wire.CmdWrite, 0, 1, 0, uint32(len(payload))), payload...))
	r.write(reqBytes(wire.CmdFlush, 0, 2, 0, 0))
	if errno, h := r.simple(); errno != wire.ErrPerm || h != 1 {
		t.Fatalf("write on read-only: errno %d handle %d", errno, h)
	}
	if errno, h := r.simple(); errno != 0 || h != 2 {
		t.Fatalf("next reply: errno %d handle %d (want the flush, handle 2)", errno, h)
	}
}

func TestBackendErrors(t *testing.T) {
	tests := []struct {
		err  error
		want uint32
	}{
		{errDisk, wire.ErrIO},
		{fmt.Errorf("wrapped: %w", volume.ErrNoSpace), wire.ErrNoSpc},
		{volume.ErrReadOnly, wire.ErrPerm},
		{volume.ErrClosed, wire.ErrShutdown},
		{context.Canceled, wire.ErrShutdown},
	}
	for _, tc := range tests {
		for _, structured := range []bool{true, false} {
			t.Run(fmt.Sprintf("%v/structured=%v", tc.err, structured), func(t *testing.T) {
				mem := newMem(1 << 20)
				srv := testServer(t, nil, Export{Name: "a", Backend: mem})
				c := dial(t, srv, nbdclient.Options{Export: "a", NoStructured: !structured})
				ctx := context.Background()
				mem.setFail(tc.err)
				err := c.ReadAt(ctx, make([]byte, 4096), 0, 0)
				if errnoOfClient(err) != tc.want {
					t.Fatalf("read: %v, want errno %d", err, tc.want)
				}
				var e *nbdclient.Error
				if structured && errors.As(err, &e) && e.Message == "" {
					t.Errorf("structured error without a message")
				}
				if err := c.WriteAt(ctx, make([]byte, 100), 0, 0); errnoOfClient(err) != tc.want {
					t.Fatalf("write: %v, want errno %d", err, tc.want)
				}
				if err := c.Flush(ctx); errnoOfClient(err) != tc.want {
					t.Fatalf("flush: %v, want errno %d", err, tc.want)
				}
				mem.setFail(nil)
				if err := c.ReadAt(ctx, make([]byte, 4096), 0, 0); err != nil {
					t.Fatalf("read after recovery: %v", err)
				}
			})
		}
	}
}

func TestOutOfOrderReplies(t *testing.T) {
	mem := newMem(1 << 20)
	release := make(chan struct{})
	mem.gate = func(op string, off int64) {
		if op == "write" && off == 0 {
			<-release // the first write waits for the second to finish
		}
	}
	srv := testServer(t, nil, Export{Name: "a", Backend: mem})
	c := dial(t, srv, nbdclient.Options{Export: "a"})
	ctx := context.Background()
	first := make(chan error, 1)
	go func() { first <- c.WriteAt(ctx, []byte("first"), 0, 0) }()
	time.Sleep(20 * time.Millisecond) // let the first request reach the server
	if err := c.WriteAt(ctx, []byte("second"), 4096, 0); err != nil {
		t.Fatalf("second write: %v", err)
	}
	select {
	case err := <-first:
		t.Fatalf("first write finished before it was released: %v", err)
	default:
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatalf("first write: %v", err)
	}
}

func TestManyInFlight(t *testing.T) {
	mem := newMem(8 << 20)
	var inside, peak atomic.Int64
	mem.gate = func(string, int64) {
		n := inside.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(time.Millisecond)
		inside.Add(-1)
	}
	cfg := DefaultConfig()
	cfg.MaxInflight = 16
	srv := testServer(t, &cfg, Export{Name: "a", Backend: mem})
	c := dial(t, srv, nbdclient.Options{Export: "a"})
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 400)
	for i := range 400 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := bytes.Repeat([]byte{byte(i)}, 4096)
			if err := c.WriteAt(ctx, p, int64(i)*4096, 0); err != nil {
				errs <- err
				return
			}
			got := make([]byte, 4096)
			if err := c.ReadAt(ctx, got, int64(i)*4096, 0); err != nil || !bytes.Equal(got, p) {
				errs <- fmt.Errorf("block %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if p := peak.Load(); p > 16 {
		t.Errorf("%d requests in the backend at once, MaxInflight is 16", p)
	}
	if p := peak.Load(); p < 2 {
		t.Errorf("requests were not served concurrently (peak %d)", p)
	}
}

func TestBlockStatus(t *testing.T) {
	mem := newMem(64 << 10)
	copy(mem.data[8192:], bytes.Repeat([]byte{1}, 4096))
	srv := testServer(t, nil, Export{Name: "a", Backend: mem})
	c := dial(t, srv, nbdclient.Options{Export: "a", MetaContexts: []string{nbdclient.MetaContextBase}})
	ctx := context.Background()
	ext, err := c.BlockStatus(ctx, 0, 64<<10, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := []nbdclient.Extent{{Length: 8192, Flags: 3}, {Length: 4096, Flags: 0}, {Length: 53248, Flags: 3}}
	if fmt.Sprint(ext) != fmt.Sprint(want) {
		t.Fatalf("extents %v, want %v", ext, want)
	}
	ext, err = c.BlockStatus(ctx, 100, 64<<10-100, nbdclient.CmdFlagReqOne)
	if err != nil || len(ext) != 1 || ext[0].Length != 8092 || ext[0].Flags != 3 {
		t.Fatalf("REQ_ONE: %v %v", ext, err)
	}
}

func TestBadMagicCloses(t *testing.T) {
	srv := testServer(t, nil, Export{Name: "a", Backend: newMem(4096)})
	r := newRaw(t, srv)
	r.goSimple("a")
	b := reqBytes(wire.CmdFlush, 0, 1, 0, 0)
	binary.BigEndian.PutUint32(b, 0xdeadbeef)
	r.write(b)
	r.expectClosed()
}

func TestTruncatedRequestCloses(t *testing.T) {
	mem := newMem(4096)
	srv := testServer(t, nil, Export{Name: "a", Backend: mem})
	r := newRaw(t, srv)
	r.goSimple("a")
	r.write(reqBytes(wire.CmdWrite, 0, 1, 0, 100)[:20]) // half a header
	r.c.Close()
	waitIdle(t, srv)
	r2 := newRaw(t, srv)
	r2.goSimple("a")
	// A write whose payload is cut short never reaches the backend.
	r2.write(append(reqBytes(wire.CmdWrite, 0, 1, 0, 100), make([]byte, 50)...))
	r2.c.Close()
	waitIdle(t, srv)
	for _, c := range mem.callLog() {
		t.Errorf("backend was called: %s", c)
	}
}

// waitIdle waits until srv has no connection left.
func waitIdle(t *testing.T, srv *Server) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		srv.mu.Lock()
		n := len(srv.conns)
		srv.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still open", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestDiscWaitsForInFlight(t *testing.T) {
	mem := newMem(1 << 20)
	mem.gate = func(op string, _ int64) {
		if op == "write" {
			time.Sleep(50 * time.Millisecond)
		}
	}
	srv := testServer(t, nil, Export{Name: "a", Backend: mem})
	r := newRaw(t, srv)
	r.goSimple("a")
	r.write(append(reqBytes(wire.CmdWrite, 0, 1, 0, 4), "data"...))
	r.write(reqBytes(wire.CmdDisc, 0, 2, 0, 0))
	if errno, h := r.simple(); errno != 0 || h != 1 {
		t.Fatalf("write reply after DISC: errno %d handle %d", errno, h)
	}
	r.expectClosed()
	if string(mem.bytes(0, 4)) != "data" {
		t.Fatalf("write in flight at DISC was lost")
	}
}

func TestShutdown(t *testing.T) {
	mem := newMem(1 << 20)
	started := make(chan struct{})
	mem.gate = func(op string, _ int64) {
		if op == "write" {
			close(started)
			time.Sleep(100 * time.Millisecond)
		}
	}
	srv := testServer(t, nil, Export{Name: "a", Backend: mem})
	r := newRaw(t, srv)
	r.goSimple("a")
	r.write(append(reqBytes(wire.CmdWrite, 0, 1, 0, 4), "data"...))
	<-started
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- srv.Shutdown(ctx)
	}()
	time.Sleep(20 * time.Millisecond)
	r.write(reqBytes(wire.CmdFlush, 0, 2, 0, 0))
	got := map[uint64]uint32{}
	for range 2 {
		errno, h := r.simple()
		got[h] = errno
	}
	if got[1] != 0 || got[2] != wire.ErrShutdown {
		t.Fatalf("replies %v: want the write to succeed and the flush to get ESHUTDOWN", got)
	}
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	r.expectClosed()
}

func TestClientNotReadingBoundsMemory(t *testing.T) {
	mem := newMem(1 << 20)
	cfg := DefaultConfig()
	cfg.MaxInflight = 8
	srv := testServer(t, &cfg, Export{Name: "a", Backend: mem})
	r := newRaw(t, srv)
	r.goSimple("a")
	// Send many reads of 64 KiB (1.3 GB of replies) without reading any
	// reply. The requests fit in socket buffers; the server must stop
	// serving them once its reply queue and the sockets are full, instead
	// of queueing everything in memory.
	const n = 20000
	var reqs []byte
	for i := range n {
		reqs = append(reqs, reqBytes(wire.CmdRead, 0, uint64(i), 0, 64<<10)...)
	}
	go r.c.Write(reqs) //nolint:errcheck // checked through the replies
	time.Sleep(500 * time.Millisecond)
	if served := len(mem.callLog()); served > 3000 {
		t.Fatalf("server served %d reads of 64 KiB while the client read no reply", served)
	}
	// Now read everything: every request is answered.
	_ = r.c.SetReadDeadline(time.Now().Add(60 * time.Second))
	var hdr [16]byte
	buf := make([]byte, 64<<10)
	for i := range n {
		r.read(hdr[:])
		if binary.BigEndian.Uint32(hdr[4:]) != 0 {
			t.Fatalf("reply %d failed", i)
		}
		r.read(buf)
	}
}
