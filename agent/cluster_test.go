package agent

import (
	"testing"

	"github.com/tandem-project/tandem/cluster/membership"
)

// TestVersionSummary checks the list of builds the agents compare: alive
// members only, grouped by build, sorted; mixed with more than one build.
func TestVersionSummary(t *testing.T) {
	m := func(name string, st membership.State, version string) membership.Member {
		return membership.Member{Name: name, State: st, Meta: membership.Meta{Version: version}}
	}
	for _, tc := range []struct {
		name    string
		members []membership.Member
		want    string
		mixed   bool
	}{
		{"none", nil, "", false},
		{"one build", []membership.Member{m("n2", membership.Alive, "v1"), m("n1", membership.Alive, "v1")}, "v1: n1,n2", false},
		{"two builds", []membership.Member{m("n3", membership.Alive, "v2"), m("n1", membership.Alive, "v1"), m("n2", membership.Alive, "v1")}, "v1: n1,n2; v2: n3", true},
		{"a failed member's build does not count", []membership.Member{m("n1", membership.Alive, "v1"), m("n3", membership.Failed, "v2")}, "v1: n1", false},
		{"no version gossiped yet", []membership.Member{m("n1", membership.Alive, "v1"), m("n2", membership.Alive, "")}, "v1: n1", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, mixed := versionSummary(tc.members)
			if got != tc.want || mixed != tc.mixed {
				t.Fatalf("versionSummary = %q, %v; want %q, %v", got, mixed, tc.want, tc.mixed)
			}
		})
	}
}
