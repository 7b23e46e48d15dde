package catalog

import (
	"errors"
	"testing"
)

func TestParseDisk(t *testing.T) {
	tests := []struct {
		in   string
		want Disk
		err  bool
	}{
		{in: "vol1", want: Disk{Kind: DiskVolume, Volume: "vol1"}},
		{in: "raw:/var/lib/vm/a.img", want: Disk{Kind: DiskRaw, Path: "/var/lib/vm/a.img"}},
		{in: "qcow2:/var/lib/vm/a.qcow2", want: Disk{Kind: DiskQcow2, Path: "/var/lib/vm/a.qcow2"}},
		{in: "nbd://10.0.0.5:10900/exp", want: Disk{Kind: DiskNBD, Server: "10.0.0.5:10900", Export: "exp"}},
		{in: "nbd://store/exp", want: Disk{Kind: DiskNBD, Server: "store:10809", Export: "exp"}},
		{in: "nbd://[::1]:99/", want: Disk{Kind: DiskNBD, Server: "[::1]:99", Export: ""}},
		{in: "Vol1", err: true},
		{in: "raw:relative.img", err: true},
		{in: "raw:/a/../b", err: true},
		{in: "file:/a", err: true},
		{in: "nbd:/x", err: true},
		{in: "nbd://h:0/x", err: true},
		{in: "nbd://h:1/x?y=1", err: true},
		{in: "raw:/a\nb", err: true},
	}
	for _, tt := range tests {
		got, err := ParseDisk(tt.in)
		if tt.err {
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("ParseDisk(%q) = %+v, %v; want ErrInvalid", tt.in, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseDisk(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			continue
		}
		if back, err := ParseDisk(got.String()); err != nil || back != got {
			t.Errorf("ParseDisk(%q).String() = %q does not parse back: %+v, %v", tt.in, got.String(), back, err)
		}
	}
}

// TestDiskMoveCommands walks disk moves through their phases and checks
// the VM's disks and the volumes' writers after each command.
func TestDiskMoveCommands(t *testing.T) {
	const start = 20 // index of start_vm; the steps follow at 21, 22...
	const src = "raw:/vm/g.img"
	type step struct {
		cmd  Command
		want error
		// disk: the VM's disk 0 after the step; phase the move's ("" for
		// none); d2 the writer of volume d2 (the import target).
		disk   string
		phase  string
		d2     uint64
		result string // LastDiskMove.Result, if checked
	}
	moveTo := func(to string) Command {
		return Command{Kind: CmdMoveDisk, Name: "vm", DiskMove: &DiskMoveCommand{Disk: 0, To: to}}
	}
	pivot := func(id uint64) Command {
		return Command{Kind: CmdDiskMovePhase, Name: "vm", DiskMove: &DiskMoveCommand{ID: id, Phase: DiskMovePivoting}}
	}
	end := func(id uint64, result string) Command {
		return Command{Kind: CmdEndDiskMove, Name: "vm", DiskMove: &DiskMoveCommand{ID: id, Result: &DiskMoveResult{Result: result}}}
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"import completed, then export", []step{
			{cmd: moveTo("d2"), disk: src, phase: DiskMoveCopying, d2: start},
			{cmd: pivot(21), disk: src, phase: DiskMovePivoting, d2: start},
			{cmd: end(21, ResultCancelled), want: ErrInvalid, disk: src, phase: DiskMovePivoting, d2: start},
			{cmd: end(21, ResultCompleted), disk: "d2", d2: start, result: ResultCompleted},
			{cmd: moveTo("qcow2:/vm/out.qcow2"), disk: "d2", phase: DiskMoveCopying, d2: start},
			{cmd: pivot(25), disk: "d2", phase: DiskMovePivoting, d2: start},
			{cmd: end(25, ResultCompleted), disk: "qcow2:/vm/out.qcow2", d2: 0, result: ResultCompleted},
		}},
		{"cancelled while copying: the source stays, the target is released", []step{
			{cmd: moveTo("d2"), disk: src, phase: DiskMoveCopying, d2: start},
			{cmd: end(21, ResultCancelled), disk: src, d2: 0, result: ResultCancelled},
			{cmd: pivot(21), want: ErrNoDiskMove, disk: src, d2: 0},
		}},
		{"failed while pivoting: the source stays", []step{
			{cmd: moveTo("d2"), disk: src, phase: DiskMoveCopying, d2: start},
			{cmd: pivot(21), disk: src, phase: DiskMovePivoting, d2: start},
			{cmd: end(21, ResultFailed), disk: src, d2: 0, result: ResultFailed},
		}},
		{"stopped while copying: cancelled", []step{
			{cmd: moveTo("d2"), disk: src, phase: DiskMoveCopying, d2: start},
			{cmd: Command{Kind: CmdStopVM, Name: "vm"}, disk: src, d2: 0, result: ResultCancelled},
		}},
		{"stopped while pivoting: completed, the target is the disk", []step{
			{cmd: moveTo("d2"), disk: src, phase: DiskMoveCopying, d2: start},
			{cmd: pivot(21), disk: src, phase: DiskMovePivoting, d2: start},
			{cmd: Command{Kind: CmdStopVM, Name: "vm"}, disk: "d2", d2: 0, result: ResultCompleted},
		}},
		{"refusals", []step{
			{cmd: moveTo("d1"), want: ErrInUse, disk: src}, // another VM's disk
			{cmd: moveTo("nope"), want: ErrNotFound, disk: src},
			{cmd: moveTo(src), want: ErrInvalid, disk: src},
			{cmd: moveTo("tmp:/x"), want: ErrInvalid, disk: src},
			{cmd: Command{Kind: CmdMoveDisk, Name: "vm", DiskMove: &DiskMoveCommand{Disk: 3, To: "d2"}}, want: ErrInvalid, disk: src},
			{cmd: Command{Kind: CmdMigrateVM, Name: "vm", Target: "n2"}, want: ErrInvalid, disk: src}, // a file disk
			{cmd: moveTo("d2"), disk: src, phase: DiskMoveCopying, d2: start},
			{cmd: moveTo("d3"), want: ErrExists, disk: src, phase: DiskMoveCopying, d2: start},
			{cmd: end(27, ResultCompleted), want: ErrInvalid, disk: src, phase: DiskMoveCopying, d2: start},
			{cmd: pivot(99), want: ErrNoDiskMove, disk: src, phase: DiskMoveCopying, d2: start},
			{cmd: end(27, "rolled-back"), want: ErrInvalid, disk: src, phase: DiskMoveCopying, d2: start},
			{cmd: Command{Kind: CmdRemoveVolume, Name: "d2"}, want: ErrInUse, disk: src, phase: DiskMoveCopying, d2: start},
			{cmd: Command{Kind: CmdCreateVM, VM: &VM{Name: "vm3", VCPUs: 1, MemoryMiB: 64, Disks: []string{"d2"}, Boot: Boot{Kind: BootDisk}}},
				want: ErrInUse, disk: src, phase: DiskMoveCopying, d2: start},
			{cmd: Command{Kind: CmdStopVM, Name: "vm"}, disk: src, d2: 0, result: ResultCancelled},
			{cmd: moveTo("d2"), want: ErrStopped, disk: src},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := vmCatalog(t)
			for i, c := range []Command{
				{Kind: CmdCreateVM, VM: &VM{Name: "other", VCPUs: 1, MemoryMiB: 64, Disks: []string{"d1"}, Boot: Boot{Kind: BootDisk}}},
				{Kind: CmdCreateVM, VM: &VM{Name: "vm", VCPUs: 1, MemoryMiB: 64, Disks: []string{src}, Boot: Boot{Kind: BootDisk}}},
			} {
				if err := apply(t, s, uint64(10+i), c); err != nil {
					t.Fatal(err)
				}
			}
			if err := apply(t, s, start, Command{Kind: CmdStartVM, Name: "vm", Target: "n1"}); err != nil {
				t.Fatal(err)
			}
			for i, st := range tt.steps {
				idx := uint64(start + 1 + i)
				err := apply(t, s, idx, st.cmd)
				if !errors.Is(err, st.want) || (st.want == nil) != (err == nil) {
					t.Fatalf("step %d (%s): %v, want %v", i, st.cmd.Kind, err, st.want)
				}
				vm := s.VMs["vm"]
				phase := ""
				if vm.DiskMove != nil {
					phase = vm.DiskMove.Phase
				}
				if vm.Disks[0] != st.disk || phase != st.phase || s.Volumes["d2"].Writer != st.d2 {
					t.Fatalf("step %d (%s): disk %s phase %q d2 writer %d; want %s %q %d",
						i, st.cmd.Kind, vm.Disks[0], phase, s.Volumes["d2"].Writer, st.disk, st.phase, st.d2)
				}
				if st.result != "" && (vm.LastDiskMove == nil || vm.LastDiskMove.Result != st.result) {
					t.Fatalf("step %d: last disk move %+v, want %s", i, vm.LastDiskMove, st.result)
				}
			}
			r := roundTrip(t, s)
			if got, want := r.VMs["vm"], s.VMs["vm"]; (got.DiskMove == nil) != (want.DiskMove == nil) || (got.LastDiskMove == nil) != (want.LastDiskMove == nil) {
				t.Fatalf("restored %+v, want %+v", got, want)
			}
		})
	}
}

// TestFileDiskStartsOnItsHost: a VM with a disk that is a file on its
// host starts again only there.
func TestFileDiskStartsOnItsHost(t *testing.T) {
	s := vmCatalog(t)
	if err := apply(t, s, 10, Command{Kind: CmdCreateVM, VM: &VM{Name: "vm", VCPUs: 1, MemoryMiB: 64, Disks: []string{"d1", "raw:/vm/x.img", "nbd://s:1/e"}, Boot: Boot{Kind: BootDisk}}}); err != nil {
		t.Fatal(err)
	}
	for i, c := range []Command{{Kind: CmdStartVM, Name: "vm", Target: "n2"}, {Kind: CmdStopVM, Name: "vm"}} {
		if err := apply(t, s, uint64(11+i), c); err != nil {
			t.Fatal(err)
		}
	}
	if err := apply(t, s, 13, Command{Kind: CmdStartVM, Name: "vm", Target: "n3"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("start elsewhere: %v, want ErrInvalid", err)
	}
	if err := apply(t, s, 14, Command{Kind: CmdStartVM, Name: "vm", Target: "n2"}); err != nil {
		t.Fatal(err)
	}
	if w := s.Volumes["d1"].Writer; w != 14 {
		t.Fatalf("volume disk's writer %d, want 14", w)
	}
}
