package raftlog

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/raft"

	"github.com/tandem-project/tandem/nbd"
	"github.com/tandem-project/tandem/nbd/nbdclient"
	"github.com/tandem-project/tandem/volume"
)

// Volume is a replicated volume as a volume.Backend. Every host serves
// every volume: the leader's host commits mutations through the raft log
// and answers reads from its file under a lease; any other host forwards
// to the leader. Requests in flight when leadership moves are sent again to
// the new leader (mutations are idempotent), so clients see a pause, not an
// error, unless no leader emerges within StallTimeout.
type Volume struct {
	g *Group
	// direct is set on the view behind ForwardPrefix: it serves only if this
	// host leads and never forwards.
	direct bool
	// epoch is the writer epoch the view's mutations come under (see
	// volume.WriterExport): the log refuses them unless it is the
	// volume's writer, or the volume has none.
	epoch uint64
}

var (
	_ volume.Backend      = (*Volume)(nil)
	_ volume.NowaitReader = (*Volume)(nil)
)

// Direct returns the view of v that serves only while this host leads and
// answers volume.ErrUnavailable otherwise (the target of forwarding).
func (v *Volume) Direct() *Volume { return &Volume{g: v.g, direct: true, epoch: v.epoch} }

// Writer returns the view of v whose mutations come under writer epoch.
func (v *Volume) Writer(epoch uint64) *Volume { return &Volume{g: v.g, direct: v.direct, epoch: epoch} }

// Err returns what took this replica out of service (a failed volume
// file or write log, docs/replication.md "Replica failure"), or nil. A
// failed replica stays out until it is closed and opened again.
func (v *Volume) Err() error { return v.g.err() }

// Peers returns the hosts of the volume's replicas, this one included, as
// this replica knows them.
func (v *Volume) Peers() []Peer { return slices.Clone(v.g.peers()) }

// Name returns the volume's name.
func (v *Volume) Name() string { return v.g.spec.Name }

// Size implements volume.Backend: the size of this replica's file, which
// grows when the replica applies a grow entry (see Grow).
func (v *Volume) Size() int64 { return v.g.file.Size() }

// Grow grows the volume to size bytes through its log, so that every
// replica grows before it applies any write past the old end. It returns
// once the grow is committed and applied here; only the leader's host may
// call it (elsewhere it fails with raft.ErrNotLeader). Growing to a size
// the volume already has is a no-op.
func (v *Volume) Grow(ctx context.Context, size int64) error {
	if size <= v.Size() {
		return nil
	}
	if v.g.spec.ReadOnly {
		return volume.ErrReadOnly
	}
	if !v.g.ready.Load() {
		return fmt.Errorf("raftlog: volume %s: grow: %w", v.g.spec.Name, raft.ErrNotLeader)
	}
	if err := v.g.batch.submit(&op{kind: opGrow, off: size, id: v.g.h.newOpID()}); err != nil {
		return fmt.Errorf("raftlog: volume %s: grow to %d: %w", v.g.spec.Name, size, err)
	}
	return nil
}

// Fence makes writer epoch the volume's writer as of generation gen
// through the log: once it returns, every replica refuses writes of other
// epochs (epoch 0: accepts every writer), and every write acknowledged
// before it is in the log ahead of the fence. A gen not above the fence in
// force changes nothing (see Fenced). Like Grow, only the leader's host may
// call it.
func (v *Volume) Fence(ctx context.Context, gen, epoch uint64) error {
	if gen == 0 || gen > 1<<63-1 {
		return fmt.Errorf("raftlog: volume %s: fence: generation %d out of range", v.g.spec.Name, gen)
	}
	if !v.g.ready.Load() {
		return fmt.Errorf("raftlog: volume %s: fence: %w", v.g.spec.Name, raft.ErrNotLeader)
	}
	done := make(chan error, 1)
	go func() {
		done <- v.g.batch.submit(&op{kind: opFence, off: int64(gen), epoch: epoch, id: v.g.h.newOpID()})
	}()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("raftlog: volume %s: fence at generation %d: %w", v.g.spec.Name, gen, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("raftlog: volume %s: fence at generation %d: %w", v.g.spec.Name, gen, ctx.Err())
	}
}

// SetPreferredLeader makes replica host id (a peer of the volume, or ""
// for none) the host the volume's leadership goes to when its leader
// notices (within a few seconds); a VM's disks follow the VM this way.
func (v *Volume) SetPreferredLeader(id string) error {
	if id != "" && !slices.ContainsFunc(v.g.peers(), func(p Peer) bool { return p.ID == id }) {
		return fmt.Errorf("raftlog: volume %s: preferred leader %q holds no replica", v.g.spec.Name, id)
	}
	if *v.g.preferred.Load() != id {
		v.g.preferred.Store(&id)
	}
	return nil
}

// TransferLeadership hands the volume's leadership to replica host id, in
// the background, if this host leads it and id holds a replica.
func (v *Volume) TransferLeadership(id string) {
	if id == "" || id == v.g.cfg.Local || !v.g.isLeader() {
		return
	}
	go v.g.transferTo(id)
}

// Fenced returns the fence this replica has applied: the writer epoch
// (0: any) and the generation that set it.
func (v *Volume) Fenced() (epoch, gen uint64) {
	return v.g.fsm.writer.Load(), v.g.fsm.writerGen.Load()
}

// Caps implements volume.Backend.
func (v *Volume) Caps() volume.Caps {
	return volume.Caps{ReadOnly: v.g.spec.ReadOnly, Trim: true, Extents: true, MultiConn: true, DurableWrites: true}
}

// errStalled is returned when no leader could serve a request in time.
var errStalled = errors.New("raftlog: no leader could serve the request in time")

// retryable reports whether a local (raft) failure means "try again,
// possibly elsewhere".
func retryable(err error) bool {
	return errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) ||
		errors.Is(err, raft.ErrLeadershipTransferInProgress) || errors.Is(err, raft.ErrEnqueueTimeout) ||
		errors.Is(err, raft.ErrAbortedByRestore) || errors.Is(err, errReplicaFailed) ||
		errors.Is(err, raft.ErrRaftShutdown)
}

// run executes a request: local (when this host may serve it), or
// forwarded to the leader, retrying across leader changes until StallTimeout
// (a write that allocates space, sooner, with ENOSPC, if this host is out
// of room: Host.outOfRoom).
func (v *Volume) run(ctx context.Context, isRead, allocates bool, local func() error, remote func(c *nbdclient.Conn) error) error {
	start := time.Now()
	deadline := start.Add(v.g.h.cfg.StallTimeout)
	if v.direct {
		deadline = time.Now().Add(v.g.h.cfg.HeartbeatTimeout)
	}
	for {
		select {
		case <-v.g.stop:
			return fmt.Errorf("%w: volume %s is closed on this host", volume.ErrUnavailable, v.g.spec.Name)
		default:
		}
		changed := v.g.changes()
		var err error
		switch {
		case isRead && v.g.servesLocally(), !isRead && v.g.ready.Load():
			if err = local(); err == nil || !retryable(err) {
				return err
			}
		case v.g.isLeader():
			// Leading but not ready (barrier pending) or the lease lapsed:
			// renew it and try again.
			if isRead && v.g.ready.Load() {
				v.g.verify()
				if v.g.servesLocally() {
					continue
				}
			}
			err = errNoLeader
		case v.direct:
			return fmt.Errorf("%w: this host does not lead volume %s", volume.ErrUnavailable, v.g.spec.Name)
		default:
			var c *nbdclient.Conn
			if c, err = v.g.fwd.get(ctx, v.epoch); err == nil {
				if err = remote(c); err == nil || permanent(err) {
					return answer(err)
				}
				v.g.fwd.drop(v.epoch, c)
			}
		}
		if allocates && !v.direct {
			if err := v.g.h.outOfRoom(v.g.spec.Name, v.g.err(), time.Since(start), peerIDs(v.g.peers())); err != nil {
				return err
			}
		}
		if time.Now().After(deadline) {
			if v.direct {
				return fmt.Errorf("%w: %v", volume.ErrUnavailable, err)
			}
			return fmt.Errorf("%w: volume %s: %v", errStalled, v.g.spec.Name, err)
		}
		select {
		case <-changed:
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// mutate commits o. Every attempt carries the same op id: on this host's
// log, and as the NBD handle when forwarded (the leader's direct view takes
// the id from the handle), so that a request sent again after a leader
// change is applied once.
func (v *Volume) mutate(ctx context.Context, o *op, remote func(ctx context.Context, c *nbdclient.Conn) error) error {
	if v.g.spec.ReadOnly {
		return volume.ErrReadOnly
	}
	if err := volume.CheckRange(o.off, o.n, v.Size()); err != nil && o.kind != opGrow {
		return err
	}
	o.id, o.epoch = v.g.h.newOpID(), v.epoch
	if v.direct {
		if h, ok := nbd.RequestHandle(ctx); ok {
			o.id = h
		}
	}
	return v.run(ctx, false, o.allocates(), func() error { return v.g.batch.submit(o) }, func(c *nbdclient.Conn) error {
		return remote(nbdclient.WithHandle(ctx, o.id), c)
	})
}

// WriteAt implements volume.Backend. It returns once the write is durable
// on a majority of the replicas, so FUA needs nothing more.
func (v *Volume) WriteAt(ctx context.Context, p []byte, off int64, flags volume.Flags) error {
	return v.mutate(ctx, &op{kind: opWrite, off: off, n: int64(len(p)), data: p}, func(ctx context.Context, c *nbdclient.Conn) error {
		return c.WriteAt(ctx, p, off, 0)
	})
}

// Zero implements volume.Backend. Zeroing is one small log entry on every
// replica, hence always fast.
func (v *Volume) Zero(ctx context.Context, off, n int64, flags volume.Flags) error {
	o := &op{kind: opZero, off: off, n: n}
	cf := uint16(0)
	if !flags.Has(volume.NoHole) {
		o.flags |= flagPunch
	} else {
		cf |= nbdclient.CmdFlagNoHole
	}
	return v.mutate(ctx, o, func(ctx context.Context, c *nbdclient.Conn) error {
		return c.Zero(ctx, off, uint32(n), cf)
	})
}

// Trim implements volume.Backend. Replicas must agree on content, so a
// trim deallocates and zeroes the range on every replica alike.
func (v *Volume) Trim(ctx context.Context, off, n int64, flags volume.Flags) error {
	return v.mutate(ctx, &op{kind: opZero, flags: flagPunch, off: off, n: n}, func(ctx context.Context, c *nbdclient.Conn) error {
		return c.Trim(ctx, off, uint32(n), 0)
	})
}

// Flush implements volume.Backend. Every acknowledged write is already
// durable on a majority, so there is nothing to do.
func (v *Volume) Flush(context.Context) error { return nil }

// ReadAt implements volume.Backend.
func (v *Volume) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := volume.CheckRange(off, int64(len(p)), v.Size()); err != nil {
		return err
	}
	return v.run(ctx, true, false, func() error { return v.g.fsm.readAt(ctx, p, off) }, func(c *nbdclient.Conn) error {
		return c.ReadAt(ctx, p, off, 0)
	})
}

// ReadAtNowait implements volume.NowaitReader: cached reads on a leader
// holding its lease are answered without a goroutine hand-off.
func (v *Volume) ReadAtNowait(p []byte, off int64) (bool, error) {
	if !v.g.servesLocally() {
		return false, nil
	}
	return v.g.fsm.readAtNowait(p, off)
}

// Cache implements volume.Backend: a prefetch hint for the local file if
// this host serves reads, nothing otherwise.
func (v *Volume) Cache(ctx context.Context, off, n int64) error {
	if v.g.servesLocally() {
		return v.g.file.Cache(ctx, off, n)
	}
	return nil
}

// Extents implements volume.Backend.
func (v *Volume) Extents(ctx context.Context, off, n int64, max int) ([]volume.Extent, error) {
	if err := volume.CheckRange(off, n, v.Size()); err != nil {
		return nil, err
	}
	var out []volume.Extent
	err := v.run(ctx, true, false, func() error {
		var err error
		out, err = v.g.fsm.extents(ctx, off, n, max)
		return err
	}, func(c *nbdclient.Conn) error {
		var err error
		out, err = remoteExtents(ctx, c, off, n, max)
		return err
	})
	return out, err
}

// remoteExtents asks the leader's agent on c for at most max extents of
// [off, off+n) (NBD_CMD_BLOCK_STATUS).
func remoteExtents(ctx context.Context, c *nbdclient.Conn, off, n int64, max int) ([]volume.Extent, error) {
	flags := uint16(0)
	if max == 1 {
		flags = nbdclient.CmdFlagReqOne
	}
	ext, err := c.BlockStatus(ctx, off, uint32(n), flags)
	var out []volume.Extent
	for _, e := range ext {
		if len(out) == max {
			break
		}
		out = append(out, volume.Extent{Length: int64(e.Length), Flags: volume.ExtentFlags(e.Flags)})
	}
	if err == nil && len(out) == 0 {
		err = errors.New("raftlog: leader returned no extents")
	}
	return out, err
}

// Close implements volume.Backend. The group is closed by its Host.
func (v *Volume) Close() error { return nil }
