package nbd

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/tandem-project/tandem/nbd/nbdclient"
)

// TestAttachedAndDisconnect counts connections per export and closes those
// of one export, leaving the others working.
func TestAttachedAndDisconnect(t *testing.T) {
	srv := testServer(t, nil, Export{Name: "a", Backend: newMem(1 << 20)}, Export{Name: "b", Backend: newMem(1 << 20)})
	a1 := dial(t, srv, nbdclient.Options{Export: "a"})
	dial(t, srv, nbdclient.Options{Export: "a"})
	b := dial(t, srv, nbdclient.Options{Export: "b"})
	// The server records a connection's export once it has answered the
	// handshake, a moment after the client has seen the answer.
	want := map[string]int{"a": 2, "b": 1}
	for wait := time.Now().Add(5 * time.Second); !maps.Equal(srv.Attached(), want); time.Sleep(time.Millisecond) {
		if time.Now().After(wait) {
			t.Fatalf("Attached() = %v, want %v", srv.Attached(), want)
		}
	}
	if n := srv.Disconnect("a"); n != 2 {
		t.Fatalf("Disconnect(a) closed %d connections, want 2", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a1.ReadAt(ctx, make([]byte, 512), 0, 0); err == nil {
		t.Fatal("read on a disconnected connection succeeded")
	}
	if err := b.ReadAt(ctx, make([]byte, 512), 0, 0); err != nil {
		t.Fatalf("read on export b after disconnecting a: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := srv.Attached()
		if maps.Equal(got, map[string]int{"b": 1}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Attached() = %v after Disconnect(a), want only b", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// aliasExports serves export a under any name "a@N" too, as the agent
// serves a volume under its writer epochs.
type aliasExports struct{ a Export }

func (e aliasExports) Lookup(name string) (Export, error) {
	if base, _, _ := strings.Cut(name, "@"); base == e.a.Name {
		return e.a, nil
	}
	return Export{}, ErrUnknownExport
}

func (e aliasExports) List() []string { return []string{e.a.Name} }

// TestAttachedAs counts connections by the name they asked for, until
// each is closed.
func TestAttachedAs(t *testing.T) {
	srv := NewServer(aliasExports{Export{Name: "a", Backend: newMem(1 << 20)}}, DefaultConfig())
	t.Cleanup(func() { srv.Close() })
	run7 := dial(t, srv, nbdclient.Options{Export: "a@7"})
	dial(t, srv, nbdclient.Options{Export: "a@8"})
	dial(t, srv, nbdclient.Options{Export: "a"})
	counts := func() string {
		as := srv.AttachedAs()
		return fmt.Sprintf("a@7 %d, a@8 %d, a %d, a@9 %d, export a %d (%d names)",
			as["a@7"], as["a@8"], as["a"], as["a@9"], srv.Attached()["a"], len(as))
	}
	waitCounts := func(want string) {
		t.Helper()
		for wait := time.Now().Add(5 * time.Second); counts() != want; time.Sleep(time.Millisecond) {
			if time.Now().After(wait) {
				t.Fatalf("attached: %s, want %s", counts(), want)
			}
		}
	}
	waitCounts("a@7 1, a@8 1, a 1, a@9 0, export a 3 (3 names)")
	run7.Close()
	waitCounts("a@7 0, a@8 1, a 1, a@9 0, export a 2 (2 names)")
}
