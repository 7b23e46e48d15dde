package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// MaxMessageSize bounds one message from QEMU (one line of JSON). The
// largest QEMU 7.2 sends is query-qmp-schema's reply, about 200 KB.
const MaxMessageSize = 64 << 20

// EventBuffer is the number of events a Subscription holds before it is
// dropped as too slow.
const EventBuffer = 256

var (
	// ErrClosed is the error of a Conn after Close, and of a Subscription
	// after its Close.
	ErrClosed = errors.New("qmp: closed")
	// ErrDisconnected is the error of a Conn that QEMU closed (QEMU exits
	// after "quit" or when killed).
	ErrDisconnected = errors.New("qmp: QEMU closed the connection")
	// ErrProtocol marks a message from QEMU that is not QMP; the connection
	// is closed with it.
	ErrProtocol = errors.New("qmp: protocol error")
	// ErrSlowSubscriber is the error of a Subscription dropped because its
	// buffer was full when an event arrived.
	ErrSlowSubscriber = errors.New("qmp: subscriber fell behind and was dropped")
)

// Conn is a QMP connection to one QEMU process. Its methods are safe for
// concurrent use.
type Conn struct {
	nc       net.Conn
	greeting Greeting
	sendq    chan []byte
	done     chan struct{}

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan reply
	subs    map[*Subscription]struct{}
	err     error // why done was closed; set before
}

// reply is the outcome of one command.
type reply struct {
	ret json.RawMessage
	err error // a *Error, or the connection's error
}

// Dial connects to QEMU's QMP socket at addr on network ("unix" for a
// socket path, or "tcp"), reads the greeting and leaves capabilities
// negotiation mode (qmp_capabilities). ctx bounds the whole handshake, not
// the connection's life.
func Dial(ctx context.Context, network, addr string) (*Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("qmp: dial %s %s: %w", network, addr, err)
	}
	c, err := NewConn(ctx, nc)
	if err != nil {
		return nil, fmt.Errorf("qmp: %s: %w", addr, err)
	}
	return c, nil
}

// NewConn runs the QMP handshake on nc, a connection to QEMU's monitor,
// and returns the Conn that owns nc from then on (closing the Conn closes
// nc; on error nc is closed). ctx bounds the handshake.
func NewConn(ctx context.Context, nc net.Conn) (*Conn, error) {
	c := newConn(nc)
	// The greeting is read here, the rest by readLoop; both use r.
	r := bufio.NewReaderSize(nc, 64<<10)
	stop := context.AfterFunc(ctx, func() { _ = nc.SetReadDeadline(time.Unix(1, 0)) })
	line, err := readLine(r, MaxMessageSize)
	if !stop() || ctx.Err() != nil {
		nc.Close()
		return nil, fmt.Errorf("reading the greeting: %w", ctx.Err())
	}
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("reading the greeting: %w", err)
	}
	m, err := decode(line)
	if err == nil && m.kind != kindGreeting {
		err = fmt.Errorf("%w: expected the greeting, got %.80q", ErrProtocol, line)
	}
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("reading the greeting: %w", err)
	}
	c.greeting = m.greeting
	go c.readLoop(r)
	go c.writeLoop()
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// newConn returns a Conn on nc before the handshake.
func newConn(nc net.Conn) *Conn {
	return &Conn{
		nc:      nc,
		sendq:   make(chan []byte),
		done:    make(chan struct{}),
		pending: make(map[uint64]chan reply),
		subs:    make(map[*Subscription]struct{}),
	}
}

// Version returns QEMU's version from the greeting.
func (c *Conn) Version() Version { return c.greeting.Version }

// Greeting returns QEMU's greeting.
func (c *Conn) Greeting() Greeting { return c.greeting }

// Done returns a channel closed when the connection has ended; Err then
// says why.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns nil while the connection is up, then why it ended: ErrClosed
// after Close, an error wrapping ErrDisconnected when QEMU closed it (it
// exited), ErrProtocol for garbage from QEMU, or the read or write error.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close closes the connection. Commands in flight return ErrClosed and
// subscriptions are closed. Closing the QMP connection does not stop QEMU.
func (c *Conn) Close() error {
	c.fail(ErrClosed)
	return nil
}

// fail ends the connection with err (the first call wins).
func (c *Conn) fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	close(c.done)
	pending, subs := c.pending, c.subs
	c.pending, c.subs = nil, nil
	for _, ch := range pending {
		ch <- reply{err: err}
	}
	for s := range subs {
		s.err = err
		close(s.ch)
	}
	c.mu.Unlock()
	c.nc.Close()
}

// command is the wire form of a command.
type command struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments,omitempty"`
	ID        uint64          `json:"id"`
}

// Execute runs command with args (marshaled to JSON as the "arguments"
// object; nil for none) and decodes the reply's "return" value into result
// (a pointer; nil to ignore it). A QMP error reply is returned as a *Error
// wrapped with the command's name. When ctx ends first, Execute returns
// ctx's error at once and the command may or may not run. After the
// connection ended it returns the connection's error.
func (c *Conn) Execute(ctx context.Context, command string, args, result any) error {
	if command == "" {
		return errors.New("qmp: Execute with an empty command name")
	}
	line, ch, id, err := c.prepare(command, args)
	if err != nil {
		return err
	}
	select {
	case c.sendq <- line:
	case <-ctx.Done():
		c.forget(id)
		return fmt.Errorf("qmp %s: %w", command, ctx.Err())
	case <-c.done:
		// fail sent the connection's error to ch.
	}
	var r reply
	select {
	case r = <-ch:
	case <-ctx.Done():
		c.forget(id)
		return fmt.Errorf("qmp %s: %w", command, ctx.Err())
	}
	if r.err != nil {
		return fmt.Errorf("qmp %s: %w", command, r.err)
	}
	if result != nil {
		if err := json.Unmarshal(r.ret, result); err != nil {
			return fmt.Errorf("qmp %s: decoding the reply %.200q: %w", command, r.ret, err)
		}
	}
	return nil
}

// prepare encodes a command under a new id and registers its reply
// channel.
func (c *Conn) prepare(name string, args any) (line []byte, ch chan reply, id uint64, err error) {
	cmd := command{Execute: name}
	if args != nil {
		a, err := json.Marshal(args)
		if err != nil {
			return nil, nil, 0, fmt.Errorf("qmp %s: encoding the arguments: %w", name, err)
		}
		if string(a) != "null" {
			cmd.Arguments = a
		}
	}
	ch = make(chan reply, 1)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return nil, nil, 0, fmt.Errorf("qmp %s: %w", name, c.err)
	}
	c.nextID++
	cmd.ID = c.nextID
	line, err = json.Marshal(cmd)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("qmp %s: encoding the command: %w", name, err)
	}
	c.pending[cmd.ID] = ch
	return append(line, '\n'), ch, cmd.ID, nil
}

// forget drops the reply channel of a command whose caller gave up.
func (c *Conn) forget(id uint64) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// writeLoop writes the commands Execute hands over, one at a time.
func (c *Conn) writeLoop() {
	for {
		select {
		case line := <-c.sendq:
			if _, err := c.nc.Write(line); err != nil {
				c.fail(ioError("writing to", err))
				return
			}
		case <-c.done:
			return
		}
	}
}

// readLoop reads messages until the connection ends, delivering replies
// to their commands and events to the subscribers.
func (c *Conn) readLoop(r *bufio.Reader) {
	for {
		line, err := readLine(r, MaxMessageSize)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				err = ioError("reading from", err)
			}
			c.fail(err)
			return
		}
		if len(line) == 0 || (len(line) == 1 && line[0] == '\n') {
			continue
		}
		m, err := decode(line)
		if err != nil {
			c.fail(err)
			return
		}
		switch m.kind {
		case kindReply:
			c.deliver(m)
		case kindEvent:
			c.publish(m.event)
		default:
			c.fail(fmt.Errorf("%w: a second greeting", ErrProtocol))
			return
		}
	}
}

// ioError wraps an error of the socket, marking with ErrDisconnected the
// ways QEMU's exit shows: EOF, or a reset connection when QEMU exited with
// unread input (or a broken pipe when writing).
func ioError(op string, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return fmt.Errorf("%w: %s QEMU: %w", ErrDisconnected, op, err)
	}
	return fmt.Errorf("qmp: %s QEMU: %w", op, err)
}

// deliver hands a reply to the command waiting for it. A reply nobody
// waits for (its caller gave up, or QEMU could not read the command's id)
// is dropped.
func (c *Conn) deliver(m message) {
	if !m.hasID {
		return
	}
	c.mu.Lock()
	ch, ok := c.pending[m.id]
	delete(c.pending, m.id)
	c.mu.Unlock()
	if !ok {
		return
	}
	if m.err != nil {
		ch <- reply{err: m.err}
	} else {
		ch <- reply{ret: m.ret}
	}
}
