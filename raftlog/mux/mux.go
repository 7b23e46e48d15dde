// Package mux shares one TCP port of a host among every volume group and
// service of that host. Each connection starts with a small header naming
// its kind (raft traffic of one group, volume streaming, ...) and the group;
// the listener hands the connection to whoever registered for it.
//
// Raft groups use Layer, a hashicorp/raft StreamLayer, so that each group
// runs an ordinary raft.NetworkTransport while the host listens on one port.
//
// With a TLS identity (Listen's id) the port speaks mutual TLS only: both
// ends present a certificate signed by the cluster's peer CA before the
// header is read, so that only the cluster's hosts can reach a group.
package mux

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Connection kinds.
const (
	// KindRaft carries the raft RPCs of one group.
	KindRaft byte = 1
	// KindStream carries a volume stream to a catching-up replica.
	KindStream byte = 2
	// KindNBD carries NBD from an agent forwarding a volume's I/O to the
	// agent of its leader.
	KindNBD byte = 3
	// KindRoom asks a host whether its disk is short of space: it answers
	// one byte (1: short, 0: not) and closes the connection.
	KindRoom byte = 4
	// KindReadmit carries the questions of a replica that has no state
	// about its group: whether the group has a history, and the steps that
	// take it out of the group and back in (one JSON request, one JSON
	// answer).
	KindReadmit byte = 5
)

const (
	magic         = "TNDM"
	version       = 1
	maxNameLen    = 1024
	headerTimeout = 10 * time.Second
	acceptBacklog = 16
)

// ErrClosed is returned by Accept on a closed Layer or Listener.
var ErrClosed = errors.New("mux: closed")

type route struct {
	kind byte
	name string
}

// Listener accepts the connections of one host port and routes them.
type Listener struct {
	ln  net.Listener
	log *slog.Logger
	tls *TLS

	mu       sync.Mutex
	layers   map[route]*Layer
	handlers map[byte]func(name string, c net.Conn)
	closed   bool
	done     chan struct{}
}

// Listen listens on addr ("host:port"), with mutual TLS if id is not nil.
// Call Serve to start routing.
func Listen(addr string, id *TLS, log *slog.Logger) (*Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("mux: listen %s: %w", addr, err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Listener{
		ln:       ln,
		log:      log,
		tls:      id,
		layers:   map[route]*Layer{},
		handlers: map[byte]func(string, net.Conn){},
		done:     make(chan struct{}),
	}, nil
}

// Addr returns the address the listener is bound to.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Dialer returns a Dialer with the listener's TLS identity, for
// connections to the other hosts' ports.
func (l *Listener) Dialer() Dialer { return Dialer{TLS: l.tls, Log: l.log} }

// Serve accepts connections until Close; it returns nil after Close.
func (l *Listener) Serve() error {
	var backoff time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			select {
			case <-l.done:
				return nil
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("mux: accept: %w", err)
		}
		backoff = 0
		go l.route(c)
	}
}

// route reads the header of c and hands it over, or closes it.
func (l *Listener) route(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	_ = c.SetDeadline(time.Now().Add(headerTimeout))
	if l.tls != nil {
		tc := tls.Server(c, serverConfig(l.tls, l.log))
		if err := tc.Handshake(); err != nil {
			// A connection closed before it said anything (a port check)
			// is not worth a warning; a refused certificate is.
			lvl := slog.LevelWarn
			if errors.Is(err, io.EOF) {
				lvl = slog.LevelDebug
			}
			l.log.Log(context.Background(), lvl, "mux: TLS handshake refused", "remote", c.RemoteAddr().String(), "err", err)
			c.Close()
			return
		}
		c = withRevocation(tc, l.tls, l.log)
	}
	kind, name, err := readHeader(c)
	if err != nil {
		l.log.Debug("mux: bad connection header", "remote", c.RemoteAddr().String(), "err", err)
		c.Close()
		return
	}
	_ = c.SetDeadline(time.Time{})
	l.mu.Lock()
	layer := l.layers[route{kind, name}]
	handler := l.handlers[kind]
	l.mu.Unlock()
	switch {
	case layer != nil:
		select {
		case layer.ch <- c:
		case <-layer.done:
			c.Close()
		case <-time.After(headerTimeout):
			l.log.Warn("mux: group not accepting connections", "group", name)
			c.Close()
		}
	case handler != nil:
		handler(name, c)
	default:
		// Not (or no longer, or not yet) served here: the dialer retries.
		l.log.Debug("mux: connection for unknown route", "kind", kind, "name", name)
		c.Close()
	}
}

// Handle registers h for connections of kind that no Layer takes. h runs
// on the connection's own goroutine and owns the connection.
func (l *Listener) Handle(kind byte, h func(name string, c net.Conn)) {
	l.mu.Lock()
	l.handlers[kind] = h
	l.mu.Unlock()
}

// Layer returns the raft.StreamLayer of group name. Close the Layer when
// the group stops.
func (l *Listener) Layer(name string) (*Layer, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, ErrClosed
	}
	r := route{KindRaft, name}
	if _, ok := l.layers[r]; ok {
		return nil, fmt.Errorf("mux: group %q already has a layer", name)
	}
	layer := &Layer{l: l, r: r, ch: make(chan net.Conn, acceptBacklog), done: make(chan struct{})}
	l.layers[r] = layer
	return layer, nil
}

// Close stops accepting connections and closes every Layer.
func (l *Listener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.done)
	layers := l.layers
	l.layers = map[route]*Layer{}
	l.mu.Unlock()
	for _, layer := range layers {
		layer.close()
	}
	return l.ln.Close()
}

// Layer is a raft.StreamLayer for one group on a shared Listener.
type Layer struct {
	l    *Listener
	r    route
	ch   chan net.Conn
	once sync.Once
	done chan struct{}
}

var _ raft.StreamLayer = (*Layer)(nil)

// Accept implements net.Listener.
func (y *Layer) Accept() (net.Conn, error) {
	select {
	case c := <-y.ch:
		return c, nil
	case <-y.done:
		return nil, ErrClosed
	}
}

// Close implements net.Listener: it unregisters the group.
func (y *Layer) Close() error {
	y.l.mu.Lock()
	if y.l.layers[y.r] == y {
		delete(y.l.layers, y.r)
	}
	y.l.mu.Unlock()
	y.close()
	return nil
}

func (y *Layer) close() {
	y.once.Do(func() {
		close(y.done)
		for {
			select {
			case c := <-y.ch:
				c.Close()
			default:
				return
			}
		}
	})
}

// Addr implements net.Listener: the shared listener's address.
func (y *Layer) Addr() net.Addr { return y.l.Addr() }

// Dial implements raft.StreamLayer: it connects to the host at address and
// asks for this layer's group.
func (y *Layer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return y.l.Dialer().Dial(ctx, string(address), y.r.kind, y.r.name)
}

// Dialer opens connections to hosts' mux ports. The zero Dialer speaks
// plain TCP, for ports without TLS.
type Dialer struct {
	// TLS, if set, is this host's identity for ports that speak mutual TLS.
	TLS *TLS
	// Log receives TLS's reloads (nil: discarded).
	Log *slog.Logger
}

// Dial connects to the host port at addr and asks for kind and name. The
// returned connection is ready for the kind's own protocol.
func (d Dialer) Dial(ctx context.Context, addr string, kind byte, name string) (net.Conn, error) {
	var nd net.Dialer
	c, err := nd.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("mux: dial %s: %w", addr, err)
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	return d.Open(ctx, c, addr, kind, name)
}

// Open starts the port's protocol on c, a new connection to addr (from a
// dialer of the caller's own): the TLS handshake if d has an identity,
// then the header for kind and name. It closes c if that fails.
func (d Dialer) Open(ctx context.Context, c net.Conn, addr string, kind byte, name string) (net.Conn, error) {
	if len(name) > maxNameLen {
		c.Close()
		return nil, fmt.Errorf("mux: name of %d bytes", len(name))
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(headerTimeout)
	}
	_ = c.SetDeadline(deadline)
	if d.TLS != nil {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("mux: dial %s: %w", addr, err)
		}
		tc := tls.Client(c, clientConfig(d.TLS, d.Log, host))
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, fmt.Errorf("mux: dial %s: TLS: %w", addr, err)
		}
		c = withRevocation(tc, d.TLS, d.Log)
	}
	hdr := make([]byte, 0, 8+len(name))
	hdr = append(hdr, magic...)
	hdr = append(hdr, version, kind)
	hdr = binary.BigEndian.AppendUint16(hdr, uint16(len(name)))
	hdr = append(hdr, name...)
	if _, err := c.Write(hdr); err != nil {
		c.Close()
		return nil, fmt.Errorf("mux: dial %s: %w", addr, err)
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

func readHeader(r io.Reader) (kind byte, name string, err error) {
	var h [8]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, "", err
	}
	if string(h[:4]) != magic {
		return 0, "", fmt.Errorf("bad magic %q", h[:4])
	}
	if h[4] != version {
		return 0, "", fmt.Errorf("unsupported version %d", h[4])
	}
	n := binary.BigEndian.Uint16(h[6:])
	if n > maxNameLen {
		return 0, "", fmt.Errorf("name of %d bytes", n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return 0, "", err
	}
	return h[5], string(b), nil
}
