package raftlog

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testnet"
	"github.com/tandem-project/tandem/volume"
)

// TestFencing moves the writer of a volume between epochs and checks,
// for writers on the leader's host, on a follower (forwarded to the
// leader) and on a host without a replica (proxy), that exactly the
// writer the fence names is accepted, everywhere, and that a stale fence
// changes nothing.
func TestFencing(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	spec := VolumeSpec{Name: "f", Size: 4 << 20, Peers: c.peers}
	c.open(spec)
	l := c.leader("f")
	fo := (l + 1) % 3

	cfg := DefaultConfig()
	cfg.ID, cfg.DataDir, cfg.RaftAddr = "outside", t.TempDir(), testnet.FreeAddr(t)
	cfg.StallTimeout = 20 * time.Second
	h, err := OpenHost(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	proxy, err := h.OpenProxy(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	type writer interface {
		WriteAt(ctx context.Context, p []byte, off int64, flags volume.Flags) error
		Zero(ctx context.Context, off, n int64, flags volume.Flags) error
	}
	views := func(epoch uint64) map[string]writer {
		return map[string]writer{
			"leader":   c.hosts[l].vol["f"].Writer(epoch),
			"follower": c.hosts[fo].vol["f"].Writer(epoch),
			"proxy":    proxy.Writer(epoch),
		}
	}
	fence := func(gen, epoch uint64) {
		t.Helper()
		if err := c.hosts[l].vol["f"].Fence(ctx, gen, epoch); err != nil {
			t.Fatalf("fence gen %d epoch %d: %v", gen, epoch, err)
		}
	}
	block := int64(0)
	want := map[int64]bool{} // block -> holds an accepted write
	check := func(step string, accepted map[uint64]bool) {
		t.Helper()
		for _, epoch := range []uint64{0, 5, 6} {
			for where, w := range views(epoch) {
				block++
				err := w.WriteAt(ctx, bytes.Repeat([]byte{1}, 4096), block*4096, 0)
				zerr := w.Zero(ctx, block*4096+512, 512, volume.NoHole)
				want[block] = accepted[epoch]
				for op, err := range map[string]error{"write": err, "zero": zerr} {
					switch {
					case accepted[epoch] && err != nil:
						t.Errorf("%s: %s of epoch %d through the %s: %v, want accepted", step, op, epoch, where, err)
					case !accepted[epoch] && !errors.Is(err, volume.ErrFenced):
						t.Errorf("%s: %s of epoch %d through the %s: %v, want %v", step, op, epoch, where, err, volume.ErrFenced)
					}
				}
			}
		}
	}
	check("no fence", map[uint64]bool{0: true, 5: true, 6: true})
	fence(10, 5)
	check("writer 5", map[uint64]bool{5: true})
	fence(11, 6)
	check("writer 6", map[uint64]bool{6: true})
	fence(9, 5) // stale: changes nothing
	check("after a stale fence", map[uint64]bool{6: true})
	fence(12, 0)
	check("opened again", map[uint64]bool{0: true, 5: true, 6: true})
	fence(13, 5)

	// Every replica applies the same fence; a refused write left nothing.
	for i, th := range c.hosts {
		deadline := time.Now().Add(10 * time.Second)
		for {
			e, g := th.vol["f"].Fenced()
			if e == 5 && g == 13 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("host %d: fence epoch %d gen %d, want 5, 13", i, e, g)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	got := make([]byte, 4096)
	for b, ok := range want {
		if err := c.hosts[l].vol["f"].ReadAt(ctx, got, b*4096); err != nil {
			t.Fatal(err)
		}
		w := make([]byte, 4096)
		if ok {
			w = bytes.Repeat([]byte{1}, 4096)
			clear(w[512:1024])
		}
		if !bytes.Equal(got, w) {
			t.Errorf("block %d: accepted %v, but it holds %v...", b, ok, got[:8])
		}
	}
	if err := c.hosts[fo].vol["f"].Fence(ctx, 14, 6); err == nil {
		t.Fatal("a follower fenced the volume")
	}
}
