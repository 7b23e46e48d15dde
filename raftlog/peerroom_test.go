package raftlog

import (
	"sync/atomic"
	"testing"
	"time"
)

// TestPeerShortOfRoom asks hosts over their mux ports whether their disks
// are short of space: the answer arrives in the background, changes follow
// within about peerRoomFresh, a host that stopped answering is no longer
// short after peerRoomValid, and unknown hosts and this host are never
// asked.
func TestPeerShortOfRoom(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	var short2, short3 atomic.Bool
	c.hosts[1].h.ServeShortOfRoom(short2.Load)
	c.hosts[2].h.ServeShortOfRoom(short3.Load)
	h := c.hosts[0].h
	// waitFor calls PeerShortOfRoom(id) until it reports want.
	waitFor := func(id string, want bool, within time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		for h.PeerShortOfRoom(id) != want {
			if time.Since(start) > within {
				t.Fatalf("%s: PeerShortOfRoom still %v after %v", id, !want, within)
			}
			time.Sleep(20 * time.Millisecond)
		}
		return time.Since(start)
	}

	short2.Store(true)
	if h.PeerShortOfRoom("n2") {
		t.Fatal("n2: short before it was ever asked (the first call must not wait)")
	}
	t.Logf("n2 short after %v", waitFor("n2", true, 3*time.Second))
	if h.PeerShortOfRoom("n3") {
		t.Fatal("n3: short before it was asked")
	}
	time.Sleep(300 * time.Millisecond)
	if h.PeerShortOfRoom("n3") {
		t.Fatal("n3 answered short, but its disk has room")
	}
	short2.Store(false)
	t.Logf("n2 has room again after %v", waitFor("n2", false, 3*time.Second))
	short2.Store(true)
	waitFor("n2", true, 3*time.Second)

	// A host that stops answering is not short for long.
	c.stop(1)
	took := waitFor("n2", false, peerRoomValid+3*time.Second)
	t.Logf("n2 stopped: no longer short after %v", took)

	for _, id := range []string{"n1", "n9", ""} {
		for range 3 {
			if h.PeerShortOfRoom(id) {
				t.Fatalf("%q: short", id)
			}
		}
		h.peerRoom.mu.Lock()
		_, asked := h.peerRoom.byHost[id]
		h.peerRoom.mu.Unlock()
		if asked {
			t.Errorf("%q was asked: not another configured host", id)
		}
	}
}
