package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/cluster/catalog"
	"github.com/tandem-project/tandem/cluster/control"
)

// vmState is a catalog with hosts n1..n3, volumes d1 (preferred leader
// n2) and d2, and the VMs fresh (never started) and web (last on n3,
// stopped) with disk d1 and d2.
func vmState(t *testing.T) *catalog.State {
	t.Helper()
	s := catalog.New()
	i := uint64(0)
	apply := func(c catalog.Command) {
		i++
		if err := s.Apply(i, c.Encode()); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range []string{"n1", "n2", "n3"} {
		apply(catalog.Command{Kind: catalog.CmdPutHost, Host: &catalog.Host{Name: h}})
	}
	apply(catalog.Command{Kind: catalog.CmdCreateVolume, Volume: &catalog.Volume{Name: "d1", Size: 1, Replicas: []string{"n1", "n2"}, PreferredLeader: "n2"}})
	apply(catalog.Command{Kind: catalog.CmdCreateVolume, Volume: &catalog.Volume{Name: "d2", Size: 1, Replicas: []string{"n1"}}})
	apply(catalog.Command{Kind: catalog.CmdCreateVolume, Volume: &catalog.Volume{Name: "d3", Size: 1, Replicas: []string{"n1"}}})
	apply(catalog.Command{Kind: catalog.CmdCreateVM, VM: &catalog.VM{Name: "fresh", VCPUs: 1, MemoryMiB: 64, Disks: []string{"d1"}, Boot: catalog.Boot{Kind: catalog.BootDisk}}})
	apply(catalog.Command{Kind: catalog.CmdCreateVM, VM: &catalog.VM{Name: "web", VCPUs: 1, MemoryMiB: 64, Disks: []string{"d2"}, Boot: catalog.Boot{Kind: catalog.BootDisk}}})
	apply(catalog.Command{Kind: catalog.CmdStartVM, Name: "web", Target: "n3"})
	apply(catalog.Command{Kind: catalog.CmdStopVM, Name: "web"})
	return s
}

func statusOf(err error) int {
	var se *admin.StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

func TestStartHost(t *testing.T) {
	st := vmState(t)
	alive := func(dead ...string) func(string) string {
		return func(h string) string {
			for _, d := range dead {
				if d == h {
					return "failed"
				}
			}
			if h == "n9" {
				return ""
			}
			return "alive"
		}
	}
	// A VM whose first disk is missing from the catalog (not reachable
	// through commands) falls back to self.
	orphan := &catalog.VM{Name: "o", Disks: []string{"gone"}}
	tests := []struct {
		name, vm, asked string
		dead            []string
		want            string
		code            int
		msg             string
	}{
		{name: "asked", vm: "web", asked: "n1", want: "n1"},
		{name: "asked unknown", vm: "web", asked: "n7", code: 400, msg: `host "n7" is not a host of the cluster`},
		{name: "asked dead", vm: "web", asked: "n1", dead: []string{"n1"}, code: 409, msg: "host n1 is failed: start the VM on an alive host"},
		{name: "last host", vm: "web", want: "n3"},
		{name: "last host dead", vm: "web", dead: []string{"n3"}, code: 409, msg: `VM "web" last ran on n3, which is failed`},
		{name: "first disk's preferred leader", vm: "fresh", want: "n2"},
		{name: "preferred leader dead", vm: "fresh", dead: []string{"n2"}, code: 409, msg: `VM "fresh" would start on n2, which is failed`},
		{name: "self", vm: "orphan", want: "n1"},
	}
	for _, tt := range tests {
		vm := st.VMs[tt.vm]
		if tt.vm == "orphan" {
			vm = orphan
		}
		got, err := startHost(st, vm, tt.asked, "n1", alive(tt.dead...))
		if tt.code == 0 && (err != nil || got != tt.want) {
			t.Errorf("%s: %q %v, want %q", tt.name, got, err, tt.want)
		}
		if tt.code != 0 && (statusOf(err) != tt.code || !strings.Contains(err.Error(), tt.msg)) {
			t.Errorf("%s: %v, want %d %q", tt.name, err, tt.code, tt.msg)
		}
	}
	if _, err := startHost(st, st.VMs["web"], "n9", "n1", alive()); err == nil {
		t.Error("a host in the catalog that gossip does not know was accepted")
	}
}

func TestVMFromRequest(t *testing.T) {
	tests := []struct {
		name string
		req  admin.CreateVM
		want catalog.VM
		code int
		msg  string
	}{
		{name: "defaults", req: admin.CreateVM{Name: "a", Disks: []string{"d1"}},
			want: catalog.VM{Name: "a", VCPUs: 1, MemoryMiB: 256, Disks: []string{"d1"}, Boot: catalog.Boot{Kind: "disk"}}},
		{name: "all", req: admin.CreateVM{Name: "a", VCPUs: 4, Memory: 1 << 30, Disks: []string{"d1", "d2"}, Boot: admin.Boot{Kind: "kernel", Kernel: "/k", Initrd: "/i", Cmdline: "c"}},
			want: catalog.VM{Name: "a", VCPUs: 4, MemoryMiB: 1024, Disks: []string{"d1", "d2"}, Boot: catalog.Boot{Kind: "kernel", Kernel: "/k", Initrd: "/i", Cmdline: "c"}}},
		{name: "kernel without kind", req: admin.CreateVM{Name: "a", Disks: []string{"d1"}, Boot: admin.Boot{Kernel: "/k"}},
			want: catalog.VM{Name: "a", VCPUs: 1, MemoryMiB: 256, Disks: []string{"d1"}, Boot: catalog.Boot{Kind: "kernel", Kernel: "/k"}}},
		{name: "bad name", req: admin.CreateVM{Name: "A"}, code: 400, msg: `invalid VM name "A"`},
		{name: "not whole MiB", req: admin.CreateVM{Name: "a", Memory: 1000 << 10}, code: 400, msg: "not a whole number of MiB"},
		{name: "negative", req: admin.CreateVM{Name: "a", Memory: -1 << 20}, code: 400, msg: "negative"},
		{name: "huge", req: admin.CreateVM{Name: "a", Memory: 1 << 60}, code: 400, msg: "memory: 1024PiB, want 16MiB to 64GiB"},
	}
	for _, tt := range tests {
		got, err := vmFromRequest(tt.req)
		if tt.code == 0 && (err != nil || !reflect.DeepEqual(got, tt.want)) {
			t.Errorf("%s: %+v %v, want %+v", tt.name, got, err, tt.want)
		}
		if tt.code != 0 && (statusOf(err) != tt.code || !strings.Contains(err.Error(), tt.msg)) {
			t.Errorf("%s: %v, want %d %q", tt.name, err, tt.code, tt.msg)
		}
	}
}

func TestDescribeVM(t *testing.T) {
	st := vmState(t)
	if err := st.Apply(100, catalog.Command{Kind: catalog.CmdStartVM, Name: "web", Target: "n2"}.Encode()); err != nil {
		t.Fatal(err)
	}
	started := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	run := admin.LocalVM{Name: "web", State: "running", PID: 42, Epoch: 100, QMPSocket: "/q", SerialLog: "/s", Started: started}
	got := describeVM(st, st.VMs["web"], map[string]hostVMs{"n2": {vms: []admin.LocalVM{{Name: "other", State: "paused"}, run}}})
	want := admin.VM{Name: "web", ID: st.VMs["web"].ID, VCPUs: 1, MemoryMiB: 64, Disks: []admin.VMDisk{{Disk: "d2", Kind: "volume", Volume: "d2", WriterEpoch: 100, WriterGen: 100}},
		Boot: admin.Boot{Kind: "disk"}, State: "running", Host: "n2", Epoch: 100, Changed: 100, Runtime: run}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("\n got %+v\nwant %+v", got, want)
	}
	for _, tc := range []struct {
		name  string
		rt    map[string]hostVMs
		state string
		err   string
	}{
		{"host runs no QEMU for it", map[string]hostVMs{"n2": {}}, admin.VMAbsent, ""},
		{"host did not answer", map[string]hostVMs{"n2": {err: fmt.Errorf("host n2: refused")}}, admin.VMUnknown, "host n2: refused"},
		{"host not asked", nil, admin.VMUnknown, "not asked"},
	} {
		got := describeVM(st, st.VMs["web"], tc.rt).Runtime
		if got.Name != "web" || got.State != tc.state || !strings.Contains(got.Error, tc.err) {
			t.Errorf("%s: runtime %+v", tc.name, got)
		}
	}
	if rt := describeVM(st, st.VMs["fresh"], nil).Runtime; rt.State != admin.VMAbsent || rt.Error != "" {
		t.Errorf("never started: runtime %+v", rt)
	}
}

func TestVolumeWriters(t *testing.T) {
	st := vmState(t)
	st.Apply(100, catalog.Command{Kind: catalog.CmdStartVM, Name: "fresh", Target: "n1"}.Encode())
	got := volumeWriters(st)
	want := map[string]admin.VolumeWriter{
		"d1": {VM: "fresh", WriterEpoch: 100, WriterGen: 100},
		"d2": {VM: "web", WriterGen: st.VMs["web"].Changed},
		"d3": {},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("\n got %+v\nwant %+v", got, want)
	}
}

// fakeRuntime reports vms, having acted on the catalog up to index.
type fakeRuntime struct {
	vms   []admin.LocalVM
	index atomic.Uint64
}

func (f *fakeRuntime) Local() []admin.LocalVM { return f.vms }
func (f *fakeRuntime) Reconciled() uint64     { return f.index.Load() }

func TestLocalVMs(t *testing.T) {
	ctx := context.Background()
	if got, err := localVMs(ctx, nil, 5); err != nil || got == nil || len(got) != 0 {
		t.Fatalf("no runtime: %#v %v", got, err)
	}
	if got, err := localVMs(ctx, &fakeRuntime{}, 0); err != nil || got == nil || len(got) != 0 {
		t.Fatalf("empty runtime: %#v %v", got, err)
	}
	rt := &fakeRuntime{vms: []admin.LocalVM{{Name: "a", State: "running"}}}
	rt.index.Store(7)
	if got, err := localVMs(ctx, rt, 7); err != nil || !reflect.DeepEqual(got, rt.vms) {
		t.Fatalf("%+v %v", got, err)
	}
	// Behind the index asked for: it waits for the runtime, or fails.
	go func() {
		time.Sleep(50 * time.Millisecond)
		rt.index.Store(9)
	}()
	if got, err := localVMs(ctx, rt, 9); err != nil || !reflect.DeepEqual(got, rt.vms) {
		t.Fatalf("once caught up: %+v %v", got, err)
	}
	tctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	var se *admin.StatusError
	if _, err := localVMs(tctx, rt, 10); !errors.As(err, &se) || se.Code != http.StatusServiceUnavailable || !strings.Contains(se.Msg, "up to index 9, not yet 10") {
		t.Fatalf("behind: %v", err)
	}
	if got, err := (&clusterAgent{}).LocalVMs(ctx, 3); err != nil || got == nil || len(got) != 0 {
		t.Fatalf("an agent without a runtime: %#v %v", got, err)
	}
}

func TestVMError(t *testing.T) {
	notFound := fmt.Errorf("catalog: VM %q: disk %q: %w", "a", "x", catalog.ErrNotFound)
	if err := vmError(notFound, http.StatusBadRequest); statusOf(err) != 400 || err.Error() != `VM "a": disk "x": not found` {
		t.Errorf("not found: %v", err)
	}
	if err := vmError(fmt.Errorf("%w: x", control.ErrNotLeader), 404); statusOf(err) != 503 {
		t.Errorf("not leader: %v", err)
	}
	running := fmt.Errorf("catalog: %w", catalog.ErrRunning)
	if err := vmError(running, 404); err != running {
		t.Errorf("running: %v", err)
	}
}
