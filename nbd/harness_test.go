package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/tandem-project/tandem/nbd/nbdclient"
	"github.com/tandem-project/tandem/nbd/wire"
)

// testServer starts a server over exports with cfg (DefaultConfig if nil)
// and closes it at the end of the test.
func testServer(t *testing.T, cfg *Config, exps ...Export) *Server {
	t.Helper()
	c := DefaultConfig()
	if cfg != nil {
		c = *cfg
	}
	srv := NewServer(NewStaticExports("", exps...), c)
	t.Cleanup(func() { srv.Close() })
	return srv
}

// connect returns the client end of a loopback TCP connection whose server
// end srv serves. (net.Pipe would be simpler but has no buffering at all,
// which deadlocks TLS handshakes and hides flushing bugs.)
func connect(t *testing.T, srv *Server) net.Conn {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cli, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	go srv.ServeConn(s) //nolint:errcheck // the test watches the client side
	t.Cleanup(func() { cli.Close() })
	return cli
}

// dial connects an nbdclient to export on srv.
func dial(t *testing.T, srv *Server, opts nbdclient.Options) *nbdclient.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := nbdclient.Handshake(ctx, connect(t, srv), opts)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// raw speaks the protocol byte by byte, for tests of malformed input.
type raw struct {
	t  *testing.T
	c  net.Conn
	r  *bufio.Reader
	sf uint16 // server handshake flags
}

func newRaw(t *testing.T, srv *Server) *raw {
	t.Helper()
	c := connect(t, srv)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return &raw{t: t, c: c, r: bufio.NewReader(c)}
}

// greet reads the greeting and sends the client flags.
func (r *raw) greet(clientFlags uint32) {
	r.t.Helper()
	var g [18]byte
	r.read(g[:])
	if binary.BigEndian.Uint64(g[0:]) != wire.MagicNBD || binary.BigEndian.Uint64(g[8:]) != wire.MagicOption {
		r.t.Fatalf("bad greeting % x", g)
	}
	r.sf = binary.BigEndian.Uint16(g[16:])
	r.write(binary.BigEndian.AppendUint32(nil, clientFlags))
}

func (r *raw) read(b []byte) {
	r.t.Helper()
	if _, err := io.ReadFull(r.r, b); err != nil {
		r.t.Fatalf("read: %v", err)
	}
}

func (r *raw) write(b []byte) {
	r.t.Helper()
	if _, err := r.c.Write(b); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

func (r *raw) opt(opt uint32, data []byte) {
	r.t.Helper()
	b := binary.BigEndian.AppendUint64(nil, wire.MagicOption)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	r.write(append(b, data...))
}

// reply reads one option reply and checks it answers opt.
func (r *raw) reply(opt uint32) (typ uint32, data []byte) {
	r.t.Helper()
	var h [20]byte
	r.read(h[:])
	if m := binary.BigEndian.Uint64(h[0:]); m != wire.MagicOptReply {
		r.t.Fatalf("reply magic %#x", m)
	}
	if got := binary.BigEndian.Uint32(h[8:]); got != opt {
		r.t.Fatalf("reply to option %d, want %d", got, opt)
	}
	data = make([]byte, binary.BigEndian.Uint32(h[16:]))
	r.read(data)
	return binary.BigEndian.Uint32(h[12:]), data
}

// expectClosed checks that the server closes the connection.
func (r *raw) expectClosed() {
	r.t.Helper()
	_ = r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(r.r)
	if err != nil && err != io.EOF {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			r.t.Fatalf("server did not close the connection (read %d bytes)", len(b))
		}
	}
}

// goData builds the data of NBD_OPT_INFO/GO.
func goData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

// metaData builds the data of NBD_OPT_LIST/SET_META_CONTEXT.
func metaData(name string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// reqBytes encodes a transmission request header.
func reqBytes(typ, flags uint16, handle, off uint64, length uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, wire.MagicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, handle)
	b = binary.BigEndian.AppendUint64(b, off)
	return binary.BigEndian.AppendUint32(b, length)
}

// simple reads a simple reply and returns its error and handle.
func (r *raw) simple() (errno uint32, handle uint64) {
	r.t.Helper()
	var h [16]byte
	r.read(h[:])
	if m := binary.BigEndian.Uint32(h[0:]); m != wire.MagicSimple {
		r.t.Fatalf("simple reply magic %#x", m)
	}
	return binary.BigEndian.Uint32(h[4:]), binary.BigEndian.Uint64(h[8:])
}

// goSimple completes a handshake with NBD_OPT_GO and no structured replies.
func (r *raw) goSimple(name string) (size uint64, flags uint16) {
	r.t.Helper()
	r.greet(wire.ClientFixedNew | wire.ClientNoZeroes)
	r.opt(wire.OptGo, goData(name))
	for {
		typ, data := r.reply(wire.OptGo)
		switch typ {
		case wire.RepAck:
			return size, flags
		case wire.RepInfo:
			if binary.BigEndian.Uint16(data) == wire.InfoExport {
				size, flags = binary.BigEndian.Uint64(data[2:]), binary.BigEndian.Uint16(data[10:])
			}
		default:
			r.t.Fatalf("NBD_OPT_GO: reply %#x %q", typ, data)
		}
	}
}
