package raftlog

import (
	"context"
	"io"
	"net"
	"sync"
	"time"

	"github.com/tandem-project/tandem/raftlog/mux"
)

// The hosts of a managed cluster gossip whether their disks are short of
// space (SetPeerShortOfRoom). The hosts of a fixed configuration have no
// gossip: they ask each other over the mux port instead, only when a
// write has waited for a leader long enough to ask (outOfRoom).
// ServeShortOfRoom answers such questions; PeerShortOfRoom asks them.

const (
	// peerRoomFresh is how long an answer serves before the next call
	// asks again.
	peerRoomFresh = time.Second
	// peerRoomValid is how long an answer counts at all: an older one (a
	// host that stopped answering) is no longer taken as short.
	peerRoomValid = 5 * time.Second
	// peerRoomTimeout bounds one question, connection included.
	peerRoomTimeout = time.Second
)

// peerRoom holds the last answers of the other hosts.
type peerRoom struct {
	mu     sync.Mutex
	byHost map[string]*roomAnswer
}

// roomAnswer is what one host last answered, and when it was last asked.
type roomAnswer struct {
	short  bool
	at     time.Time // when it answered (zero: never)
	asked  time.Time // when it was last asked
	asking bool      // a question is on its way
}

// ServeShortOfRoom makes short the answer this host gives other hosts that
// ask (PeerShortOfRoom) whether its disk is short of space. It does
// nothing on a host without a replication address.
func (h *Host) ServeShortOfRoom(short func() bool) {
	if h.mux == nil {
		return
	}
	h.mux.Handle(mux.KindRoom, func(_ string, c net.Conn) {
		defer c.Close()
		b := []byte{0}
		if short() {
			b[0] = 1
		}
		_ = c.SetWriteDeadline(time.Now().Add(peerRoomTimeout))
		if _, err := c.Write(b); err != nil {
			h.log.Debug("answering whether the disk is short of space", "remote", c.RemoteAddr().String(), "err", err)
		}
	})
}

// PeerShortOfRoom reports whether host id (one of the configured Peers)
// answered, at most peerRoomValid ago, that its disk is short of space
// (ServeShortOfRoom). It does not wait: when its last answer is older than
// peerRoomFresh it asks again in the background, so that a write that
// waits for a leader and calls it in its retries (outOfRoom) learns the
// answer within about a second. A host that never answered (unreachable,
// or not asked yet) is not short. Give it to SetPeerShortOfRoom where
// there is no gossip.
func (h *Host) PeerShortOfRoom(id string) bool {
	addr := ""
	for _, p := range h.cfg.Peers {
		if p.ID == id && id != h.cfg.ID {
			addr = p.Raft
		}
	}
	if addr == "" || h.mux == nil {
		return false
	}
	now := time.Now()
	r := &h.peerRoom
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byHost == nil {
		r.byHost = map[string]*roomAnswer{}
	}
	a := r.byHost[id]
	if a == nil {
		a = &roomAnswer{}
		r.byHost[id] = a
	}
	if !a.asking && now.Sub(a.asked) >= peerRoomFresh {
		a.asking, a.asked = true, now
		go h.askShortOfRoom(id, addr, a)
	}
	return a.short && now.Sub(a.at) < peerRoomValid
}

// askShortOfRoom asks host id at addr whether its disk is short of space
// and records its answer in a.
func (h *Host) askShortOfRoom(id, addr string, a *roomAnswer) {
	short, err := askRoom(h.dialer(), addr)
	r := &h.peerRoom
	r.mu.Lock()
	defer r.mu.Unlock()
	a.asking = false
	if err != nil {
		h.log.Debug("asking a host whether its disk is short of space", "host", id, "err", err)
		return
	}
	a.short, a.at = short, time.Now()
}

// askRoom asks the host at addr whether its disk is short of space.
func askRoom(d mux.Dialer, addr string) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), peerRoomTimeout)
	defer cancel()
	c, err := d.Dial(ctx, addr, mux.KindRoom, "")
	if err != nil {
		return false, err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(peerRoomTimeout))
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return false, err
	}
	return b[0] == 1, nil
}
