package catalog

import (
	"errors"
	"testing"
)

func TestDrainHost(t *testing.T) {
	s := vmCatalog(t) // hosts n1..n3, volumes d1..d4 on all three
	if err := apply(t, s, 30, Command{Kind: CmdPutHost, Host: &Host{Name: "n4", State: "alive", Capacity: 100 << 30}}); err != nil {
		t.Fatal(err)
	}
	if err := apply(t, s, 31, Command{Kind: CmdDrainHost, Name: "n4", Drained: true}); err != nil {
		t.Fatal(err)
	}
	// A host record from gossip keeps the flag.
	if err := apply(t, s, 32, Command{Kind: CmdPutHost, Host: &Host{Name: "n4", State: "alive", Capacity: 200 << 30}}); err != nil {
		t.Fatal(err)
	}
	if h := s.Hosts["n4"]; !h.Drained || h.Capacity != 200<<30 {
		t.Fatalf("n4 after put_host: %+v", h)
	}
	if err := s.CheckMove("d1", "n1", "n4"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a move to a drained host: %v", err)
	}
	if err := apply(t, s, 33, Command{Kind: CmdDrainHost, Name: "n4"}); err != nil {
		t.Fatal(err)
	}
	if err := s.CheckMove("d1", "n1", "n4"); err != nil {
		t.Fatalf("a move to an undrained host: %v", err)
	}
	if err := apply(t, s, 34, Command{Kind: CmdDrainHost, Name: "n9", Drained: true}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("draining an unknown host: %v", err)
	}
}
