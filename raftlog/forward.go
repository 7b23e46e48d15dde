package raftlog

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/tandem-project/tandem/nbd/nbdclient"
)

// ForwardPrefix prefixes the export name under which an agent serves a
// volume only if it leads it: forwarded requests never bounce further, so
// two agents with different ideas of the leader cannot ping-pong a request.
const ForwardPrefix = "_fwd/"

// forwarder sends a volume's I/O to the agent of the host that leads it,
// over NBD, keeping one connection to the current leader.
type forwarder struct {
	g *Group

	mu   sync.Mutex
	to   string // peer ID the connection goes to
	conn *nbdclient.Conn
}

func newForwarder(g *Group) *forwarder { return &forwarder{g: g} }

// errNoLeader means no leader is known right now; the caller waits.
var errNoLeader = errors.New("raftlog: no leader known")

// conn returns a connection to the current leader's agent.
func (f *forwarder) get(ctx context.Context) (*nbdclient.Conn, error) {
	p, ok := f.g.leader()
	if !ok || p.ID == f.g.cfg.Local {
		return nil, errNoLeader
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conn != nil && f.to == p.ID && f.conn.Err() == nil {
		return f.conn, nil
	}
	if f.conn != nil {
		f.conn.Abort()
		f.conn = nil
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := nbdclient.Dial(dctx, "tcp", p.NBD, nbdclient.Options{
		Export:       ForwardPrefix + f.g.spec.Name,
		MetaContexts: []string{nbdclient.MetaContextBase},
	})
	if err != nil {
		return nil, fmt.Errorf("raftlog: forwarding to %s (%s): %w", p.ID, p.NBD, err)
	}
	f.conn, f.to = c, p.ID
	return c, nil
}

// retarget closes the connection if it goes to a host that no longer
// leads: requests waiting on it (a partitioned or dead leader may never
// answer) fail at once and are sent again to the new leader.
func (f *forwarder) retarget() {
	p, ok := f.g.leader()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conn != nil && (!ok || p.ID != f.to) {
		f.conn.Abort()
		f.conn = nil
	}
}

// drop forgets c after it failed.
func (f *forwarder) drop(c *nbdclient.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conn == c {
		f.conn = nil
		c.Abort()
	}
}

func (f *forwarder) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conn != nil {
		f.conn.Close()
		f.conn = nil
	}
}

// permanent reports whether a forwarded request's error is the answer
// (bad request, read-only, no fast zero) rather than a reason to try again
// at whoever leads next.
func permanent(err error) bool {
	var e *nbdclient.Error
	if !errors.As(err, &e) {
		return false
	}
	switch syscall.Errno(e.Errno) {
	case syscall.EINVAL, syscall.ENOSPC, syscall.EPERM, syscall.ENOTSUP:
		return true
	}
	return false
}
