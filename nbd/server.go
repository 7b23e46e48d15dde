package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/tandem-project/tandem/volume"
)

const (
	readBufferSize       = 128 << 10
	handshakeWriteBuffer = 4 << 10
)

// Config tunes a Server. Start from DefaultConfig.
type Config struct {
	// Logger receives connection events and backend errors. Nil discards.
	Logger *slog.Logger
	// TLS, when set, lets clients upgrade with NBD_OPT_STARTTLS.
	TLS *tls.Config
	// TLSRequired refuses every option but STARTTLS and ABORT until TLS is
	// active (FORCEDTLS mode). It requires TLS.
	TLSRequired bool
	// HandshakeTimeout bounds the whole option haggling of one connection.
	HandshakeTimeout time.Duration
	// MaxInflight bounds the requests of one connection being served at
	// once; the server stops reading that connection while it is reached.
	MaxInflight int
	// MaxInflightBytes bounds the READ and WRITE payload bytes of one
	// connection held in memory at once. It must be at least MaxPayload.
	MaxInflightBytes int64
	// Observer, if set, is told about every answered request.
	Observer Observer
}

// Observer receives one call per answered request: the export, the
// command ("READ", "WRITE", ...), the request's length, the time from
// reading its header to queueing its reply, and the NBD error sent (0 for
// success). It must be cheap and safe for concurrent use.
type Observer interface {
	Observe(export, command string, length uint32, took time.Duration, errno uint32)
}

// DefaultConfig returns the configuration the agent uses.
func DefaultConfig() Config {
	return Config{
		HandshakeTimeout: 30 * time.Second,
		MaxInflight:      128,
		MaxInflightBytes: 2 * MaxPayload,
	}
}

// Validate reports the first problem with c, naming the field.
func (c Config) Validate() error {
	switch {
	case c.HandshakeTimeout <= 0:
		return fmt.Errorf("nbd: HandshakeTimeout must be positive, got %v", c.HandshakeTimeout)
	case c.MaxInflight < 1:
		return fmt.Errorf("nbd: MaxInflight must be at least 1, got %d", c.MaxInflight)
	case c.MaxInflightBytes < MaxPayload:
		return fmt.Errorf("nbd: MaxInflightBytes must be at least MaxPayload (%d), got %d", MaxPayload, c.MaxInflightBytes)
	case c.TLSRequired && c.TLS == nil:
		return errors.New("nbd: TLSRequired needs TLS to be set")
	}
	return nil
}

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("nbd: server closed")

// Server serves Exports over any number of listeners.
type Server struct {
	exports Exports
	cfg     Config
	log     *slog.Logger
	bufs    bufPool

	ctx    context.Context // canceled by Close: aborts backend calls
	cancel context.CancelFunc

	closing atomic.Bool
	mu      sync.Mutex
	lns     map[net.Listener]struct{}
	conns   map[net.Conn]attachment // what each connection uses (zero while negotiating)
	active  sync.WaitGroup          // connections being served

	inflightCount atomic.Int64 // requests being served, all connections
}

// NewServer returns a server for exports. It panics if cfg is invalid: check
// it with Validate first when it comes from users.
func NewServer(exports Exports, cfg Config) *Server {
	if err := cfg.Validate(); err != nil {
		panic(err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		exports: exports,
		cfg:     cfg,
		log:     log,
		ctx:     ctx,
		cancel:  cancel,
		lns:     make(map[net.Listener]struct{}),
		conns:   make(map[net.Conn]attachment),
	}
}

func (s *Server) shuttingDown() bool { return s.closing.Load() }

// Serve accepts connections on l until Shutdown or Close, serving each on
// its own goroutine. It always returns a non-nil error; after Shutdown or
// Close it is ErrServerClosed.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.lns[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.lns, l)
		s.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.closing.Load() {
				return ErrServerClosed
			}
			if temporaryAcceptError(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("nbd: accept failed; retrying", "err", err, "in", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("nbd: accept on %s: %w", l.Addr(), err)
		}
		backoff = 0
		if !s.track(nc) {
			nc.Close()
			return ErrServerClosed
		}
		go func() {
			defer s.untrack(nc)
			if err := s.serveConn(nc); err != nil {
				s.log.Info("nbd: connection closed", "remote", nc.RemoteAddr(), "err", err)
			}
		}()
	}
}

// temporaryAcceptError reports accept errors that go away by themselves:
// running out of file descriptors, connections aborted before accept.
func temporaryAcceptError(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() ||
		errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ENOBUFS)
}

func (s *Server) track(nc net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return false
	}
	s.conns[nc] = attachment{}
	s.active.Add(1)
	return true
}

func (s *Server) untrack(nc net.Conn) {
	nc.Close()
	s.mu.Lock()
	delete(s.conns, nc)
	s.mu.Unlock()
	s.active.Done()
}

// ServeConn serves one already accepted connection and closes it. It returns
// when the client disconnects or the server closes.
func (s *Server) ServeConn(nc net.Conn) error {
	if !s.track(nc) {
		nc.Close()
		return ErrServerClosed
	}
	defer s.untrack(nc)
	return s.serveConn(nc)
}

func (s *Server) serveConn(nc net.Conn) error {
	if tc, ok := nc.(*net.TCPConn); ok {
		// Replies are batched by the reply writer; never let Nagle delay them.
		_ = tc.SetNoDelay(true)
	}
	_ = nc.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	h := &handshake{
		srv:  s,
		conn: nc,
		r:    bufio.NewReaderSize(nc, readBufferSize),
		w:    bufio.NewWriterSize(nc, handshakeWriteBuffer),
	}
	hctx, cancel := context.WithTimeout(s.ctx, s.cfg.HandshakeTimeout)
	sess, err := h.run(hctx)
	cancel()
	if err != nil {
		if errors.Is(err, errAborted) || errors.Is(err, io.EOF) {
			return nil
		}
		return err
	}
	_ = sess.conn.SetDeadline(time.Time{})
	s.mu.Lock()
	if _, ok := s.conns[nc]; ok {
		s.conns[nc] = attachment{export: sess.export.Name, requested: sess.requested}
	}
	s.mu.Unlock()
	cctx, ccancel := context.WithCancel(s.ctx)
	defer ccancel()
	c := &conn{
		srv:    s,
		s:      sess,
		b:      sess.export.Backend,
		log:    s.log.With("export", sess.export.Name, "remote", nc.RemoteAddr().String()),
		ctx:    cctx,
		cancel: ccancel,
		out:    newReplyWriter(sess.conn),
		slots:  make(chan struct{}, s.cfg.MaxInflight),
		work:   make(chan job),
		budget: semaphore.NewWeighted(s.cfg.MaxInflightBytes),
	}
	c.nowait, _ = c.b.(volume.NowaitReader)
	c.durable = c.b.Caps().DurableWrites
	if _, ok := sess.conn.(syscall.Conn); ok {
		// A plain socket: the kernel copies views to it. (TLS would
		// read them in the process.)
		c.mapped, _ = c.b.(volume.MappedReader)
	}
	c.obs = s.cfg.Observer
	c.log.Debug("nbd: transmission started", "flags", sess.flags, "structured", sess.structured)
	err = c.serve()
	c.out.close()
	if werr := c.out.failed(); err == nil && werr != nil {
		err = werr
	}
	// A TLS connection (ours after STARTTLS, or one that came TLS, like a
	// replication port's) ends with a close_notify.
	if tc, ok := sess.conn.(interface {
		ConnectionState() tls.ConnectionState
		CloseWrite() error
	}); ok {
		_ = tc.CloseWrite()
	}
	return err
}

// Shutdown stops accepting connections, answers new requests with
// ESHUTDOWN, and waits until every request in flight has been answered (or
// ctx ends), then closes all connections.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing.Store(true)
	for l := range s.lns {
		l.Close()
	}
	s.mu.Unlock()

	// Connections idle in a read never finish by themselves: give in-flight
	// requests time to complete, then close everything.
	done := make(chan struct{})
	go func() {
		s.waitQuiet(ctx)
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return s.Close()
}

// waitQuiet returns once no connection has a request in flight, polling
// briefly (Shutdown is rare; per-request bookkeeping to avoid it is not).
func (s *Server) waitQuiet(ctx context.Context) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if s.inflight() == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Server) inflight() int {
	return int(s.inflightCount.Load())
}

// Attached returns how many connections use each export (exports without
// connections are absent).
func (s *Server) Attached() map[string]int {
	return s.countAttached(func(a attachment) string { return a.export })
}

// AttachedAs returns how many connections opened an export under each
// name, as the clients asked for it (a volume's with a writer epoch, say,
// which only one VM run uses; names without connections are absent). A
// connection counts until it is fully closed, its requests in flight
// finished.
func (s *Server) AttachedAs() map[string]int {
	return s.countAttached(func(a attachment) string { return a.requested })
}

// countAttached counts the connections past their handshake by key.
func (s *Server) countAttached(key func(attachment) string) map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for _, a := range s.conns {
		if a.export != "" {
			out[key(a)]++
		}
	}
	return out
}

// attachment is what one connection uses: the export, and the name the
// client asked for it by.
type attachment struct {
	export, requested string
}

// Disconnect closes every connection that uses one of the named exports
// (for a volume being deleted) and returns how many it closed. Requests in
// flight on them are abandoned; the clients see the connection drop.
func (s *Server) Disconnect(exports ...string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for nc, a := range s.conns {
		if a.export != "" && slices.Contains(exports, a.export) {
			nc.Close()
			n++
		}
	}
	return n
}

// Close closes all listeners and connections at once, cancels backend calls
// in progress and waits for the connection goroutines to end.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closing.Store(true)
	for l := range s.lns {
		l.Close()
	}
	for nc := range s.conns {
		nc.Close()
	}
	s.mu.Unlock()
	s.cancel()
	s.active.Wait()
	return nil
}
