package catalog

import (
	"errors"
	"testing"
)

// TestMigrationCommands walks migrations through their phases and checks
// who owns the VM and its disks' writer after each command.
func TestMigrationCommands(t *testing.T) {
	type step struct {
		cmd  Command
		want error
		// host, epoch, writer: the VM's host and epoch and its disk's
		// writer after the step; phase its migration's ("" for none).
		host   string
		epoch  uint64
		writer uint64
		phase  string
		result string // LastMigration.Result, if checked
	}
	const start = 20 // index of start_vm; the steps follow at 21, 22...
	mig := func(kind string, epoch uint64) Command { return Command{Kind: kind, Name: "vm", Epoch: epoch} }
	end := func(epoch uint64, result string) Command {
		return Command{Kind: CmdEndMigration, Name: "vm", Epoch: epoch, Result: &MigrationResult{Result: result}}
	}
	ready := Command{Kind: CmdMigrationReady, Name: "vm", Epoch: 21, URI: "tcp:10.0.0.2:4444"}
	tests := []struct {
		name  string
		steps []step
	}{
		{"completed", []step{
			{cmd: Command{Kind: CmdMigrateVM, Name: "vm", Target: "n2"}, host: "n1", epoch: start, writer: start, phase: MigrationPreparing},
			{cmd: ready, host: "n1", epoch: start, writer: start, phase: MigrationReady},
			{cmd: mig(CmdSwitchVM, 21), host: "n2", epoch: 21, writer: 21, phase: MigrationSwitched},
			{cmd: end(21, ResultCompleted), host: "n2", epoch: 21, writer: 21, result: ResultCompleted},
		}},
		{"cancelled before the switch", []step{
			{cmd: Command{Kind: CmdMigrateVM, Name: "vm", Target: "n3"}, host: "n1", epoch: start, writer: start, phase: MigrationPreparing},
			{cmd: end(21, ResultCancelled), host: "n1", epoch: start, writer: start, result: ResultCancelled},
			{cmd: ready, want: ErrNoMigration, host: "n1", epoch: start, writer: start},
		}},
		{"failed after the switch: the VM stays on the destination", []step{
			{cmd: Command{Kind: CmdMigrateVM, Name: "vm", Target: "n2"}, host: "n1", epoch: start, writer: start, phase: MigrationPreparing},
			{cmd: ready, host: "n1", epoch: start, writer: start, phase: MigrationReady},
			{cmd: mig(CmdSwitchVM, 21), host: "n2", epoch: 21, writer: 21, phase: MigrationSwitched},
			{cmd: end(21, ResultCancelled), want: ErrInvalid, host: "n2", epoch: 21, writer: 21, phase: MigrationSwitched},
			{cmd: end(21, "rolled-back"), want: ErrInvalid, host: "n2", epoch: 21, writer: 21, phase: MigrationSwitched},
			{cmd: end(21, ResultFailed), host: "n2", epoch: 21, writer: 21, result: ResultFailed},
		}},
		{"failed before the switch: nothing changes hands", []step{
			{cmd: Command{Kind: CmdMigrateVM, Name: "vm", Target: "n2"}, host: "n1", epoch: start, writer: start, phase: MigrationPreparing},
			{cmd: ready, host: "n1", epoch: start, writer: start, phase: MigrationReady},
			{cmd: end(21, ResultFailed), host: "n1", epoch: start, writer: start, result: ResultFailed},
		}},
		{"refusals", []step{
			{cmd: Command{Kind: CmdMigrateVM, Name: "vm", Target: "n1"}, want: ErrInvalid, host: "n1", epoch: start, writer: start},
			{cmd: Command{Kind: CmdMigrateVM, Name: "vm", Target: "n9"}, want: ErrNotFound, host: "n1", epoch: start, writer: start},
			{cmd: Command{Kind: CmdMigrateVM, Name: "nope", Target: "n2"}, want: ErrNotFound, host: "n1", epoch: start, writer: start},
			{cmd: mig(CmdSwitchVM, 21), want: ErrNoMigration, host: "n1", epoch: start, writer: start},
			{cmd: Command{Kind: CmdMigrateVM, Name: "vm", Target: "n2"}, host: "n1", epoch: start, writer: start, phase: MigrationPreparing},
			{cmd: Command{Kind: CmdMigrateVM, Name: "vm", Target: "n3"}, want: ErrExists, host: "n1", epoch: start, writer: start, phase: MigrationPreparing},
			{cmd: mig(CmdSwitchVM, 25), want: ErrInvalid, host: "n1", epoch: start, writer: start, phase: MigrationPreparing}, // not ready
			{cmd: end(25, ResultCompleted), want: ErrInvalid, host: "n1", epoch: start, writer: start, phase: MigrationPreparing},
			{cmd: mig(CmdSwitchVM, 99), want: ErrNoMigration, host: "n1", epoch: start, writer: start, phase: MigrationPreparing},
			{cmd: Command{Kind: CmdStopVM, Name: "vm"}, host: "n1", epoch: 0, writer: 0, result: ResultCancelled},
			{cmd: Command{Kind: CmdMigrateVM, Name: "vm", Target: "n2"}, want: ErrStopped, host: "n1", epoch: 0, writer: 0},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := vmCatalog(t)
			if err := apply(t, s, 10, Command{Kind: CmdCreateVM, VM: &VM{Name: "vm", VCPUs: 1, MemoryMiB: 64, Disks: []string{"d1"}, Boot: Boot{Kind: BootDisk}}}); err != nil {
				t.Fatal(err)
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
				vm, d := s.VMs["vm"], s.Volumes["d1"]
				phase := ""
				if vm.Migration != nil {
					phase = vm.Migration.Phase
				}
				if vm.Host != st.host || vm.Epoch != st.epoch || d.Writer != st.writer || phase != st.phase {
					t.Fatalf("step %d (%s): host %s epoch %d writer %d phase %q; want %s %d %d %q",
						i, st.cmd.Kind, vm.Host, vm.Epoch, d.Writer, phase, st.host, st.epoch, st.writer, st.phase)
				}
				if st.result != "" && (vm.LastMigration == nil || vm.LastMigration.Result != st.result) {
					t.Fatalf("step %d: last migration %+v, want %s", i, vm.LastMigration, st.result)
				}
				if err == nil && (st.cmd.Kind == CmdSwitchVM || st.cmd.Kind == CmdStopVM) && d.WriterGen != idx {
					t.Fatalf("step %d: writer gen %d, want %d (a new generation for every writer change)", i, d.WriterGen, idx)
				}
			}
			// Snapshots keep migrations.
			r := roundTrip(t, s)
			if got, want := r.VMs["vm"], s.VMs["vm"]; (got.Migration == nil) != (want.Migration == nil) || (got.LastMigration == nil) != (want.LastMigration == nil) {
				t.Fatalf("restored %+v, want %+v", got, want)
			}
		})
	}
}
