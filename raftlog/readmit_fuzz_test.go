package raftlog

import (
	"slices"
	"testing"

	"github.com/tandem-project/tandem/internal/fuzzconn"
)

// FuzzReadmitQuestion sends arbitrary readmission questions to the leader
// of a one-replica volume: none may panic, hang, or change its group (the
// only member is the leader itself, which no question removes or demotes).
func FuzzReadmitQuestion(f *testing.F) {
	for _, seed := range []string{
		`{"group":"vol","id":"n2","step":"history"}` + "\n",
		`{"group":"vol","id":"n1","step":"evict"}` + "\n",
		`{"group":"vol","id":"n2","step":"add"}` + "\n",
		`{"group":"vol","id":"n2","step":"promote","applied":99,"copying":false}` + "\n",
		`{"group":"nope","id":"n2","step":"history"}` + "\n",
		`{"group":"../../etc","id":"","step":"history"}`,
		`{"group":"vol","step":"dance"}`,
		`{`, ``, "\x00\xff",
	} {
		f.Add([]byte(seed))
	}
	c := newTestClusterTB(f, 1, nil)
	c.open(VolumeSpec{Name: "vol", Size: 1 << 20})
	c.leader("vol")
	h, v := c.hosts[0].h, c.hosts[0].vol["vol"]
	f.Fuzz(func(t *testing.T, in []byte) {
		h.serveReadmit(fuzzconn.New(in))
		ms, err := v.Members()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(ms, []Member{{ID: "n1", Voter: true}}) {
			t.Fatalf("members after %q: %+v", in, ms)
		}
	})
}
