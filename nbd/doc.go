// Package nbd is Tandem's NBD server: the fixed-newstyle handshake with
// option haggling, and a transmission phase that serves many requests of one
// connection concurrently and replies out of order.
//
// The server speaks the protocol of https://github.com/NetworkBlockDevice/nbd
// (doc/proto.md): options EXPORT_NAME, ABORT, LIST, STARTTLS, INFO, GO,
// STRUCTURED_REPLY, LIST_META_CONTEXT and SET_META_CONTEXT (base:allocation);
// commands READ, WRITE, DISC, FLUSH, TRIM, CACHE, WRITE_ZEROES and
// BLOCK_STATUS with the FUA, NO_HOLE, DF, REQ_ONE and FAST_ZERO flags.
//
// Wire constants come from go-nbd's protocol package where it has them and
// are completed here. The server knows nothing about sockets beyond net.Conn:
// tests drive it over net.Pipe with byte slices, the agent over TCP and unix
// sockets.
//
// Bad input is answered at the edge: a request the server can still frame
// (known magic, bounded payload) gets the NBD error the spec names and the
// connection goes on; input it cannot frame (bad magic, truncated header)
// closes that one connection. Nothing a client sends can panic the server,
// grow its memory without bound, or reach a Backend with an invalid range.
//
// Using it:
//
//	srv := nbd.NewServer(exports, nbd.Config{Logger: log})
//	go srv.Serve(listener)
//	...
//	srv.Shutdown(ctx) // ESHUTDOWN to new requests, waits for in-flight ones
package nbd
