package raftlog

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testnet"
)

// TestProxyFollowsTheLeader serves a volume from a host without a replica:
// writes and reads through the proxy reach the leader, and keep working,
// with every acknowledged write kept, after the leader is stopped.
func TestProxyFollowsTheLeader(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	spec := VolumeSpec{Name: "p", Size: 4 << 20, Peers: c.peers}
	c.open(spec)
	l := c.leader("p")

	cfg := DefaultConfig()
	cfg.ID, cfg.DataDir, cfg.RaftAddr = "outside", t.TempDir(), testnet.FreeAddr(t)
	cfg.StallTimeout = 20 * time.Second
	h, err := OpenHost(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if _, err := h.OpenProxy(VolumeSpec{Name: "p", Size: 4 << 20, Peers: []Peer{{ID: "outside", NBD: "x"}}}); err == nil {
		t.Fatal("a proxy listing this host as a replica was accepted")
	}
	p, err := h.OpenProxy(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for k := range 8 {
		if err := p.WriteAt(ctx, bytes.Repeat([]byte{byte(k + 1)}, 4096), int64(k)*4096, 0); err != nil {
			t.Fatalf("write %d through the proxy: %v", k, err)
		}
	}
	got := make([]byte, 4096)
	if err := c.hosts[l].vol["p"].ReadAt(ctx, got, 7*4096); err != nil || got[0] != 8 {
		t.Fatalf("leader reads %d (%v), want 8", got[0], err)
	}
	c.stop(l)
	for k := 8; k < 16; k++ {
		if err := p.WriteAt(ctx, bytes.Repeat([]byte{byte(k + 1)}, 4096), int64(k)*4096, 0); err != nil {
			t.Fatalf("write %d through the proxy after the leader stopped: %v", k, err)
		}
	}
	for k := range 16 {
		if err := p.ReadAt(ctx, got, int64(k)*4096); err != nil || got[0] != byte(k+1) || got[4095] != byte(k+1) {
			t.Fatalf("block %d through the proxy: %d (%v), want %d", k, got[0], err, k+1)
		}
	}
	if err := p.WriteAt(ctx, got, 4<<20, 0); err == nil {
		t.Fatal("a write past the end was accepted")
	}
	p.Close()
	if err := p.ReadAt(ctx, got, 0); err == nil {
		t.Fatal("a read through a closed proxy succeeded")
	}
}

// TestStandInReachesThisHost checks that a stand-in proxy (which serves a
// replica's clients while the replica is closed to be opened again) sends
// to this host's own replica too: once the replica is open again and
// leads, as a preferred leader soon does, the requests through the
// stand-in reach it instead of finding no leader until StallTimeout.
func TestStandInReachesThisHost(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) { cfg.StallTimeout = 5 * time.Second })
	spec := VolumeSpec{Name: "s", Size: 4 << 20, Peers: c.peers}
	c.open(spec)
	l := c.leader("s")
	p, err := c.hosts[l].h.OpenStandIn(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.WriteAt(ctx, bytes.Repeat([]byte{7}, 4096), 0, 0); err != nil {
		t.Fatalf("write through a stand-in on the leader's host: %v", err)
	}
	got := make([]byte, 4096)
	if err := c.hosts[l].vol["s"].ReadAt(ctx, got, 0); err != nil || got[0] != 7 {
		t.Fatalf("leader reads %d (%v), want 7", got[0], err)
	}
}
