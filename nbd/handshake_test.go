package nbd

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testpki"
	"github.com/tandem-project/tandem/nbd/nbdclient"
	"github.com/tandem-project/tandem/nbd/wire"
	"github.com/tandem-project/tandem/volume"
)

func TestGreeting(t *testing.T) {
	srv := testServer(t, nil, Export{Name: "a", Backend: newMem(4096)})
	r := newRaw(t, srv)
	r.greet(wire.ClientFixedNew | wire.ClientNoZeroes)
	if r.sf != wire.FlagFixedNew|wire.FlagNoZeroes {
		t.Fatalf("handshake flags %#x, want FIXED_NEWSTYLE|NO_ZEROES", r.sf)
	}
}

func TestUnknownClientFlagsClose(t *testing.T) {
	srv := testServer(t, nil, Export{Name: "a", Backend: newMem(4096)})
	r := newRaw(t, srv)
	r.greet(wire.ClientFixedNew | 1<<7)
	r.expectClosed()
}

func TestBadOptionMagicCloses(t *testing.T) {
	srv := testServer(t, nil, Export{Name: "a", Backend: newMem(4096)})
	r := newRaw(t, srv)
	r.greet(wire.ClientFixedNew)
	r.write(make([]byte, 16)) // zero magic
	r.expectClosed()
}

func TestOptionReplies(t *testing.T) {
	exps := []Export{
		{Name: "a", Description: "first", Backend: newMem(1 << 20)},
		{Name: "b", Backend: newMem(8192)},
	}
	tests := []struct {
		name  string
		setup []uint32 // options sent first, each answered with ACK
		opt   uint32
		data  []byte
		want  []uint32 // reply types in order
	}{
		{"list", nil, wire.OptList, nil, []uint32{wire.RepServer, wire.RepServer, wire.RepAck}},
		{"list with data", nil, wire.OptList, []byte{1}, []uint32{wire.RepErrInvalid}},
		{"unknown option", nil, 99, []byte("xyz"), []uint32{wire.RepErrUnsup}},
		{"withdrawn peek export", nil, 4, nil, []uint32{wire.RepErrUnsup}},
		{"starttls without tls", nil, wire.OptStartTLS, nil, []uint32{wire.RepErrUnsup}},
		{"structured reply", nil, wire.OptStructuredReply, nil, []uint32{wire.RepAck}},
		{"structured reply with data", nil, wire.OptStructuredReply, []byte{0}, []uint32{wire.RepErrInvalid}},
		{"info", nil, wire.OptInfo, goData("a"), []uint32{wire.RepInfo, wire.RepAck}},
		{"info all", nil, wire.OptInfo, goData("a", wire.InfoName, wire.InfoDescription, wire.InfoBlockSize, 77), []uint32{wire.RepInfo, wire.RepInfo, wire.RepInfo, wire.RepInfo, wire.RepAck}},
		{"info no description", nil, wire.OptInfo, goData("b", wire.InfoDescription), []uint32{wire.RepInfo, wire.RepAck}},
		{"info duplicate requests", nil, wire.OptInfo, goData("a", wire.InfoName, wire.InfoName), []uint32{wire.RepInfo, wire.RepInfo, wire.RepAck}},
		{"info unknown export", nil, wire.OptInfo, goData("zz"), []uint32{wire.RepErrUnknown}},
		{"info default export without default", nil, wire.OptInfo, goData(""), []uint32{wire.RepErrUnknown}},
		{"info short", nil, wire.OptInfo, []byte{0, 0, 0}, []uint32{wire.RepErrInvalid}},
		{"info name too long", nil, wire.OptInfo, []byte{0, 0, 1, 0, 0, 0}, []uint32{wire.RepErrInvalid}},
		{"info trailing bytes", nil, wire.OptInfo, append(goData("a", wire.InfoName), 0), []uint32{wire.RepErrInvalid}},
		{"list meta before structured", nil, wire.OptListMetaContext, metaData("a"), []uint32{wire.RepErrInvalid}},
		{"list meta all", []uint32{wire.OptStructuredReply}, wire.OptListMetaContext, metaData("a"), []uint32{wire.RepMetaContext, wire.RepAck}},
		{"list meta namespace", []uint32{wire.OptStructuredReply}, wire.OptListMetaContext, metaData("a", "base:"), []uint32{wire.RepMetaContext, wire.RepAck}},
		{"list meta other namespace", []uint32{wire.OptStructuredReply}, wire.OptListMetaContext, metaData("a", "x-other:thing"), []uint32{wire.RepAck}},
		{"list meta unknown export", []uint32{wire.OptStructuredReply}, wire.OptListMetaContext, metaData("zz"), []uint32{wire.RepErrUnknown}},
		{"list meta malformed", []uint32{wire.OptStructuredReply}, wire.OptListMetaContext, []byte{0, 0, 0, 1, 'a', 0, 0, 0, 2, 0, 0, 0, 9}, []uint32{wire.RepErrInvalid}},
		{"set meta base", []uint32{wire.OptStructuredReply}, wire.OptSetMetaContext, metaData("a", "base:allocation"), []uint32{wire.RepMetaContext, wire.RepAck}},
		{"set meta none", []uint32{wire.OptStructuredReply}, wire.OptSetMetaContext, metaData("a"), []uint32{wire.RepAck}},
		{"set meta namespace only", []uint32{wire.OptStructuredReply}, wire.OptSetMetaContext, metaData("a", "base:"), []uint32{wire.RepAck}},
		{"oversized option", nil, 99, make([]byte, maxOptionLen+1), []uint32{wire.RepErrTooBig}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := testServer(t, nil, exps...)
			r := newRaw(t, srv)
			r.greet(wire.ClientFixedNew | wire.ClientNoZeroes)
			for _, o := range tc.setup {
				r.opt(o, nil)
				if typ, _ := r.reply(o); typ != wire.RepAck {
					t.Fatalf("setup option %d: reply %#x", o, typ)
				}
			}
			r.opt(tc.opt, tc.data)
			for i, want := range tc.want {
				typ, data := r.reply(tc.opt)
				if typ != want {
					t.Fatalf("reply %d: type %#x (%q), want %#x", i, typ, data, want)
				}
				if typ&wire.RepErrBit != 0 && len(data) == 0 {
					t.Errorf("error reply %#x without a message", typ)
				}
			}
			// Haggling goes on after every one of these.
			r.opt(wire.OptList, nil)
			for {
				typ, _ := r.reply(wire.OptList)
				if typ == wire.RepAck {
					break
				}
			}
		})
	}
}

func TestInfoContents(t *testing.T) {
	srv := testServer(t, nil, Export{Name: "a", Description: "the first", Backend: newMem(1 << 20)})
	r := newRaw(t, srv)
	r.greet(wire.ClientFixedNew | wire.ClientNoZeroes)
	r.opt(wire.OptInfo, goData("a", wire.InfoBlockSize, wire.InfoName, wire.InfoDescription))
	got := map[uint16][]byte{}
	for {
		typ, data := r.reply(wire.OptInfo)
		if typ == wire.RepAck {
			break
		}
		got[binary.BigEndian.Uint16(data)] = data[2:]
	}
	exp := got[wire.InfoExport]
	if len(exp) != 10 || binary.BigEndian.Uint64(exp) != 1<<20 {
		t.Fatalf("NBD_INFO_EXPORT %x", exp)
	}
	wantFlags := wire.TfHasFlags | wire.TfSendFlush | wire.TfSendFUA | wire.TfSendTrim | wire.TfSendZeroes | wire.TfSendFastZero | wire.TfSendCache | wire.TfCanMultiConn
	if f := binary.BigEndian.Uint16(exp[8:]); f != wantFlags {
		t.Errorf("flags %#x, want %#x (no DF before structured replies)", f, wantFlags)
	}
	if string(got[wire.InfoName]) != "a" || string(got[wire.InfoDescription]) != "the first" {
		t.Errorf("name %q description %q", got[wire.InfoName], got[wire.InfoDescription])
	}
	bs := got[wire.InfoBlockSize]
	if len(bs) != 12 || binary.BigEndian.Uint32(bs) != 1 || binary.BigEndian.Uint32(bs[4:]) != 4096 || binary.BigEndian.Uint32(bs[8:]) != MaxPayload {
		t.Errorf("block size %x", bs)
	}
}

func TestTransmissionFlags(t *testing.T) {
	ro := newMem(4096)
	ro.caps.ReadOnly = true
	noTrim := newMem(4096)
	noTrim.caps = volume.Caps{}
	tests := []struct {
		name       string
		b          volume.Backend
		structured bool
		want       uint16
	}{
		{"writable structured", newMem(4096), true, wire.TfHasFlags | wire.TfSendFlush | wire.TfSendFUA | wire.TfSendTrim | wire.TfSendZeroes | wire.TfSendFastZero | wire.TfSendCache | wire.TfCanMultiConn | wire.TfSendDF},
		{"read-only", ro, true, wire.TfHasFlags | wire.TfReadOnly | wire.TfSendFlush | wire.TfSendCache | wire.TfCanMultiConn | wire.TfSendDF},
		{"no trim no multi-conn simple", noTrim, false, wire.TfHasFlags | wire.TfSendFlush | wire.TfSendFUA | wire.TfSendZeroes | wire.TfSendFastZero | wire.TfSendCache},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := testServer(t, nil, Export{Name: "x", Backend: tc.b})
			c := dial(t, srv, nbdclient.Options{Export: "x", NoStructured: !tc.structured})
			if c.Flags() != tc.want {
				t.Fatalf("flags %#x, want %#x", c.Flags(), tc.want)
			}
		})
	}
}

func TestExportName(t *testing.T) {
	for _, noZeroes := range []bool{false, true} {
		srv := testServer(t, nil, Export{Name: "a", Backend: newMem(12345)})
		r := newRaw(t, srv)
		cf := wire.ClientFixedNew
		if noZeroes {
			cf |= wire.ClientNoZeroes
		}
		r.greet(cf)
		r.opt(wire.OptExportName, []byte("a"))
		n := 10
		if !noZeroes {
			n += 124
		}
		b := make([]byte, n)
		r.read(b)
		if binary.BigEndian.Uint64(b) != 12345 {
			t.Fatalf("size %d", binary.BigEndian.Uint64(b))
		}
		if !bytes.Equal(b[10:], make([]byte, n-10)) {
			t.Fatalf("padding not zero")
		}
		// Transmission works right away.
		r.write(reqBytes(wire.CmdFlush, 0, 7, 0, 0))
		if errno, h := r.simple(); errno != 0 || h != 7 {
			t.Fatalf("flush reply errno %d handle %d", errno, h)
		}
	}
}

func TestExportNameUnknownCloses(t *testing.T) {
	srv := testServer(t, nil, Export{Name: "a", Backend: newMem(4096)})
	r := newRaw(t, srv)
	r.greet(wire.ClientFixedNew)
	r.opt(wire.OptExportName, []byte("nope"))
	r.expectClosed()
}

func TestDefaultExport(t *testing.T) {
	c := DefaultConfig()
	srv := NewServer(NewStaticExports("a", Export{Name: "a", Backend: newMem(4096)}), c)
	t.Cleanup(func() { srv.Close() })
	cl := dial(t, srv, nbdclient.Options{})
	if cl.Size() != 4096 || cl.Name() != "a" {
		t.Fatalf("default export: size %d name %q", cl.Size(), cl.Name())
	}
}

func TestAbort(t *testing.T) {
	srv := testServer(t, nil, Export{Name: "a", Backend: newMem(4096)})
	r := newRaw(t, srv)
	r.greet(wire.ClientFixedNew)
	r.opt(wire.OptAbort, nil)
	if typ, _ := r.reply(wire.OptAbort); typ != wire.RepAck {
		t.Fatalf("abort reply %#x", typ)
	}
	r.expectClosed()
}

func TestMetaContextFollowsExport(t *testing.T) {
	srv := testServer(t, nil, Export{Name: "a", Backend: newMem(8192)}, Export{Name: "b", Backend: newMem(8192)})
	ctx := context.Background()

	// Selected for the export we go to: BLOCK_STATUS works.
	c := dial(t, srv, nbdclient.Options{Export: "a", MetaContexts: []string{nbdclient.MetaContextBase}})
	if id, ok := c.MetaContext(nbdclient.MetaContextBase); !ok || id != metaContextID {
		t.Fatalf("context id %d %v", id, ok)
	}
	if _, err := c.BlockStatus(ctx, 0, 8192, 0); err != nil {
		t.Fatalf("block status: %v", err)
	}

	// Selected for another export: no context in transmission.
	r := newRaw(t, srv)
	r.greet(wire.ClientFixedNew | wire.ClientNoZeroes)
	r.opt(wire.OptStructuredReply, nil)
	r.reply(wire.OptStructuredReply)
	r.opt(wire.OptSetMetaContext, metaData("b", wire.MetaContextBase))
	r.reply(wire.OptSetMetaContext)
	r.reply(wire.OptSetMetaContext)
	r.opt(wire.OptGo, goData("a"))
	for typ, _ := r.reply(wire.OptGo); typ != wire.RepAck; typ, _ = r.reply(wire.OptGo) {
	}
	r.write(reqBytes(wire.CmdBlockStatus, 0, 1, 0, 4096))
	if errno, _ := r.structuredError(); errno != wire.ErrInval {
		t.Fatalf("BLOCK_STATUS after meta context for another export: errno %d, want EINVAL", errno)
	}
}

// structuredError reads one structured chunk and returns its error value
// (0 if it is not an error chunk) and handle.
func (r *raw) structuredError() (uint32, uint64) {
	r.t.Helper()
	var h [20]byte
	r.read(h[:])
	if m := binary.BigEndian.Uint32(h[0:]); m != wire.MagicStructured {
		r.t.Fatalf("chunk magic %#x", m)
	}
	typ := binary.BigEndian.Uint16(h[6:])
	handle := binary.BigEndian.Uint64(h[8:])
	data := make([]byte, binary.BigEndian.Uint32(h[16:]))
	r.read(data)
	if typ&(1<<15) == 0 {
		return 0, handle
	}
	return binary.BigEndian.Uint32(data), handle
}

func TestHandshakeTimeout(t *testing.T) {
	cfg := DefaultConfig()
	cfg.HandshakeTimeout = 200 * time.Millisecond
	srv := testServer(t, &cfg, Export{Name: "a", Backend: newMem(4096)})
	r := newRaw(t, srv)
	var g [18]byte
	r.read(g[:])
	start := time.Now()
	r.expectClosed() // we never send our flags
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("closed after %v", d)
	}
}

func TestShutdownDuringHandshake(t *testing.T) {
	srv := testServer(t, nil, Export{Name: "a", Backend: newMem(4096)})
	r := newRaw(t, srv)
	r.greet(wire.ClientFixedNew)
	srv.closing.Store(true)
	r.opt(wire.OptList, nil)
	if typ, _ := r.reply(wire.OptList); typ != wire.RepErrShutdown {
		t.Fatalf("reply %#x, want ERR_SHUTDOWN", typ)
	}
}

// selfSigned returns a server TLS config and a client config trusting it.
func selfSigned(t *testing.T) (*tls.Config, *tls.Config) {
	t.Helper()
	ca := testpki.NewCA(t, "tandem-test CA")
	return &tls.Config{Certificates: []tls.Certificate{ca.Issue("tandem-test", "tandem-test").TLS(t)}, MinVersion: tls.VersionTLS12},
		&tls.Config{RootCAs: ca.Pool(), ServerName: "tandem-test", MinVersion: tls.VersionTLS12}
}

func TestTLS(t *testing.T) {
	srvTLS, cliTLS := selfSigned(t)
	cfg := DefaultConfig()
	cfg.TLS = srvTLS
	cfg.TLSRequired = true
	mem := newMem(1 << 20)
	srv := testServer(t, &cfg, Export{Name: "a", Backend: mem})

	// Before STARTTLS every option but ABORT is refused.
	r := newRaw(t, srv)
	r.greet(wire.ClientFixedNew)
	r.opt(wire.OptList, nil)
	if typ, _ := r.reply(wire.OptList); typ != wire.RepErrTLSReqd {
		t.Fatalf("LIST before TLS: %#x, want ERR_TLS_REQD", typ)
	}
	r.opt(wire.OptExportName, []byte("a"))
	r.expectClosed()

	// With TLS the whole session works.
	c := dial(t, srv, nbdclient.Options{Export: "a", TLS: cliTLS})
	ctx := context.Background()
	if err := c.WriteAt(ctx, []byte("secret"), 100, 0); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if err := c.ReadAt(ctx, buf, 100, 0); err != nil || string(buf) != "secret" {
		t.Fatalf("read %q %v", buf, err)
	}

	// A second STARTTLS inside TLS is invalid.
	var oe *nbdclient.OptionError
	_, err := nbdclient.Handshake(ctx, connect(t, srv), nbdclient.Options{Export: "a", TLS: &tls.Config{RootCAs: cliTLS.RootCAs, ServerName: "wrong-name"}})
	if err == nil || errors.As(err, &oe) || !strings.Contains(err.Error(), "TLS") {
		t.Fatalf("bad certificate name: err %v", err)
	}
}
