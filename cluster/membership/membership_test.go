package membership

import (
	"bytes"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testnet"
)

// testLog keeps memberlist's logs and shows them if the test fails.
// memberlist's goroutines may still log after Shutdown, so writes after
// the test has ended are kept but never reach t.Log.
type testLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func newTestLog(t *testing.T) *testLog {
	l := &testLog{}
	t.Cleanup(func() {
		if t.Failed() {
			l.mu.Lock()
			defer l.mu.Unlock()
			t.Log("memberlist logs:\n" + l.buf.String())
		}
	})
	return l
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

var testKey = []byte("0123456789abcdef0123456789abcdef")

func start(t *testing.T, name, bind string, join []string) *Membership {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(newTestLog(t), &slog.HandlerOptions{Level: slog.LevelDebug})).With("member", name)
	m, err := Start(Config{Name: name, Bind: bind, Join: join, Key: testKey, Fast: true, Logger: logger,
		Meta: func() Meta { return Meta{Raft: "raft-" + name, NBD: "nbd-" + name, Capacity: 1 << 30} }})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// waitState waits until m sees member name in state st.
func waitState(t *testing.T, m *Membership, name string, st State) Member {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if mb, ok := m.Member(name); ok && mb.State == st {
			return mb
		}
		if time.Now().After(deadline) {
			mb, _ := m.Member(name)
			t.Fatalf("%s never saw %s %s (last: %+v)", m.cfg.Name, name, st, mb)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestJoinFailLeaveRejoin runs three members: they see each other with
// their meta data; one killed is seen failed, one that leaves is seen left,
// and the failed one restarted is seen alive again.
func TestJoinFailLeaveRejoin(t *testing.T) {
	addrs := []string{testnet.FreeAddr(t), testnet.FreeAddr(t), testnet.FreeAddr(t)}
	var ms []*Membership
	for i := range 3 {
		ms = append(ms, start(t, fmt.Sprintf("m%d", i+1), addrs[i], addrs[:i]))
	}
	defer func() {
		for _, m := range ms {
			m.Shutdown()
		}
	}()
	for _, m := range ms {
		for i := range 3 {
			mb := waitState(t, m, fmt.Sprintf("m%d", i+1), Alive)
			if mb.Meta.Raft != fmt.Sprintf("raft-m%d", i+1) || mb.Meta.Capacity != 1<<30 {
				t.Fatalf("meta of m%d: %+v", i+1, mb.Meta)
			}
		}
	}
	ms[2].Shutdown() // a crash: nobody is told
	waitState(t, ms[0], "m3", Failed)
	if err := ms[1].Leave(time.Second); err != nil {
		t.Fatal(err)
	}
	waitState(t, ms[0], "m2", Left)
	ms[2] = start(t, "m3", addrs[2], addrs[:1])
	waitState(t, ms[0], "m3", Alive)
}

// TestKeyRequired refuses unencrypted gossip unless asked for, and keys of
// the wrong length.
func TestKeyRequired(t *testing.T) {
	meta := func() Meta { return Meta{} }
	for _, cfg := range []Config{
		{Name: "a", Bind: testnet.FreeAddr(t), Meta: meta},
		{Name: "a", Bind: testnet.FreeAddr(t), Meta: meta, Key: []byte("short")},
	} {
		if m, err := Start(cfg); err == nil {
			m.Shutdown()
			t.Errorf("Start(%+v) succeeded", cfg)
		}
	}
}

// TestWrongKeyCannotJoin: a member with another key is not let in.
func TestWrongKeyCannotJoin(t *testing.T) {
	a := start(t, "a", testnet.FreeAddr(t), nil)
	defer a.Shutdown()
	b, err := Start(Config{Name: "b", Bind: testnet.FreeAddr(t), Join: []string{a.Addr()}, Key: []byte("fedcba9876543210fedcba9876543210"), Fast: true,
		Meta: func() Meta { return Meta{} }})
	if err == nil {
		defer b.Shutdown()
		time.Sleep(500 * time.Millisecond)
		if _, ok := a.Member("b"); ok {
			t.Fatal("a member with the wrong key joined")
		}
	}
}
