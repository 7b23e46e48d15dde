package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tandem-project/tandem/admin"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files under testdata/render/")

// Fixtures of the admin API's bodies, shared with the CLI tests.
var (
	testCreated = time.Date(2025, 3, 1, 12, 30, 0, 0, time.UTC)

	testCluster = admin.ClusterStatus{
		Host: "n1", Version: "tandem v0.3.0 (go1.26.8, linux/amd64)",
		ControlLeader: "n1", ControlVoters: []string{"n1", "n2", "n3"}, ControlTerm: 4, ControlIndex: 1207,
		Hosts: 4, HostsAlive: 3, Volumes: 2,
	}

	testHosts = []admin.Host{
		{Name: "n1", State: admin.HostAlive, RaftAddr: "10.0.0.1:10810", NBDAddr: "10.0.0.1:10809", AdminAddr: "10.0.0.1:7480",
			Capacity: 500 << 30, Allocated: 60 << 30, DiskFree: 812345678901, Replicas: 2, Leads: 1, Control: "leader", Joined: testCreated,
			Version: "tandem v0.3.0 (go1.26.8, linux/amd64)"},
		{Name: "n2", State: admin.HostAlive, RaftAddr: "10.0.0.2:10810", NBDAddr: "10.0.0.2:10809", AdminAddr: "10.0.0.2:7480",
			Capacity: 500 << 30, Allocated: 60 << 30, DiskFree: 1536 << 20, Replicas: 2, Leads: 1, Control: "voter", Joined: testCreated,
			Version: "tandem 664b51b-dirty (go1.26.8, linux/amd64)"},
		{Name: "n3", State: admin.HostFailed, RaftAddr: "10.0.0.3:10810", NBDAddr: "10.0.0.3:10809", AdminAddr: "10.0.0.3:7480",
			Capacity: 2 << 40, Allocated: 0, DiskFree: 2199023255552 - 1, Replicas: 0, Control: "voter", Joined: testCreated},
		{Name: "n4-with-a-long-name", State: admin.HostFailed, NBDAddr: "10.0.0.4:10809", Capacity: 1000, DiskFree: -1},
	}

	testVolume = admin.Volume{
		Name: "vm1", Size: 20 << 30, Hosts: []string{"n1", "n2", "n3"}, PreferredLeader: "n1", Leader: "n1",
		State: admin.VolumeReady, Attached: 1, URI: "nbd://10.0.0.1:10809/vm1", Created: testCreated,
		Replicas: []admin.Replica{
			{Host: "n1", State: "Leader", Term: 3, LastIndex: 48213, CommitIndex: 48213, AppliedIndex: 48213},
			{Host: "n2", State: "Follower", Term: 3, LastIndex: 48213, CommitIndex: 48213, AppliedIndex: 48211, Lag: 2, LastContact: 12345678 * time.Nanosecond},
			{Host: "n3", State: "Follower", Term: 3, LastIndex: 48213, CommitIndex: 48212, AppliedIndex: 48212, Lag: 1, LastContact: 500 * time.Microsecond},
		},
	}

	testDegraded = admin.Volume{
		Name: "db.data_2", Size: 1536 << 20, Hosts: []string{"n2", "n3", "n4-with-a-long-name"}, PreferredLeader: "n2", Leader: "n3",
		State: admin.VolumeDegraded, URI: "nbd://10.0.0.3:10809/db.data_2", Created: testCreated.Add(-48 * time.Hour),
		Replicas: []admin.Replica{
			{Host: "n2", State: "Failed", Error: "open replica:\tdisk\nfull", FailedSince: testCreated.Add(-time.Hour)},
			{Host: "n3", State: "Leader", Term: 7, LastIndex: 90, CommitIndex: 90, AppliedIndex: 90},
			{Host: "n4-with-a-long-name", State: "Unreachable", Error: "dial tcp 10.0.0.4:7480: connect: no route to host"},
		},
	}

	testVolumes = []admin.Volume{testVolume, testDegraded,
		{Name: "new", Size: 4097, State: admin.VolumeUnavailable}}

	// testVolumeOfVM is a disk of the running testVM.
	testVolumeOfVM = admin.Volume{
		Name: "web-root", Size: 8 << 30, Hosts: []string{"n2", "n1", "n3"}, PreferredLeader: "n2", Leader: "n2",
		State: admin.VolumeReady, Attached: 1, URI: "nbd://10.0.0.2:10809/web-root", Created: testCreated,
		VM: "web", WriterEpoch: 1301, WriterGen: 1301,
		Replicas: []admin.Replica{{Host: "n2", State: "Leader", Term: 2, LastIndex: 10, CommitIndex: 10, AppliedIndex: 10}},
	}

	// testVM runs on n2, booting a kernel.
	testVM = admin.VM{
		Name: "web", ID: 1210, VCPUs: 2, MemoryMiB: 1024,
		Disks: []admin.VMDisk{{Disk: "web-root", Kind: "volume", Volume: "web-root", WriterEpoch: 1301, WriterGen: 1301}, {Disk: "web-data", Kind: "volume", Volume: "web-data", WriterEpoch: 1301, WriterGen: 1301}},
		Boot:  admin.Boot{Kind: admin.BootKernel, Kernel: "/srv/images/vmlinuz", Initrd: "/srv/images/initrd.img", Cmdline: "console=ttyS0 root=/dev/vda"},
		State: admin.VMRunning, Host: "n2", Epoch: 1301, Created: testCreated, Changed: 1301,
		Runtime: admin.LocalVM{Name: "web", State: "running", PID: 4242, Epoch: 1301, QMPSocket: "/var/lib/tandem/vms/web/qmp.sock",
			SerialLog: "/var/lib/tandem/vms/web/serial.log", Started: testCreated.Add(time.Hour)},
	}

	// testVMStopped was stopped on n3 (its disk's writer was reset at
	// index 900); testVMNew was never started.
	testVMStopped = admin.VM{
		Name: "db.prod_2", ID: 800, VCPUs: 16, MemoryMiB: 65536, Disks: []admin.VMDisk{{Volume: "db-root", WriterGen: 900}},
		Boot: admin.Boot{Kind: admin.BootDisk}, State: admin.VMStopped, Host: "n3", Created: testCreated, Changed: 900,
		Runtime: admin.LocalVM{Name: "db.prod_2", State: admin.VMUnknown, Error: "host n3 is failed"},
	}
	testVMNew = admin.VM{
		Name: "new", ID: 1400, VCPUs: 1, MemoryMiB: 256, Disks: []admin.VMDisk{{Volume: "new-root"}},
		Boot: admin.Boot{Kind: admin.BootDisk}, State: admin.VMStopped, Created: testCreated, Changed: 1400,
		Runtime: admin.LocalVM{Name: "new", State: admin.VMAbsent},
	}

	testVMs = []admin.VM{testVM, testVMStopped, testVMNew}
)

func TestRenderGolden(t *testing.T) {
	tests := []struct {
		name   string
		render func(io.Writer) error
	}{
		{"cluster", func(w io.Writer) error { return renderCluster(w, testCluster) }},
		{"cluster-via", func(w io.Writer) error {
			st := testCluster
			st.Host, st.Via, st.ControlLeader = "n2", "n1", "n2"
			return renderCluster(w, st)
		}},
		{"cluster-no-leader", func(w io.Writer) error {
			return renderCluster(w, admin.ClusterStatus{Host: "n1", Version: "devel", Hosts: 3, HostsAlive: 1})
		}},
		{"hosts", func(w io.Writer) error { return renderHosts(w, testHosts) }},
		{"hosts-empty", func(w io.Writer) error { return renderHosts(w, nil) }},
		{"volumes", func(w io.Writer) error { return renderVolumes(w, testVolumes) }},
		{"volumes-empty", func(w io.Writer) error { return renderVolumes(w, []admin.Volume{}) }},
		{"volume", func(w io.Writer) error { return renderVolume(w, testVolume) }},
		{"volume-degraded", func(w io.Writer) error { return renderVolume(w, testDegraded) }},
		{"volume-no-replicas", func(w io.Writer) error { return renderVolume(w, testVolumes[2]) }},
		{"volume-json", func(w io.Writer) error { return printJSON(w, testVolume) }},
		{"volume-of-vm", func(w io.Writer) error { return renderVolume(w, testVolumeOfVM) }},
		{"volume-moving", func(w io.Writer) error {
			v := testVolume
			v.Move = &admin.VolumeMove{ID: 912, From: "n3", To: "n4", Reason: "heal", Phase: "copying", Started: testCreated.Add(time.Hour),
				Copied: 3 << 30, Done: 6 << 30, Size: v.Size, Copying: true, Rate: 200 << 20, Lag: 17}
			v.LastMove = &admin.MoveResult{ID: 700, From: "n2", To: "n5", Reason: "operator", Result: "cancelled",
				Error: "its destination n5 is down since 2025-03-01T12:20:00Z", Started: testCreated, Finished: testCreated.Add(time.Minute)}
			return renderVolume(w, v)
		}},
		{"volume-moved", func(w io.Writer) error {
			v := testVolume
			v.LastMove = &admin.MoveResult{ID: 912, From: "n3", To: "n4", Reason: "drain", Result: "completed", Bytes: 12 << 30, Copy: 61500 * time.Millisecond,
				Check: &admin.MoveCheck{Index: 48000, Ranges: 320, RangeBytes: 64 << 20, Compared: 320, OK: true}, Started: testCreated, Finished: testCreated.Add(70 * time.Second)}
			return renderVolume(w, v)
		}},
		{"volume-verifying", func(w io.Writer) error {
			v := testVolume
			v.Verify = &admin.VolumeVerify{ID: 1020, Started: testCreated.Add(2 * time.Hour)}
			v.LastVerify = &admin.VerifyResult{ID: 990, Leader: "n1", OK: true, Started: testCreated.Add(time.Hour), Finished: testCreated.Add(time.Hour + 40*time.Second),
				Replicas: []admin.VerifiedReplica{{Host: "n2", Check: admin.MoveCheck{Index: 47000, Ranges: 20480, RangeBytes: 1 << 20, Compared: 20480, OK: true}},
					{Host: "n3", Check: admin.MoveCheck{Index: 47000, Ranges: 20480, RangeBytes: 1 << 20, Compared: 20480, OK: true}}}}
			return renderVolume(w, v)
		}},
		{"volume-verify-failed", func(w io.Writer) error {
			v := testVolume
			v.LastVerify = &admin.VerifyResult{ID: 990, Leader: "n1", Error: "1 of 20480 ranges differ on n3, the first at byte 1048576",
				Started: testCreated.Add(time.Hour), Finished: testCreated.Add(time.Hour + 40*time.Second),
				Replicas: []admin.VerifiedReplica{{Host: "n2", Check: admin.MoveCheck{Index: 47000, Ranges: 20480, RangeBytes: 1 << 20, Compared: 20480, OK: true}},
					{Host: "n3", Check: admin.MoveCheck{Index: 47000, Ranges: 20480, RangeBytes: 1 << 20, Compared: 20480, Mismatched: 1, Error: "1 of 20480 ranges differ on n3, the first at byte 1048576"}}}}
			return renderVolume(w, v)
		}},
		{"volume-verify-cancelled", func(w io.Writer) error {
			v := testVolume
			v.LastVerify = &admin.VerifyResult{ID: 990, Cancelled: true, Error: "cancelled", Started: testCreated.Add(time.Hour), Finished: testCreated.Add(time.Hour + 40*time.Second)}
			return renderVolume(w, v)
		}},
		{"verify-line", func(w io.Writer) error {
			r := admin.VerifyResult{ID: 990, Leader: "n1", Error: "1 of 4 ranges differ on n3, the first at byte 1048576",
				Started: testCreated, Finished: testCreated.Add(2500 * time.Millisecond),
				Replicas: []admin.VerifiedReplica{{Host: "n2", Check: admin.MoveCheck{Index: 470, Ranges: 4, RangeBytes: 1 << 20, Compared: 4, Pinned: 1, OK: true}},
					{Host: "n3", Check: admin.MoveCheck{Index: 471, Ranges: 4, RangeBytes: 1 << 20, Compared: 4, Mismatched: 1, Error: "1 of 4 ranges differ on n3, the first at byte 1048576"}},
					{Host: "n4", Check: admin.MoveCheck{Error: "no route to host"}}}}
			_, err := fmt.Fprintln(w, verifyLine("vm1", r))
			return err
		}},
		{"volumes-with-vm", func(w io.Writer) error { return renderVolumes(w, []admin.Volume{testVolumeOfVM, testVolume}) }},
		{"vms", func(w io.Writer) error { return renderVMs(w, testVMs) }},
		{"vms-empty", func(w io.Writer) error { return renderVMs(w, nil) }},
		{"vm", func(w io.Writer) error { return renderVM(w, testVM) }},
		{"vm-stopped", func(w io.Writer) error { return renderVM(w, testVMStopped) }},
		{"vm-new", func(w io.Writer) error { return renderVM(w, testVMNew) }},
		{"vm-json", func(w io.Writer) error { return printJSON(w, testVM) }},
		{"vm-migrating", func(w io.Writer) error {
			vm := testVM
			vm.Migration = &admin.Migration{From: "n1", To: "n2", Epoch: 61, Phase: "ready", Started: testVM.Created}
			vm.Runtime.Migration = &admin.MigrationProgress{Status: "active", Transferred: 96 << 20, Remaining: 32 << 20, Total: 128 << 20, Passes: 2, ExpectedDowntime: 12 * time.Millisecond}
			vm.LastMigration = &admin.MigrationResult{From: "n2", To: "n1", Result: "completed", Downtime: 41 * time.Millisecond, QEMUDowntime: 6 * time.Millisecond,
				Total: 900 * time.Millisecond, Bytes: 140 << 20, Passes: 3, Finished: testVM.Created}
			return renderVM(w, vm)
		}},
		{"vm-moving-disk", func(w io.Writer) error {
			vm := testVM
			vm.Disks = []admin.VMDisk{{Disk: "raw:/srv/web.img", Kind: "raw"}, testVM.Disks[1]}
			vm.DiskMove = &admin.DiskMove{ID: 1500, Disk: 0, From: "raw:/srv/web.img", To: "web-root", Phase: "copying", Started: testVM.Created}
			vm.Runtime.DiskMove = &admin.DiskMoveProgress{Status: "running", Copied: 3 << 30, Total: 8 << 30}
			vm.LastDiskMove = &admin.DiskMoveResult{ID: 1400, Disk: 1, From: "nbd://10.0.0.9:10809/data", To: "web-data", Result: "completed",
				Bytes: 2 << 30, Copy: 12 * time.Second, Pivot: 31 * time.Millisecond, Finished: testVM.Created}
			return renderVM(w, vm)
		}},
		{"migration-progress", func(w io.Writer) error {
			vm := testVM
			vm.Migration = &admin.Migration{From: "n1", To: "n2", Epoch: 61, Phase: "ready"}
			vm.Runtime.Migration = &admin.MigrationProgress{Status: "active", Transferred: 96 << 20, Total: 128 << 20, Passes: 2, ExpectedDowntime: 12 * time.Millisecond}
			_, err := io.WriteString(w, progressLine(vm)+"\n")
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := tt.render(&buf); err != nil {
				t.Fatal(err)
			}
			checkGolden(t, filepath.Join("testdata", "render", tt.name+".golden"), buf.Bytes())
		})
	}
}

// checkGolden compares got with the golden file, or rewrites it with
// -update.
func checkGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *updateGolden {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s (go test -update rewrites it):\n--- got\n%s--- want\n%s", path, got, want)
	}
}

func TestHumanSize(t *testing.T) {
	tests := []struct {
		n    int64
		want string
	}{
		{-1, "-"},
		{0, "0B"},
		{1, "1B"},
		{1023, "1023B"},
		{1024, "1KiB"},
		{1536, "1.5KiB"},
		{4097, "4.0KiB"},
		{20 << 30, "20GiB"},
		{1536 << 20, "1.5GiB"},
		{1<<30 - 1, "1.0GiB"},
		{1<<20 - 1, "1.0MiB"},
		{2 << 40, "2TiB"},
		{812345678901, "756.6GiB"},
		{1 << 62, "4EiB"},
		{1<<63 - 1, "8.0EiB"},
	}
	for _, tt := range tests {
		if got := humanSize(tt.n); got != tt.want {
			t.Errorf("humanSize(%d) = %q, want %q", tt.n, got, tt.want)
		}
	}
}
