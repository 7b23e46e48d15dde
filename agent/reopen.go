package agent

import (
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/tandem-project/tandem/raftlog"
	"github.com/tandem-project/tandem/volume"
)

// A replica whose volume file or write log failed (a disk error, a full
// disk) leaves its group and stays out until it is opened again
// (docs/replication.md, "Replica failure"). The agent opens it again
// itself, ReplicaRetry after the failure and then at doubling intervals
// (up to reopenMaxWait) while it fails again: a disk that filled up and
// got room back, or an error that passed, needs no restart of the agent,
// which would disconnect the clients of every volume on the host. While
// the replica is closed and opened again, its clients here go on through
// a proxy to the replicas' agents, this one's included (OpenStandIn): the
// export's handoff switches them over and back, as for a replica move
// (handoff.go).
//
// A replica that failed for lack of disk space (its disk reserve reached)
// is opened again as soon as the disk has raftlog.RoomMargin free above
// the reserve, not only when its wait is over: an operator who makes room
// gets the replica back within seconds, not after up to half an hour. Such
// early attempts are at least roomRetryGap apart.

// reopenMaxWait bounds the wait between two reopenings of a replica that
// keeps failing.
const reopenMaxWait = 30 * time.Minute

// roomRetryGap is the least time between two attempts at reopening a
// replica early because its disk has room.
const roomRetryGap = 10 * time.Second

// reopener opens failed replicas again, with backoff.
type reopener struct {
	host *raftlog.Host
	exps *exportSet
	log  *slog.Logger
	// first is the wait after a failure before the first reopening (0:
	// never reopen).
	first time.Duration
	// room returns nil when the data directory's file system has
	// raftlog.RoomMargin free above the disk reserve (nil: never reopen
	// early).
	room func() error

	mu     sync.Mutex
	byName map[string]*reopening
}

// reopening is what a reopener knows of a volume whose replica failed.
type reopening struct {
	since time.Time     // when the failure was first seen
	next  time.Time     // the earliest next attempt
	wait  time.Duration // the wait after the next attempt
	last  time.Time     // the last attempt (or the failure, before one)
	// noRoom is set while the replica's last failure was for lack of
	// disk space: it is then also opened again once the disk has room.
	noRoom bool
	proxy  *raftlog.Proxy
}

func newReopener(host *raftlog.Host, exps *exportSet, log *slog.Logger, first time.Duration) *reopener {
	r := &reopener{host: host, exps: exps, log: log, first: first, byName: map[string]*reopening{}}
	if host != nil {
		r.room = func() error { return host.Room(raftlog.RoomMargin) }
	}
	return r
}

// replica is what due needs of an open replica (a *raftlog.Volume).
type replica interface {
	Name() string
	Err() error
}

// due reports whether the open replica v is to be reopened now: it failed
// and its wait is over, or it failed for lack of disk space and the disk
// has room again (early). A replica that has served since its last
// reopening for as long as it waited before it is forgotten (the next
// failure waits first again, and is a new failure for failedSince).
func (r *reopener) due(v replica, now time.Time) bool {
	name := v.Name()
	err := v.Err()
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.byName[name]
	switch {
	case err == nil:
		if st != nil && !now.Before(st.next) {
			delete(r.byName, name)
		}
		return false
	case st == nil:
		r.byName[name] = &reopening{since: now, next: now.Add(r.first), wait: min(2*r.first, reopenMaxWait),
			last: now, noRoom: errors.Is(err, volume.ErrNoSpace)}
		if r.first > 0 {
			r.log.Warn("replica failed; it will be opened again", "volume", name, "in", r.first, "err", err)
		} else {
			r.log.Warn("replica failed; it stays out until the agent restarts (--replica-retry 0)", "volume", name, "err", err)
		}
		return false
	}
	st.noRoom = errors.Is(err, volume.ErrNoSpace)
	return r.first > 0 && (!now.Before(st.next) || r.early(st, now))
}

// early reports whether st, whose replica failed for lack of disk space,
// is to be tried now because the disk has room again. Called with mu held.
func (r *reopener) early(st *reopening, now time.Time) bool {
	return st.noRoom && r.room != nil && now.Sub(st.last) >= roomRetryGap && r.room() == nil
}

// noRoom reports whether name's replica, tracked as failed, failed for
// lack of disk space last.
func (r *reopener) noRoom(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.byName[name]
	return st != nil && st.noRoom
}

// failedSince returns when this host first saw its replica of volume name
// fail (zero if it is not tracked as failed).
func (r *reopener) failedSince(name string) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	if st := r.byName[name]; st != nil {
		return st.since
	}
	return time.Time{}
}

// retry reports whether a volume whose replica is not open is to be
// tried now, and whether it is one the reopener tracks (whose replica
// failed): always for the others.
func (r *reopener) retry(name string, now time.Time) (try, tracked bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.byName[name]
	return st == nil || !now.Before(st.next) || (r.first > 0 && r.early(st, now)), st != nil
}

// attempt records an attempt at reopening name's replica now and returns
// the proxy that serves its clients meanwhile, if any.
func (r *reopener) attempt(name string, now time.Time) *reopening {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.byName[name]
	if st == nil {
		st = &reopening{since: now, wait: r.first}
		r.byName[name] = st
	}
	st.next = now.Add(st.wait)
	st.wait = min(2*st.wait, reopenMaxWait)
	st.last = now
	return st
}

// takeOut hands the clients of the failed replica v over to a proxy to the
// replicas' agents (raftlog.Host.OpenStandIn; none on a single host: they
// get errors until the replica is open again) and closes v.
func (r *reopener) takeOut(v *raftlog.Volume, now time.Time) {
	name := v.Name()
	st := r.attempt(name, now)
	if peers := v.Peers(); st.proxy == nil && len(peers) > 1 {
		p, err := r.host.OpenStandIn(raftlog.VolumeSpec{Name: name, Size: v.Size(), ReadOnly: v.Caps().ReadOnly, Peers: peers})
		if err != nil {
			r.log.Warn("serving a failed replica's clients through the other replicas", "volume", name, "err", err)
		} else {
			r.exps.addProxy(p)
			r.mu.Lock()
			st.proxy = p
			r.mu.Unlock()
		}
	}
	if err := r.host.CloseFailed(name); err != nil {
		r.log.Info("closing a failed replica", "volume", name, "err", err)
	}
	r.log.Info("opening a failed replica again", "volume", name, "err", v.Err())
}

// opened records that name's replica is open and exported again: the
// proxy, which no longer serves, is closed.
func (r *reopener) opened(name string) {
	r.mu.Lock()
	st := r.byName[name]
	var p *raftlog.Proxy
	if st != nil {
		p, st.proxy = st.proxy, nil
	}
	r.mu.Unlock()
	if p != nil {
		p.Close()
	}
	r.log.Info("failed replica opened again", "volume", name)
}

// failedAgain records that name's replica could not be opened: its
// clients stay with the proxy until the next attempt.
func (r *reopener) failedAgain(name string, err error) {
	r.mu.Lock()
	var wait time.Duration
	if st := r.byName[name]; st != nil {
		wait = time.Until(st.next).Round(time.Second)
		st.noRoom = errors.Is(err, volume.ErrNoSpace)
	}
	r.mu.Unlock()
	r.log.Warn("opening a failed replica again", "volume", name, "next_attempt_in", wait, "err", err)
}

// tracked returns the volumes whose replica failed and was not yet
// forgotten (open again, or not).
func (r *reopener) tracked() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.byName))
	for name := range r.byName {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// forget drops name (its volume is gone from this host) and returns the
// proxy that served its clients, if any, for the caller to withdraw.
func (r *reopener) forget(name string) *raftlog.Proxy {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.byName[name]
	delete(r.byName, name)
	if st == nil {
		return nil
	}
	return st.proxy
}

// shortOfRoom reports whether host's disk is short of space for its
// replicas: within raftlog.RoomMargin of the reserve, or under a replica
// that failed for lack of space, open or closed by ro (nil: none) until it
// is opened again. Managed clusters gossip it, fixed ones answer when
// asked (raftlog.Host.ServeShortOfRoom).
func shortOfRoom(host *raftlog.Host, ro *reopener) bool {
	if host.Room(raftlog.RoomMargin) != nil {
		return true
	}
	open := map[string]bool{}
	for _, v := range host.Volumes() {
		if errors.Is(v.Err(), volume.ErrNoSpace) {
			return true
		}
		open[v.Name()] = true
	}
	if ro == nil {
		return false
	}
	for _, name := range ro.tracked() {
		if !open[name] && ro.noRoom(name) {
			return true // closed, to be opened again
		}
	}
	return false
}

// watchFixed opens again, until stop is closed, the failed replicas of a
// fixed configuration's volumes (specs).
func (r *reopener) watchFixed(specs []raftlog.VolumeSpec, stop <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		now := time.Now()
		open := map[string]*raftlog.Volume{}
		for _, v := range r.host.Volumes() {
			open[v.Name()] = v
		}
		for _, spec := range specs {
			switch v := open[spec.Name]; {
			case v != nil && r.due(v, now):
				r.takeOut(v, now)
			case v == nil:
				if try, _ := r.retry(spec.Name, now); !try {
					continue
				}
				r.attempt(spec.Name, now)
			default:
				continue
			}
			v, err := r.host.OpenVolume(spec)
			if err != nil {
				r.failedAgain(spec.Name, err)
				continue
			}
			r.exps.add(v)
			r.opened(spec.Name)
		}
	}
}
