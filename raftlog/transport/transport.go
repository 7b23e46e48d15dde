// Package transport is the network transport of Tandem's raft groups: a
// hashicorp/raft Transport over any raft.StreamLayer (the host's shared mux
// port), modelled on raft.NetworkTransport but framing the entries' data
// raw instead of through msgpack.
//
// Every RPC is [type u8][msgpack request]; AppendEntries sends its entries
// with their Data removed in the msgpack part, then [count u32][len u32 ×
// count] and the data of each entry, which the receiver reads straight into
// one buffer per entry. Responses are [msgpack error string][msgpack
// response]. Decoding msgpack byte slices costs an order of magnitude more
// CPU than a copy (and it was most of the CPU of 1 MiB writes), which is why
// the data stays out of it.
//
// Replication is not pipelined unless asked for (Config.MaxInFlight),
// heartbeats take the fast path raft asks for, and InstallSnapshot may take as long as the
// receiver needs (a replica pulling its volume) up to SnapshotTimeout.
package transport

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"
)

const (
	rpcAppendEntries uint8 = iota
	rpcRequestVote
	rpcInstallSnapshot
	rpcTimeoutNow
	rpcRequestPreVote
)

const (
	// maxEntryData bounds one entry's data as a sanity check on input.
	maxEntryData = 256 << 20
	bufSize      = 256 << 10
)

var (
	// ErrShutdown is returned by RPCs on a closed transport.
	ErrShutdown = errors.New("transport: shut down")
	// ErrPipelineShutdown is returned by a closed pipeline.
	ErrPipelineShutdown = errors.New("transport: pipeline shut down")
)

// Config configures a Transport.
type Config struct {
	// Stream carries the connections (one group's mux layer).
	Stream raft.StreamLayer
	// Timeout bounds every RPC but InstallSnapshot.
	Timeout time.Duration
	// SnapshotTimeout bounds InstallSnapshot, which lasts as long as the
	// receiving replica needs to copy its volume.
	SnapshotTimeout time.Duration
	// MaxPool is the number of idle connections kept per target.
	MaxPool int
	// MaxInFlight is the number of AppendEntries a pipeline keeps in
	// flight; 0 or 1 (the default) disables pipelining. Without a
	// pipeline raft sends one AppendEntries at a time to each follower and,
	// when one is behind, sends again as soon as it answers until it caught
	// up. In pipeline mode raft sends one batch (MaxAppendEntries entries)
	// per new log append or per CommitTimeout: a follower that fell
	// thousands of entries behind (a partition, a restart) caught up at a
	// few hundred entries per second once writes slowed, and never while
	// they went on faster.
	MaxInFlight int
	// Logger receives connection errors.
	Logger *slog.Logger
}

// Transport implements raft.Transport, raft.WithClose and raft.WithPreVote.
type Transport struct {
	cfg     Config
	log     *slog.Logger
	consume chan raft.RPC

	hbMu sync.Mutex
	hbFn func(raft.RPC)

	poolMu sync.Mutex
	pool   map[raft.ServerAddress][]*conn

	// answered holds, per target, when an AppendEntries to it last got an
	// answer (see Answered).
	answeredMu sync.Mutex
	answered   map[raft.ServerAddress]time.Time

	shutdown     chan struct{}
	shutdownOnce sync.Once
	wg           sync.WaitGroup
}

var (
	_ raft.Transport   = (*Transport)(nil)
	_ raft.WithClose   = (*Transport)(nil)
	_ raft.WithPreVote = (*Transport)(nil)
)

// New starts a transport accepting connections from cfg.Stream.
func New(cfg Config) *Transport {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.SnapshotTimeout <= 0 {
		cfg.SnapshotTimeout = 24 * time.Hour
	}
	if cfg.MaxPool <= 0 {
		cfg.MaxPool = 4
	}
	if cfg.MaxInFlight < 2 {
		cfg.MaxInFlight = 1
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	t := &Transport{
		cfg:      cfg,
		log:      cfg.Logger,
		consume:  make(chan raft.RPC),
		pool:     map[raft.ServerAddress][]*conn{},
		answered: map[raft.ServerAddress]time.Time{},
		shutdown: make(chan struct{}),
	}
	t.wg.Add(1)
	go t.listen()
	return t
}

// conn is one connection with its codec state.
type conn struct {
	target raft.ServerAddress
	c      net.Conn
	r      *bufio.Reader
	w      *bufio.Writer
	dec    *codec.Decoder
	enc    *codec.Encoder
}

func newConn(target raft.ServerAddress, c net.Conn) *conn {
	r := bufio.NewReaderSize(c, bufSize)
	w := bufio.NewWriterSize(c, bufSize)
	return &conn{
		target: target,
		c:      c,
		r:      r,
		w:      w,
		dec:    codec.NewDecoder(r, &codec.MsgpackHandle{}),
		enc:    codec.NewEncoder(w, &codec.MsgpackHandle{}),
	}
}

// Consumer implements raft.Transport.
func (t *Transport) Consumer() <-chan raft.RPC { return t.consume }

// LocalAddr implements raft.Transport.
func (t *Transport) LocalAddr() raft.ServerAddress {
	return raft.ServerAddress(t.cfg.Stream.Addr().String())
}

// SetHeartbeatHandler implements raft.Transport.
func (t *Transport) SetHeartbeatHandler(cb func(raft.RPC)) {
	t.hbMu.Lock()
	t.hbFn = cb
	t.hbMu.Unlock()
}

// EncodePeer implements raft.Transport.
func (t *Transport) EncodePeer(_ raft.ServerID, addr raft.ServerAddress) []byte {
	return []byte(addr)
}

// DecodePeer implements raft.Transport.
func (t *Transport) DecodePeer(b []byte) raft.ServerAddress { return raft.ServerAddress(b) }

// Close implements raft.WithClose.
func (t *Transport) Close() error {
	t.shutdownOnce.Do(func() {
		close(t.shutdown)
		t.cfg.Stream.Close()
		t.poolMu.Lock()
		for _, conns := range t.pool {
			for _, c := range conns {
				c.c.Close()
			}
		}
		t.pool = map[raft.ServerAddress][]*conn{}
		t.poolMu.Unlock()
	})
	t.wg.Wait()
	return nil
}

func (t *Transport) isShutdown() bool {
	select {
	case <-t.shutdown:
		return true
	default:
		return false
	}
}

func (t *Transport) getConn(target raft.ServerAddress) (*conn, error) {
	t.poolMu.Lock()
	if conns := t.pool[target]; len(conns) > 0 {
		c := conns[len(conns)-1]
		t.pool[target] = conns[:len(conns)-1]
		t.poolMu.Unlock()
		return c, nil
	}
	t.poolMu.Unlock()
	if t.isShutdown() {
		return nil, ErrShutdown
	}
	nc, err := t.cfg.Stream.Dial(target, t.cfg.Timeout)
	if err != nil {
		return nil, err
	}
	return newConn(target, nc), nil
}

func (t *Transport) returnConn(c *conn) {
	_ = c.c.SetDeadline(time.Time{})
	t.poolMu.Lock()
	defer t.poolMu.Unlock()
	if !t.isShutdown() && len(t.pool[c.target]) < t.cfg.MaxPool {
		t.pool[c.target] = append(t.pool[c.target], c)
		return
	}
	c.c.Close()
}

// AppendEntries implements raft.Transport.
func (t *Transport) AppendEntries(_ raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	err := t.genericRPC(target, rpcAppendEntries, args, resp)
	if err == nil {
		t.noteAnswer(target)
	}
	return err
}

// noteAnswer records that target answered an AppendEntries now.
func (t *Transport) noteAnswer(target raft.ServerAddress) {
	now := time.Now()
	t.answeredMu.Lock()
	t.answered[target] = now
	t.answeredMu.Unlock()
}

// Answered returns when an AppendEntries to target (a leader's heartbeats
// included) last got an answer, zero if none did. A leader's heartbeats
// to a host that is cut off fail only after Timeout, when the connection
// gives up; the time of its last answer shows it at once.
func (t *Transport) Answered(target raft.ServerAddress) time.Time {
	t.answeredMu.Lock()
	defer t.answeredMu.Unlock()
	return t.answered[target]
}

// RequestVote implements raft.Transport.
func (t *Transport) RequestVote(_ raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	return t.genericRPC(target, rpcRequestVote, args, resp)
}

// RequestPreVote implements raft.WithPreVote.
func (t *Transport) RequestPreVote(_ raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	return t.genericRPC(target, rpcRequestPreVote, args, resp)
}

// TimeoutNow implements raft.Transport.
func (t *Transport) TimeoutNow(_ raft.ServerID, target raft.ServerAddress, args *raft.TimeoutNowRequest, resp *raft.TimeoutNowResponse) error {
	return t.genericRPC(target, rpcTimeoutNow, args, resp)
}

func (t *Transport) genericRPC(target raft.ServerAddress, typ uint8, args, resp any) error {
	c, err := t.getConn(target)
	if err != nil {
		return err
	}
	_ = c.c.SetDeadline(time.Now().Add(t.cfg.Timeout))
	if err := sendRPC(c, typ, args); err != nil {
		c.c.Close()
		return err
	}
	ok, err := decodeResponse(c, resp)
	if ok {
		t.returnConn(c)
	} else {
		c.c.Close()
	}
	return err
}

// InstallSnapshot implements raft.Transport.
func (t *Transport) InstallSnapshot(_ raft.ServerID, target raft.ServerAddress, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	c, err := t.getConn(target)
	if err != nil {
		return err
	}
	defer c.c.Close() // never reused
	_ = c.c.SetDeadline(time.Now().Add(t.cfg.SnapshotTimeout))
	if err := c.w.WriteByte(rpcInstallSnapshot); err != nil {
		return err
	}
	if err := c.enc.Encode(args); err != nil {
		return err
	}
	if _, err := io.CopyN(c.w, data, args.Size); err != nil {
		return fmt.Errorf("transport: sending snapshot: %w", err)
	}
	if err := c.w.Flush(); err != nil {
		return err
	}
	_, err = decodeResponse(c, resp)
	return err
}

// sendRPC writes one request. AppendEntries data is framed raw.
func sendRPC(c *conn, typ uint8, args any) error {
	if err := c.w.WriteByte(typ); err != nil {
		return err
	}
	if ae, ok := args.(*raft.AppendEntriesRequest); ok && len(ae.Entries) > 0 {
		hdr := *ae
		hdr.Entries = make([]*raft.Log, len(ae.Entries))
		lens := make([]byte, 4+4*len(ae.Entries))
		binary.BigEndian.PutUint32(lens, uint32(len(ae.Entries)))
		for i, e := range ae.Entries {
			stripped := *e
			stripped.Data = nil
			hdr.Entries[i] = &stripped
			binary.BigEndian.PutUint32(lens[4+4*i:], uint32(len(e.Data)))
		}
		if err := c.enc.Encode(&hdr); err != nil {
			return err
		}
		if _, err := c.w.Write(lens); err != nil {
			return err
		}
		for _, e := range ae.Entries {
			if _, err := c.w.Write(e.Data); err != nil {
				return err
			}
		}
	} else {
		if err := c.enc.Encode(args); err != nil {
			return err
		}
		if typ == rpcAppendEntries {
			// Zero entries: still send the (empty) length table.
			if _, err := c.w.Write([]byte{0, 0, 0, 0}); err != nil {
				return err
			}
		}
	}
	return c.w.Flush()
}

// decodeResponse reads one response; ok reports whether the connection can
// be reused.
func decodeResponse(c *conn, resp any) (ok bool, err error) {
	var rpcErr string
	if err := c.dec.Decode(&rpcErr); err != nil {
		return false, err
	}
	if err := c.dec.Decode(resp); err != nil {
		return false, err
	}
	if rpcErr != "" {
		return true, errors.New(rpcErr)
	}
	return true, nil
}

// readEntriesData reads the raw data of an AppendEntries request.
func readEntriesData(r *bufio.Reader, req *raft.AppendEntriesRequest) error {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return err
	}
	count := int(binary.BigEndian.Uint32(n[:]))
	if count != len(req.Entries) {
		return fmt.Errorf("transport: %d data lengths for %d entries", count, len(req.Entries))
	}
	if count == 0 {
		return nil
	}
	lens := make([]byte, 4*count)
	if _, err := io.ReadFull(r, lens); err != nil {
		return err
	}
	for i, e := range req.Entries {
		l := binary.BigEndian.Uint32(lens[4*i:])
		if l > maxEntryData {
			return fmt.Errorf("transport: entry data of %d bytes", l)
		}
		if l == 0 {
			e.Data = nil
			continue
		}
		var err error
		if e.Data, err = readData(r, int(l)); err != nil {
			return err
		}
	}
	return nil
}

// dataStep is the most readData allocates ahead of the bytes it received:
// the largest entry Tandem's groups make by default (raftlog's
// MaxEntryBytes), which therefore costs one allocation.
const dataStep = 4 << 20

// readData reads n bytes into a new slice. Past dataStep it grows the
// slice as the bytes arrive, so that the lengths a peer announces cost
// memory only once it sends that much: the entries are read one after the
// other, so a request claiming many large entries and sending nothing
// holds dataStep bytes, not the sum of its claims.
func readData(r io.Reader, n int) ([]byte, error) {
	b := make([]byte, 0, min(n, dataStep))
	for len(b) < n {
		if len(b) == cap(b) {
			b = slices.Grow(b, min(n-len(b), len(b)))
		}
		k, err := io.ReadFull(r, b[len(b):min(cap(b), n)])
		b = b[:len(b)+k]
		if err != nil {
			return nil, err
		}
	}
	return b, nil
}

// listen accepts connections until Close.
func (t *Transport) listen() {
	defer t.wg.Done()
	var delay time.Duration
	for {
		nc, err := t.cfg.Stream.Accept()
		if err != nil {
			if t.isShutdown() {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			t.log.Warn("transport: accept failed", "err", err)
			select {
			case <-t.shutdown:
				return
			case <-time.After(delay):
			}
			continue
		}
		delay = 0
		t.wg.Add(1)
		go t.handleConn(nc)
	}
}

func (t *Transport) handleConn(nc net.Conn) {
	defer t.wg.Done()
	defer nc.Close()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-t.shutdown:
			nc.Close()
		case <-stop:
		}
	}()
	c := newConn("", nc)
	for {
		if err := t.handleCommand(c); err != nil {
			if !errors.Is(err, io.EOF) && !t.isShutdown() && !errors.Is(err, net.ErrClosed) {
				t.log.Debug("transport: connection ended", "remote", nc.RemoteAddr().String(), "err", err)
			}
			return
		}
		if err := c.w.Flush(); err != nil {
			return
		}
	}
}

// handleCommand reads one RPC, hands it to raft and writes the response.
func (t *Transport) handleCommand(c *conn) error {
	typ, err := c.r.ReadByte()
	if err != nil {
		return err
	}
	respCh := make(chan raft.RPCResponse, 1)
	rpc := raft.RPC{RespChan: respCh}
	heartbeat := false
	switch typ {
	case rpcAppendEntries:
		var req raft.AppendEntriesRequest
		if err := c.dec.Decode(&req); err != nil {
			return err
		}
		if err := readEntriesData(c.r, &req); err != nil {
			return err
		}
		rpc.Command = &req
		heartbeat = req.Term != 0 && req.RPCHeader.Addr != nil && req.PrevLogEntry == 0 &&
			req.PrevLogTerm == 0 && len(req.Entries) == 0 && req.LeaderCommitIndex == 0
	case rpcRequestVote:
		var req raft.RequestVoteRequest
		if err := c.dec.Decode(&req); err != nil {
			return err
		}
		rpc.Command = &req
	case rpcRequestPreVote:
		var req raft.RequestPreVoteRequest
		if err := c.dec.Decode(&req); err != nil {
			return err
		}
		rpc.Command = &req
	case rpcTimeoutNow:
		var req raft.TimeoutNowRequest
		if err := c.dec.Decode(&req); err != nil {
			return err
		}
		rpc.Command = &req
	case rpcInstallSnapshot:
		var req raft.InstallSnapshotRequest
		if err := c.dec.Decode(&req); err != nil {
			return err
		}
		rpc.Command = &req
		rpc.Reader = io.LimitReader(c.r, req.Size)
		_ = c.c.SetDeadline(time.Now().Add(t.cfg.SnapshotTimeout))
		defer c.c.SetDeadline(time.Time{}) //nolint:errcheck
	default:
		return fmt.Errorf("transport: unknown rpc type %d", typ)
	}

	if heartbeat {
		t.hbMu.Lock()
		fn := t.hbFn
		t.hbMu.Unlock()
		if fn != nil {
			fn(rpc)
			goto respond
		}
	}
	select {
	case t.consume <- rpc:
	case <-t.shutdown:
		return ErrShutdown
	}
respond:
	select {
	case resp := <-respCh:
		errStr := ""
		if resp.Error != nil {
			errStr = resp.Error.Error()
		}
		if err := c.enc.Encode(errStr); err != nil {
			return err
		}
		return c.enc.Encode(resp.Response)
	case <-t.shutdown:
		return ErrShutdown
	}
}

// AppendEntriesPipeline implements raft.Transport. It returns
// raft.ErrPipelineReplicationNotSupported unless MaxInFlight is 2 or more.
func (t *Transport) AppendEntriesPipeline(_ raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	if t.cfg.MaxInFlight < 2 {
		return nil, raft.ErrPipelineReplicationNotSupported
	}
	c, err := t.getConn(target)
	if err != nil {
		return nil, err
	}
	p := &pipeline{
		t:          t,
		c:          c,
		inprogress: make(chan *future, t.cfg.MaxInFlight-2),
		done:       make(chan raft.AppendFuture, t.cfg.MaxInFlight-2),
		shutdown:   make(chan struct{}),
		broken:     make(chan struct{}),
	}
	go p.decodeResponses()
	return p, nil
}

// pipeline sends AppendEntries without waiting for the previous response.
//
// Once a response cannot be read, the connection is closed and broken is
// closed: raft stops consuming responses after a failure, so anything that
// would wait for the response reader (a send, the reader itself) must give
// up instead, or raft's replication goroutine would never get to Close.
type pipeline struct {
	t          *Transport
	c          *conn
	inprogress chan *future
	done       chan raft.AppendFuture
	shutdown   chan struct{}
	once       sync.Once
	broken     chan struct{}
	breakOnce  sync.Once
}

// errPipelineBroken is returned by AppendEntries after a failed response.
var errPipelineBroken = errors.New("transport: pipeline connection failed")

func (p *pipeline) fail() {
	p.breakOnce.Do(func() {
		close(p.broken)
		p.c.c.Close()
	})
}

func (p *pipeline) decodeResponses() {
	for {
		select {
		case f := <-p.inprogress:
			_ = p.c.c.SetReadDeadline(time.Now().Add(p.t.cfg.Timeout))
			_, err := decodeResponse(p.c, f.resp)
			if err != nil {
				p.fail()
			} else {
				p.t.noteAnswer(p.c.target)
			}
			f.respond(err)
			if !p.deliver(f, err) {
				return
			}
		case <-p.shutdown:
			return
		case <-p.broken:
			return
		}
	}
}

// deliver hands a completed future to raft's consumer. It reports false
// when the pipeline is done. A consumer that takes nothing for Timeout has
// stopped (raft's decoder quits when its leader steps down, while its
// sender may be blocked in AppendEntries behind this goroutine): the
// pipeline fails, so that AppendEntries returns and raft closes it.
func (p *pipeline) deliver(f *future, err error) bool {
	select {
	case p.done <- f:
		return true
	default:
	}
	timer := time.NewTimer(p.t.cfg.Timeout)
	defer timer.Stop()
	select {
	case p.done <- f:
		return true
	case <-p.shutdown:
		return false
	case <-timer.C:
		p.fail()
		return false
	case <-p.broken:
		if err != nil {
			// Still offer the failed future, but never block on it.
			select {
			case p.done <- f:
			default:
			}
		}
		return false
	}
}

// AppendEntries implements raft.AppendPipeline.
func (p *pipeline) AppendEntries(args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) (raft.AppendFuture, error) {
	select {
	case <-p.broken:
		return nil, errPipelineBroken
	default:
	}
	f := &future{start: time.Now(), args: args, resp: resp, ch: make(chan struct{})}
	_ = p.c.c.SetWriteDeadline(time.Now().Add(p.t.cfg.Timeout))
	if err := sendRPC(p.c, rpcAppendEntries, args); err != nil {
		p.fail()
		return nil, err
	}
	select {
	case p.inprogress <- f:
		return f, nil
	case <-p.shutdown:
		return nil, ErrPipelineShutdown
	case <-p.broken:
		return nil, errPipelineBroken
	}
}

// Consumer implements raft.AppendPipeline.
func (p *pipeline) Consumer() <-chan raft.AppendFuture { return p.done }

// Close implements raft.AppendPipeline.
func (p *pipeline) Close() error {
	p.once.Do(func() {
		p.c.c.Close()
		close(p.shutdown)
	})
	return nil
}

// future implements raft.AppendFuture.
type future struct {
	start time.Time
	args  *raft.AppendEntriesRequest
	resp  *raft.AppendEntriesResponse
	err   error
	ch    chan struct{}
}

func (f *future) respond(err error) {
	f.err = err
	close(f.ch)
}

// Error implements raft.Future.
func (f *future) Error() error {
	<-f.ch
	return f.err
}

// Start implements raft.AppendFuture.
func (f *future) Start() time.Time { return f.start }

// Request implements raft.AppendFuture.
func (f *future) Request() *raft.AppendEntriesRequest { return f.args }

// Response implements raft.AppendFuture.
func (f *future) Response() *raft.AppendEntriesResponse { return f.resp }
