package catalog

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// vmCatalog returns three hosts and the volumes d1..d4 on them.
func vmCatalog(t *testing.T) *State {
	t.Helper()
	s := threeHosts(t)
	for i, name := range []string{"d1", "d2", "d3", "d4"} {
		if err := apply(t, s, uint64(4+i), Command{Kind: CmdCreateVolume, Volume: &Volume{Name: name, Size: 1 << 20, Replicas: []string{"n1", "n2", "n3"}, PreferredLeader: "n2"}}); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func TestVMCommands(t *testing.T) {
	at := time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)
	vm := func(name string, disks ...string) *VM {
		return &VM{Name: name, VCPUs: 2, MemoryMiB: 256, Disks: disks, Boot: Boot{Kind: BootDisk}}
	}
	with := func(v *VM, f func(*VM)) *VM { f(v); return v }
	kernel := Boot{Kind: BootKernel, Kernel: "/boot/vmlinuz", Initrd: "/boot/initrd.img", Cmdline: "console=ttyS0 root=/dev/vda"}

	// check, when set, inspects the catalog after the command at index i.
	tests := []struct {
		name    string
		cmd     Command
		want    error
		wantMsg string // a substring of the error
		check   func(t *testing.T, s *State, i uint64)
	}{
		{name: "create", cmd: Command{Kind: CmdCreateVM, VM: with(vm("web", "d1", "d2"), func(v *VM) {
			// Fields the proposer cannot set.
			v.ID, v.Host, v.State, v.Epoch, v.Changed = 99, "n3", VMRunning, 42, 7
		}), At: at}, check: func(t *testing.T, s *State, i uint64) {
			want := &VM{ID: i, Name: "web", VCPUs: 2, MemoryMiB: 256, Disks: []string{"d1", "d2"}, Boot: Boot{Kind: BootDisk},
				State: VMStopped, Created: at, Changed: i}
			if got := s.VMs["web"]; !reflect.DeepEqual(got, want) {
				t.Fatalf("created\n%+v, want\n%+v", got, want)
			}
			if s.DiskOf("d1") != "web" || s.DiskOf("d3") != "" {
				t.Fatal("DiskOf")
			}
		}},
		{name: "create kernel boot", cmd: Command{Kind: CmdCreateVM, VM: with(vm("k", "d3"), func(v *VM) { v.Boot = kernel })}},
		{name: "create exists", cmd: Command{Kind: CmdCreateVM, VM: vm("web", "d4")}, want: ErrExists},
		{name: "create without a VM", cmd: Command{Kind: CmdCreateVM}, want: ErrInvalid},
		{name: "bad name", cmd: Command{Kind: CmdCreateVM, VM: vm("Web!", "d4")}, want: ErrInvalid, wantMsg: `invalid VM name "Web!"`},
		{name: "disk used by another VM", cmd: Command{Kind: CmdCreateVM, VM: vm("db", "d4", "d2")}, want: ErrInUse, wantMsg: `disk "d2": in use as a disk of VM "web"`},
		{name: "unknown disk", cmd: Command{Kind: CmdCreateVM, VM: vm("db", "nope")}, want: ErrNotFound, wantMsg: `disk "nope": not found: no such volume`},
		{name: "no disks", cmd: Command{Kind: CmdCreateVM, VM: vm("db")}, want: ErrInvalid, wantMsg: "0 disks, want 1 to 16"},
		{name: "17 disks", cmd: Command{Kind: CmdCreateVM, VM: vm("db", strings.Split(strings.Repeat("d4,", 17), ",")[:17]...)}, want: ErrInvalid},
		{name: "disk twice", cmd: Command{Kind: CmdCreateVM, VM: vm("db", "d4", "d4")}, want: ErrInvalid, wantMsg: `disk "d4" is listed twice`},
		{name: "0 vcpus", cmd: Command{Kind: CmdCreateVM, VM: with(vm("db", "d4"), func(v *VM) { v.VCPUs = 0 })}, want: ErrInvalid, wantMsg: "vcpus 0, want 1 to 16"},
		{name: "17 vcpus", cmd: Command{Kind: CmdCreateVM, VM: with(vm("db", "d4"), func(v *VM) { v.VCPUs = 17 })}, want: ErrInvalid},
		{name: "15 MiB", cmd: Command{Kind: CmdCreateVM, VM: with(vm("db", "d4"), func(v *VM) { v.MemoryMiB = 15 })}, want: ErrInvalid, wantMsg: "memory 15MiB, want 16MiB to 64GiB"},
		{name: "64 GiB + 1 MiB", cmd: Command{Kind: CmdCreateVM, VM: with(vm("db", "d4"), func(v *VM) { v.MemoryMiB = 65537 })}, want: ErrInvalid},
		{name: "no boot kind", cmd: Command{Kind: CmdCreateVM, VM: with(vm("db", "d4"), func(v *VM) { v.Boot = Boot{} })}, want: ErrInvalid, wantMsg: `boot kind "": want "disk" or "kernel"`},
		{name: "disk boot with a kernel", cmd: Command{Kind: CmdCreateVM, VM: with(vm("db", "d4"), func(v *VM) { v.Boot.Kernel = "/k" })}, want: ErrInvalid},
		{name: "kernel boot without a kernel", cmd: Command{Kind: CmdCreateVM, VM: with(vm("db", "d4"), func(v *VM) { v.Boot = Boot{Kind: BootKernel, Cmdline: "x"} })}, want: ErrInvalid},
		{name: "relative kernel", cmd: Command{Kind: CmdCreateVM, VM: with(vm("db", "d4"), func(v *VM) { v.Boot = Boot{Kind: BootKernel, Kernel: "vmlinuz"} })}, want: ErrInvalid, wantMsg: "want an absolute path"},
		{name: "relative initrd", cmd: Command{Kind: CmdCreateVM, VM: with(vm("db", "d4"), func(v *VM) { v.Boot = Boot{Kind: BootKernel, Kernel: "/k", Initrd: "i"} })}, want: ErrInvalid},
		{name: "cmdline with a newline", cmd: Command{Kind: CmdCreateVM, VM: with(vm("db", "d4"), func(v *VM) { v.Boot = Boot{Kind: BootKernel, Kernel: "/k", Cmdline: "a\nb"} })}, want: ErrInvalid},
		{name: "long cmdline", cmd: Command{Kind: CmdCreateVM, VM: with(vm("db", "d4"), func(v *VM) { v.Boot = Boot{Kind: BootKernel, Kernel: "/k", Cmdline: strings.Repeat("x", 4097)} })}, want: ErrInvalid},
		{name: "remove a VM's disk", cmd: Command{Kind: CmdRemoveVolume, Name: "d2"}, want: ErrInUse, wantMsg: `volume "d2": in use as a disk of VM "web" (delete the VM first)`},
		{name: "stop stopped", cmd: Command{Kind: CmdStopVM, Name: "web"}, want: ErrStopped, wantMsg: `VM "web": already stopped`},
		{name: "start without host", cmd: Command{Kind: CmdStartVM, Name: "web"}, want: ErrInvalid},
		{name: "start on unknown host", cmd: Command{Kind: CmdStartVM, Name: "web", Target: "n9"}, want: ErrNotFound, wantMsg: `host "n9": not found`},
		{name: "start unknown VM", cmd: Command{Kind: CmdStartVM, Name: "nope", Target: "n1"}, want: ErrNotFound},
		{name: "start", cmd: Command{Kind: CmdStartVM, Name: "web", Target: "n2"}, check: func(t *testing.T, s *State, i uint64) {
			vm := s.VMs["web"]
			if vm.State != VMRunning || vm.Host != "n2" || vm.Epoch != i || vm.Changed != i {
				t.Fatalf("started VM %+v", vm)
			}
			for _, d := range []string{"d1", "d2"} {
				if v := s.Volumes[d]; v.Writer != i || v.WriterGen != i || v.Changed != i {
					t.Fatalf("disk %s of a started VM: %+v", d, v)
				}
			}
			if v := s.Volumes["d4"]; v.Writer != 0 || v.WriterGen != 0 {
				t.Fatalf("a volume of no VM: %+v", v)
			}
		}},
		{name: "start running", cmd: Command{Kind: CmdStartVM, Name: "web", Target: "n1"}, want: ErrRunning, wantMsg: "already running on n2 (epoch"},
		{name: "delete running", cmd: Command{Kind: CmdDeleteVM, Name: "web"}, want: ErrRunning, wantMsg: `VM "web": running on n2 (stop it first)`},
		{name: "stop", cmd: Command{Kind: CmdStopVM, Name: "web"}, check: func(t *testing.T, s *State, i uint64) {
			vm := s.VMs["web"]
			if vm.State != VMStopped || vm.Host != "n2" || vm.Epoch != 0 || vm.Changed != i {
				t.Fatalf("stopped VM %+v", vm)
			}
			for _, d := range []string{"d1", "d2"} {
				if v := s.Volumes[d]; v.Writer != 0 || v.WriterGen != i {
					t.Fatalf("disk %s of a stopped VM: %+v", d, v)
				}
			}
		}},
		{name: "stop unknown VM", cmd: Command{Kind: CmdStopVM, Name: "nope"}, want: ErrNotFound},
		{name: "start again elsewhere", cmd: Command{Kind: CmdStartVM, Name: "web", Target: "n3"}, check: func(t *testing.T, s *State, i uint64) {
			if vm := s.VMs["web"]; vm.Host != "n3" || vm.Epoch != i {
				t.Fatalf("restarted VM %+v", vm)
			}
			if v := s.Volumes["d1"]; v.Writer != i || v.WriterGen != i {
				t.Fatalf("disk of a restarted VM: %+v", v)
			}
		}},
		{name: "stop again", cmd: Command{Kind: CmdStopVM, Name: "web"}},
		{name: "delete", cmd: Command{Kind: CmdDeleteVM, Name: "web"}, check: func(t *testing.T, s *State, i uint64) {
			if s.VMs["web"] != nil || s.DiskOf("d1") != "" {
				t.Fatal("VM not deleted")
			}
			if v := s.Volumes["d1"]; v.Writer != 0 || v.WriterGen == 0 {
				t.Fatalf("disk of a deleted VM: %+v", v)
			}
		}},
		{name: "delete again", cmd: Command{Kind: CmdDeleteVM, Name: "web"}, want: ErrNotFound},
		{name: "its disks are free again", cmd: Command{Kind: CmdCreateVM, VM: vm("db", "d2", "d1")}},
		{name: "remove a free volume", cmd: Command{Kind: CmdRemoveVolume, Name: "d4"}},
	}
	s := vmCatalog(t)
	for n, tc := range tests {
		i := uint64(100 + n)
		before := s.Clone()
		err := apply(t, s, i, tc.cmd)
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Fatalf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if tc.wantMsg != "" && (err == nil || !strings.Contains(err.Error(), tc.wantMsg)) {
			t.Fatalf("%s: error %q, want it to contain %q", tc.name, err, tc.wantMsg)
		}
		if err != nil {
			before.Index = s.Index
			if !reflect.DeepEqual(before, s) {
				t.Fatalf("%s: a refused command changed the catalog", tc.name)
			}
		}
		if s.Index != i {
			t.Fatalf("%s: index %d", tc.name, s.Index)
		}
		if tc.check != nil {
			tc.check(t, s, i)
		}
	}
	if got := s.VMNames(); !reflect.DeepEqual(got, []string{"db", "k"}) {
		t.Fatalf("VMNames %v", got)
	}
}

// TestCreateVolumeIgnoresWriter checks that a new volume has no writer,
// whatever the proposer sent.
func TestCreateVolumeIgnoresWriter(t *testing.T) {
	s := threeHosts(t)
	if err := apply(t, s, 5, Command{Kind: CmdCreateVolume, Volume: &Volume{Name: "a", Size: 1, Replicas: []string{"n1"}, Writer: 3, WriterGen: 4}}); err != nil {
		t.Fatal(err)
	}
	if v := s.Volumes["a"]; v.Writer != 0 || v.WriterGen != 0 {
		t.Fatalf("%+v", v)
	}
}

func TestVMSnapshotRoundTripAndClone(t *testing.T) {
	s := vmCatalog(t)
	apply(t, s, 20, Command{Kind: CmdCreateVM, VM: &VM{Name: "a", VCPUs: 1, MemoryMiB: 64, Disks: []string{"d1", "d2"},
		Boot: Boot{Kind: BootKernel, Kernel: "/k", Cmdline: "console=ttyS0"}}, At: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)})
	apply(t, s, 21, Command{Kind: CmdCreateVM, VM: &VM{Name: "b", VCPUs: 4, MemoryMiB: 1024, Disks: []string{"d3"}, Boot: Boot{Kind: BootDisk}}})
	if err := apply(t, s, 22, Command{Kind: CmdStartVM, Name: "a", Target: "n3"}); err != nil {
		t.Fatal(err)
	}
	b, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	r, err := Restore(b)
	if err != nil || !reflect.DeepEqual(r, s) {
		t.Fatalf("restore: %v\n%+v\n%+v", err, r, s)
	}
	if r.VMs["a"].Epoch != 22 || r.Volumes["d2"].Writer != 22 || r.Volumes["d2"].WriterGen != 22 {
		t.Fatalf("restored %+v %+v", r.VMs["a"], r.Volumes["d2"])
	}
	c := s.Clone()
	c.VMs["a"].Disks[0] = "zz"
	c.VMs["a"].Boot.Kernel = "zz"
	c.Volumes["d1"].Writer = 1
	if s.VMs["a"].Disks[0] != "d1" || s.VMs["a"].Boot.Kernel != "/k" || s.Volumes["d1"].Writer != 22 {
		t.Fatal("Clone shares memory with the original")
	}
	// A snapshot from before VMs existed restores with an empty VM map.
	old, err := Restore([]byte(`{"hosts":{},"volumes":{"v":{"id":3,"name":"v","size":1,"replicas":["n1"]}},"index":9}`))
	if err != nil || old.VMs == nil || len(old.VMs) != 0 || old.Volumes["v"].Writer != 0 {
		t.Fatalf("old snapshot: %v %+v", err, old)
	}
	// And a catalog without VMs can take one.
	apply(t, old, 10, Command{Kind: CmdPutHost, Host: &Host{Name: "n1"}})
	if err := apply(t, old, 11, Command{Kind: CmdCreateVM, VM: &VM{Name: "x", VCPUs: 1, MemoryMiB: 16, Disks: []string{"v"}, Boot: Boot{Kind: BootDisk}}}); err != nil {
		t.Fatal(err)
	}
}

func TestValidateVMName(t *testing.T) {
	for _, ok := range []string{"a", "web-1", "db.prod_2", strings.Repeat("a", 63)} {
		if err := ValidateVMName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "Web", "-a", "a b", "a/b", strings.Repeat("a", 64)} {
		if err := ValidateVMName(bad); err == nil || !strings.Contains(err.Error(), "invalid VM name") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}
