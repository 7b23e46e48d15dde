package raftlog

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tandem-project/tandem/nbd/nbdclient"
	"github.com/tandem-project/tandem/volume"
)

// Proxy serves a volume on a host that holds no replica of it: every
// request goes over NBD to the leader-only export (ForwardPrefix) of the
// replicas' agents, trying them in turn until the one that leads answers.
// Like a replica's forwarding, a request is sent again (with the same op
// id, so a mutation applies once) after a leader change, until
// StallTimeout. Only the volume's size is known locally.
type Proxy struct {
	*proxy
	// epoch is the writer epoch of the view's mutations (see
	// Volume.Writer).
	epoch uint64
}

// proxy is what the views of a Proxy share.
type proxy struct {
	h     *Host
	name  string
	peers []Peer
	size  atomic.Int64
	ro    bool

	// standIn is set on a proxy that serves in place of this host's
	// replica, closed after a failure (OpenStandIn).
	standIn bool

	mu    sync.Mutex
	next  int // index in peers of the next host to try
	conns leaderConns
}

var _ volume.Backend = (*Proxy)(nil)

// OpenProxy returns a proxy for a volume whose replicas are on spec.Peers
// (none of them this host).
func (h *Host) OpenProxy(spec VolumeSpec) (*Proxy, error) {
	return h.openProxy(spec, false)
}

// OpenStandIn returns a proxy that serves the clients of this host's
// replica of a volume while the replica is closed after a failure, to be
// opened again. spec.Peers are all the replicas, this host's included: the
// proxy forwards to this host's own forwarding export too, which reaches
// the replica once it is open again and leads (requests in flight through
// the proxy would otherwise find no leader until StallTimeout, and hold up
// the switch back to the replica). Its writes that find no leader end as
// the replica's would, with ENOSPC when this host is short of disk space
// (Host.outOfRoom).
func (h *Host) OpenStandIn(spec VolumeSpec) (*Proxy, error) {
	return h.openProxy(spec, true)
}

func (h *Host) openProxy(spec VolumeSpec, standIn bool) (*Proxy, error) {
	if err := volume.ValidateName(spec.Name); err != nil {
		return nil, err
	}
	if len(spec.Peers) == 0 {
		return nil, fmt.Errorf("raftlog: proxy of volume %s: no replica hosts", spec.Name)
	}
	for _, p := range spec.Peers {
		if p.ID == h.cfg.ID && !standIn {
			return nil, fmt.Errorf("raftlog: proxy of volume %s: this host %s holds a replica", spec.Name, p.ID)
		}
	}
	p := &Proxy{proxy: &proxy{h: h, name: spec.Name, peers: append([]Peer(nil), spec.Peers...), ro: spec.ReadOnly, standIn: standIn,
		conns: leaderConns{volume: spec.Name}}}
	for i, pe := range p.peers {
		if pe.ID == spec.PreferredLeader {
			p.next = i
		}
	}
	p.size.Store(spec.Size)
	return p, nil
}

// Writer returns the view of p whose mutations come under writer epoch.
func (p *Proxy) Writer(epoch uint64) *Proxy { return &Proxy{proxy: p.proxy, epoch: epoch} }

// Name returns the volume's name.
func (p *Proxy) Name() string { return p.name }

// Size implements volume.Backend.
func (p *Proxy) Size() int64 { return p.size.Load() }

// SetSize records a new size (after the volume grew).
func (p *Proxy) SetSize(n int64) { p.size.Store(n) }

// Caps implements volume.Backend.
func (p *Proxy) Caps() volume.Caps {
	return volume.Caps{ReadOnly: p.ro, Trim: true, Extents: true, MultiConn: true, DurableWrites: true}
}

// get returns the connection to the replica host that answered last, or
// dials the next one.
func (p *Proxy) get(ctx context.Context, lc *leaderConn) (*nbdclient.Conn, error) {
	if c := lc.healthy(); c != nil {
		return c, nil
	}
	p.mu.Lock()
	pe := p.peers[p.next]
	p.next = (p.next + 1) % len(p.peers)
	p.mu.Unlock()
	return lc.get(ctx, p.h.dialer(), pe, 3*time.Second)
}

// run sends a request until a replica's agent answers it, or StallTimeout
// (a write that allocates, sooner, with ENOSPC, when the replicas' hosts
// are short of disk space: Host.outOfRoom; on a stand-in, this host too).
func (p *Proxy) run(ctx context.Context, allocates bool, f func(c *nbdclient.Conn) error) error {
	start := time.Now()
	deadline := start.Add(p.h.cfg.StallTimeout)
	lc := p.conns.of(p.epoch)
	for attempt := 0; ; attempt++ {
		c, err := p.get(ctx, lc)
		if errors.Is(err, volume.ErrUnavailable) {
			return err
		}
		if err == nil {
			if err = f(c); err == nil || permanent(err) {
				return answer(err)
			}
			lc.drop(c)
		}
		if allocates {
			if err := p.h.outOfRoom(p.name, nil, time.Since(start), peerIDs(p.peers)); err != nil {
				return err
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: volume %s: %v", errStalled, p.name, err)
		}
		// A full round of the replicas without an answer: wait a little
		// (an election is under way).
		if (attempt+1)%p.numPeers() == 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
}

// mutate sends a mutation with one op id for every attempt.
func (p *Proxy) mutate(ctx context.Context, off, n int64, allocates bool, f func(ctx context.Context, c *nbdclient.Conn) error) error {
	if p.ro {
		return volume.ErrReadOnly
	}
	if err := volume.CheckRange(off, n, p.Size()); err != nil {
		return err
	}
	hctx := nbdclient.WithHandle(ctx, p.h.newOpID())
	return p.run(ctx, allocates, func(c *nbdclient.Conn) error { return f(hctx, c) })
}

// ReadAt implements volume.Backend.
func (p *Proxy) ReadAt(ctx context.Context, b []byte, off int64) error {
	if err := volume.CheckRange(off, int64(len(b)), p.Size()); err != nil {
		return err
	}
	return p.run(ctx, false, func(c *nbdclient.Conn) error { return c.ReadAt(ctx, b, off, 0) })
}

// WriteAt implements volume.Backend.
func (p *Proxy) WriteAt(ctx context.Context, b []byte, off int64, _ volume.Flags) error {
	return p.mutate(ctx, off, int64(len(b)), true, func(ctx context.Context, c *nbdclient.Conn) error { return c.WriteAt(ctx, b, off, 0) })
}

// Zero implements volume.Backend.
func (p *Proxy) Zero(ctx context.Context, off, n int64, flags volume.Flags) error {
	var cf uint16
	if flags.Has(volume.NoHole) {
		cf |= nbdclient.CmdFlagNoHole
	}
	return p.mutate(ctx, off, n, flags.Has(volume.NoHole), func(ctx context.Context, c *nbdclient.Conn) error { return c.Zero(ctx, off, uint32(n), cf) })
}

// Trim implements volume.Backend.
func (p *Proxy) Trim(ctx context.Context, off, n int64, _ volume.Flags) error {
	return p.mutate(ctx, off, n, false, func(ctx context.Context, c *nbdclient.Conn) error { return c.Trim(ctx, off, uint32(n), 0) })
}

// Flush implements volume.Backend: acknowledged writes are durable already.
func (p *Proxy) Flush(context.Context) error { return nil }

// Cache implements volume.Backend (nothing to prefetch here).
func (p *Proxy) Cache(context.Context, int64, int64) error { return nil }

// Extents implements volume.Backend.
func (p *Proxy) Extents(ctx context.Context, off, n int64, max int) ([]volume.Extent, error) {
	if err := volume.CheckRange(off, n, p.Size()); err != nil {
		return nil, err
	}
	var out []volume.Extent
	err := p.run(ctx, false, func(c *nbdclient.Conn) error {
		var err error
		out, err = remoteExtents(ctx, c, off, n, max)
		return err
	})
	return out, err
}

// Close implements volume.Backend: it closes the proxy's connections (of
// every view); later requests fail at once.
func (p *Proxy) Close() error {
	p.conns.close()
	return nil
}
