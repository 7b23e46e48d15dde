package nbd

import (
	"context"
	"maps"
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
