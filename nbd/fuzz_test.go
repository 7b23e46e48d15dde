package nbd

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/fuzzconn"
	"github.com/tandem-project/tandem/nbd/wire"
)

// handshakePrefix is a client's side of a successful negotiation of export
// "a": structured replies, base:allocation, NBD_OPT_GO.
func handshakePrefix(structured bool) []byte {
	var b []byte
	b = binary.BigEndian.AppendUint32(b, wire.ClientFixedNew|wire.ClientNoZeroes)
	opt := func(o uint32, data []byte) {
		b = binary.BigEndian.AppendUint64(b, wire.MagicOption)
		b = binary.BigEndian.AppendUint32(b, o)
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		b = append(b, data...)
	}
	if structured {
		opt(wire.OptStructuredReply, nil)
		opt(wire.OptSetMetaContext, metaData("a", wire.MetaContextBase))
	}
	opt(wire.OptGo, goData("a", wire.InfoBlockSize))
	return b
}

func fuzzSeeds() [][]byte {
	hp := handshakePrefix(true)
	var seeds [][]byte
	seeds = append(seeds, hp, handshakePrefix(false))
	reqs := [][]byte{
		append(reqBytes(wire.CmdWrite, wire.CfFUA, 1, 0, 8), "abcdefgh"...),
		reqBytes(wire.CmdRead, wire.CfDF, 2, 0, 4096),
		reqBytes(wire.CmdFlush, 0, 3, 0, 0),
		reqBytes(wire.CmdTrim, 0, 4, 4096, 8192),
		reqBytes(wire.CmdWriteZeroes, wire.CfNoHole|wire.CfFastZero, 5, 0, 65536),
		reqBytes(wire.CmdCache, 0, 6, 0, 65536),
		reqBytes(wire.CmdBlockStatus, wire.CfReqOne, 7, 0, 1<<20),
		reqBytes(wire.CmdRead, 0, 8, 1<<20-1, 2),
		reqBytes(wire.CmdWrite, 0, 9, 1<<63, 1),
		reqBytes(99, 0xffff, 10, 0, 0),
		reqBytes(wire.CmdDisc, 0, 11, 0, 0),
	}
	all := append([]byte(nil), hp...)
	for _, r := range reqs {
		seeds = append(seeds, append(append([]byte(nil), hp...), r...))
		all = append(all, r...)
	}
	seeds = append(seeds, all)
	// Handshake-only inputs.
	var list []byte
	list = binary.BigEndian.AppendUint32(list, wire.ClientFixedNew)
	list = binary.BigEndian.AppendUint64(list, wire.MagicOption)
	list = binary.BigEndian.AppendUint32(list, wire.OptList)
	list = binary.BigEndian.AppendUint32(list, 0)
	seeds = append(seeds, list)
	var en []byte
	en = binary.BigEndian.AppendUint32(en, wire.ClientFixedNew)
	en = binary.BigEndian.AppendUint64(en, wire.MagicOption)
	en = binary.BigEndian.AppendUint32(en, wire.OptExportName)
	en = binary.BigEndian.AppendUint32(en, 1)
	en = append(en, 'a')
	en = append(en, reqBytes(wire.CmdRead, 0, 1, 0, 512)...)
	seeds = append(seeds, en)
	return seeds
}

// FuzzServe feeds arbitrary client bytes to a whole connection: handshake
// and transmission. The server must neither panic nor hang, and the backend
// (which panics on an invalid range) must only see valid requests.
func FuzzServe(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg := DefaultConfig()
		cfg.MaxInflight = 4
		mem := newMem(1 << 20)
		ro := newMem(1 << 16)
		ro.caps.ReadOnly = true
		srv := NewServer(NewStaticExports("a", Export{Name: "a", Backend: mem}, Export{Name: "ro", Backend: ro}), cfg)
		defer srv.Close()
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = srv.ServeConn(fuzzconn.New(data))
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("server did not finish a %d-byte input", len(data))
		}
	})
}

// FuzzRequest checks the request decoder and validator on their own: a
// request they accept must address a valid range of the export.
func FuzzRequest(f *testing.F) {
	for _, s := range fuzzSeeds() {
		if len(s) >= wire.RequestHeaderLen {
			f.Add(s[len(s)-wire.RequestHeaderLen:], uint16(0xffff), true, true)
		}
	}
	f.Add(reqBytes(wire.CmdRead, 0, 1, 0, 0), uint16(wire.TfHasFlags|wire.TfReadOnly), false, false)
	f.Fuzz(func(t *testing.T, hdr []byte, flags uint16, structured, meta bool) {
		r, err := decodeRequest(hdr)
		if err != nil {
			return
		}
		const size = 1 << 30
		s := &session{flags: flags, structured: structured, metaBase: meta}
		if rej := s.check(r, size); rej != nil {
			if rej.errno == 0 || rej.msg == "" {
				t.Fatalf("rejection without errno or message: %+v", rej)
			}
			return
		}
		switch r.typ {
		case wire.CmdRead, wire.CmdWrite, wire.CmdTrim, wire.CmdWriteZeroes, wire.CmdCache, wire.CmdBlockStatus:
			if r.off > size || uint64(r.length) > size-r.off {
				t.Fatalf("accepted %s at %d+%d on a %d-byte export", commandName(r.typ), r.off, r.length, size)
			}
			if (r.typ == wire.CmdRead || r.typ == wire.CmdWrite) && r.length > MaxPayload {
				t.Fatalf("accepted a %d-byte payload", r.length)
			}
		case wire.CmdFlush, wire.CmdDisc:
		default:
			t.Fatalf("accepted unknown command %d", r.typ)
		}
		if flags&wire.TfReadOnly != 0 && (r.typ == wire.CmdWrite || r.typ == wire.CmdTrim || r.typ == wire.CmdWriteZeroes) {
			t.Fatalf("accepted %s on a read-only export", commandName(r.typ))
		}
	})
}
