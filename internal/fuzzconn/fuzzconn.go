// Package fuzzconn provides a net.Conn for fuzzing servers: its input is
// a fixed byte string and its output is discarded, so the server sees
// exactly what the fuzzer wrote and never blocks on a peer.
package fuzzconn

import (
	"bytes"
	"net"
	"time"
)

// Conn is a net.Conn that reads a fixed input and discards writes.
// Deadlines are accepted and ignored: reads end at the input's end.
type Conn struct {
	r *bytes.Reader
}

// New returns a Conn whose reads return input, then io.EOF.
func New(input []byte) *Conn { return &Conn{r: bytes.NewReader(input)} }

// Read implements net.Conn.
func (c *Conn) Read(b []byte) (int, error) { return c.r.Read(b) }

// Write implements net.Conn; it discards b.
func (c *Conn) Write(b []byte) (int, error) { return len(b), nil }

// Close implements net.Conn.
func (c *Conn) Close() error { return nil }

// LocalAddr implements net.Conn.
func (c *Conn) LocalAddr() net.Addr { return &net.TCPAddr{} }

// RemoteAddr implements net.Conn.
func (c *Conn) RemoteAddr() net.Addr { return &net.TCPAddr{} }

// SetDeadline implements net.Conn.
func (c *Conn) SetDeadline(time.Time) error { return nil }

// SetReadDeadline implements net.Conn.
func (c *Conn) SetReadDeadline(time.Time) error { return nil }

// SetWriteDeadline implements net.Conn.
func (c *Conn) SetWriteDeadline(time.Time) error { return nil }
