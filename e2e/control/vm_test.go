package control

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/internal/testbin"
)

// showVM runs "tandem vm show NAME -o json" against agent i.
func showVM(t *testing.T, c *testbin.Cluster, i int, name string) admin.VM {
	t.Helper()
	var vm admin.VM
	out := mustCLI(t, c, i, "vm", "show", name, "-o", "json")
	if err := json.Unmarshal([]byte(out), &vm); err != nil {
		t.Fatalf("vm show -o json: %v\n%s", err, out)
	}
	return vm
}

// runsOnlyOn reports an error unless host (none if "") is the only agent
// running a QEMU for VM name, under epoch, in state running.
func runsOnlyOn(c *testbin.Cluster, name, host string, epoch uint64) error {
	for i, n := range c.Nodes {
		var local []admin.LocalVM
		if err := getJSON(n.AdminAddr, "/v1/local/vms", &local); err != nil {
			return err
		}
		var mine *admin.LocalVM
		for _, l := range local {
			if l.Name == name && l.PID != 0 {
				mine = &l
			}
		}
		switch {
		case n.Name == host && (mine == nil || mine.State != "running" || mine.Epoch != epoch):
			return fmt.Errorf("n%d (the VM's host) reports %+v", i+1, local)
		case n.Name != host && mine != nil:
			return fmt.Errorf("n%d runs the VM too: %+v", i+1, *mine)
		}
	}
	return nil
}

// refused runs the CLI and checks that it fails with each of wants in its
// output.
func refused(t *testing.T, c *testbin.Cluster, i int, wants []string, args ...string) {
	t.Helper()
	out, err := cli(t, c, i, args...)
	if err == nil {
		t.Errorf("tandem %s succeeded:\n%s", strings.Join(args, " "), out)
		return
	}
	for _, w := range wants {
		if !strings.Contains(out, w) {
			t.Errorf("tandem %s: output lacks %q:\n%s", strings.Join(args, " "), w, out)
		}
	}
}

// TestVMLifecycle creates, starts, stops and deletes a VM through the CLI
// of different agents of a 3-agent cluster, checks the catalog's writer
// epochs on the VM and on its disks, and the refusals: a disk in use, a
// running VM, an unknown disk or host, bad shapes, a missing token, a
// host that is not alive. No agent runs QEMU yet: the runtime is absent.
func TestVMLifecycle(t *testing.T) {
	testbin.Require(t, "qemu-system-x86_64")
	c := startManaged(t, 3)
	for i, d := range []string{"web-root", "web-data", "spare"} {
		mustCLI(t, c, i, "volume", "create", d, "--size", "8M")
	}

	out := mustCLI(t, c, 1, "vm", "create", "web", "--disk", "web-root", "--disk", "web-data", "--vcpus", "2", "--memory", "128M")
	if !strings.Contains(out, "Created VM web") {
		t.Fatalf("vm create printed:\n%s", out)
	}
	vm := showVM(t, c, 2, "web")
	if vm.State != admin.VMStopped || vm.Host != "" || vm.Epoch != 0 || vm.VCPUs != 2 || vm.MemoryMiB != 128 ||
		vm.Boot.Kind != admin.BootDisk || vm.ID == 0 || vm.Runtime.State != admin.VMAbsent ||
		!slices.Equal(diskNames(vm), []string{"web-root", "web-data"}) {
		t.Fatalf("created VM: %+v", vm)
	}
	for _, d := range vm.Disks {
		if d.WriterEpoch != 0 || d.WriterGen != 0 {
			t.Fatalf("disk of a new VM: %+v", d)
		}
	}

	// Refusals of create: a disk in use, an unknown disk, a taken name,
	// bad shapes (the CLI checks them first, the API again).
	refused(t, c, 0, []string{"409 Conflict", `disk "web-data": in use as a disk of VM "web"`}, "vm", "create", "db", "--disk", "spare", "--disk", "web-data")
	refused(t, c, 0, []string{"400 Bad Request", `disk "nope": not found: no such volume`}, "vm", "create", "db", "--disk", "nope")
	refused(t, c, 2, []string{"409 Conflict", `VM "web": already exists`}, "vm", "create", "web", "--disk", "spare")
	refused(t, c, 0, []string{"--memory 8M: want whole MiB from 16MiB to 64GiB"}, "vm", "create", "db", "--disk", "spare", "--memory", "8M")
	refused(t, c, 0, []string{"--vcpus 17: want 1 to 16"}, "vm", "create", "db", "--disk", "spare", "--vcpus", "17")
	base := "http://" + c.Nodes[1].AdminAddr
	bad := []struct {
		name, body string
		want       int
		msg        string
	}{
		{"memory too small", `{"name":"db","disks":["spare"],"memory":"8M"}`, 400, "memory 8MiB, want 16MiB to 64GiB"},
		{"memory too large", `{"name":"db","disks":["spare"],"memory":"65G"}`, 400, "want 16MiB to 64GiB"},
		{"memory not whole MiB", `{"name":"db","disks":["spare"],"memory":"1000K"}`, 400, "not a whole number of MiB"},
		{"memory not a size", `{"name":"db","disks":["spare"],"memory":"lots"}`, 400, `invalid size "lots"`},
		{"17 vcpus", `{"name":"db","disks":["spare"],"vcpus":17}`, 400, "vcpus 17, want 1 to 16"},
		{"negative vcpus", `{"name":"db","disks":["spare"],"vcpus":-1}`, 400, "vcpus -1"},
		{"no disks", `{"name":"db","disks":[]}`, 400, "0 disks"},
		{"disk twice", `{"name":"db","disks":["spare","spare"]}`, 400, "listed twice"},
		{"bad name", `{"name":"DB","disks":["spare"]}`, 400, `invalid VM name "DB"`},
		{"bad boot kind", `{"name":"db","disks":["spare"],"boot":{"kind":"floppy"}}`, 400, `boot kind "floppy"`},
		{"relative kernel", `{"name":"db","disks":["spare"],"boot":{"kind":"kernel","kernel":"vmlinuz"}}`, 400, "absolute path"},
		{"unknown field", `{"name":"db","disks":["spare"],"cpus":2}`, 400, `unknown field "cpus"`},
		{"disk in use", `{"name":"db","disks":["web-root"]}`, 409, "in use"},
	}
	for _, b := range bad {
		if code, msg := do(t, "POST", base+"/v1/vms", c.Token, b.body); code != b.want || !strings.Contains(msg, b.msg) {
			t.Errorf("create, %s: %d %q, want %d %q", b.name, code, msg, b.want, b.msg)
		}
	}
	// Every change needs the token.
	for _, ch := range []struct{ method, path, body string }{
		{"POST", "/v1/vms", `{"name":"db","disks":["spare"]}`},
		{"POST", "/v1/vms/web/start", ``},
		{"POST", "/v1/vms/web/stop", ``},
		{"DELETE", "/v1/vms/web", ``},
	} {
		if code, msg := do(t, ch.method, base+ch.path, c.Token+"x", ch.body); code != http.StatusUnauthorized || msg == "" {
			t.Errorf("%s %s with a wrong token: %d %q", ch.method, ch.path, code, msg)
		}
	}

	// A VM's disk cannot be deleted, even with --force.
	refused(t, c, 0, []string{"409 Conflict", `volume "web-data": in use as a disk of VM "web" (delete the VM first)`}, "volume", "delete", "web-data")
	refused(t, c, 1, []string{"409 Conflict", "in use as a disk of VM"}, "volume", "delete", "web-data", "--force")

	// Start without a host: on the preferred leader of the first disk.
	// The VM's epoch is the start's catalog index, and it is its disks'
	// writer epoch.
	root := showVolume(t, c, 0, "web-root")
	out = mustCLI(t, c, 2, "vm", "start", "web")
	if !strings.Contains(out, "Started VM web on "+root.PreferredLeader) {
		t.Fatalf("vm start printed:\n%s", out)
	}
	vm = showVM(t, c, 0, "web")
	epoch := vm.Epoch
	if vm.State != admin.VMRunning || vm.Host != root.PreferredLeader || epoch <= vm.ID || vm.Changed != epoch {
		t.Fatalf("started VM: %+v", vm)
	}
	checkWriters(t, c, vm, epoch, epoch)
	if v := showVolume(t, c, 1, "spare"); v.VM != "" || v.WriterEpoch != 0 || v.WriterGen != 0 {
		t.Fatalf("a volume of no VM: vm %q writer %d/%d", v.VM, v.WriterEpoch, v.WriterGen)
	}
	// The VM's host runs it in QEMU under its epoch; no other host does.
	waitFor(t, 30*time.Second, "QEMU running the VM on its host", func() error {
		return runsOnlyOn(c, "web", vm.Host, epoch)
	})
	if out := mustCLI(t, c, 1, "vm", "list"); !strings.Contains(out, "web") || !strings.Contains(out, fmt.Sprint(epoch)) {
		t.Fatalf("vm list:\n%s", out)
	}

	refused(t, c, 1, []string{"409 Conflict", "already running on " + vm.Host}, "vm", "start", "web", "--host", "n1")
	refused(t, c, 0, []string{"409 Conflict", `VM "web": running on ` + vm.Host + " (stop it first)"}, "vm", "delete", "web")

	// Stop: the epoch ends; the disks' writer goes back to 0, set by the
	// stop's index.
	mustCLI(t, c, 0, "vm", "stop", "web")
	vm = showVM(t, c, 1, "web")
	if vm.State != admin.VMStopped || vm.Epoch != 0 || vm.Host != root.PreferredLeader || vm.Changed <= epoch {
		t.Fatalf("stopped VM: %+v", vm)
	}
	checkWriters(t, c, vm, 0, vm.Changed)
	waitFor(t, 30*time.Second, "QEMU of the VM stopped", func() error { return runsOnlyOn(c, "web", "", 0) })
	refused(t, c, 2, []string{"409 Conflict", `VM "web": already stopped`}, "vm", "stop", "web")
	if code, msg := do(t, "POST", base+"/v1/vms/web/start", c.Token, `{"host":"n9"}`); code != http.StatusBadRequest || !strings.Contains(msg, `host "n9" is not a host of the cluster`) {
		t.Errorf("start on an unknown host: %d %q", code, msg)
	}
	refused(t, c, 0, []string{"404 Not Found", `no VM named "nope"`}, "vm", "start", "nope")

	// Start elsewhere: a newer epoch.
	other := "n3"
	if root.PreferredLeader == other {
		other = "n1"
	}
	mustCLI(t, c, 1, "vm", "start", "web", "--host", other)
	vm = showVM(t, c, 2, "web")
	if vm.State != admin.VMRunning || vm.Host != other || vm.Epoch <= epoch {
		t.Fatalf("VM started on %s: %+v", other, vm)
	}
	checkWriters(t, c, vm, vm.Epoch, vm.Epoch)

	// Stop and delete: the disks are free again, and deletable.
	mustCLI(t, c, 2, "vm", "stop", "web")
	mustCLI(t, c, 0, "vm", "delete", "web")
	refused(t, c, 1, []string{"404 Not Found"}, "vm", "show", "web")
	if out := mustCLI(t, c, 0, "vm", "list"); !strings.Contains(out, "No VMs.") {
		t.Fatalf("vm list after the delete:\n%s", out)
	}
	if v := showVolume(t, c, 0, "web-data"); v.VM != "" || v.WriterEpoch != 0 || v.WriterGen == 0 {
		t.Fatalf("disk of a deleted VM: vm %q writer %d/%d", v.VM, v.WriterEpoch, v.WriterGen)
	}
	mustCLI(t, c, 1, "volume", "delete", "web-data")

	// A host that is not alive is refused, asked for or by default.
	mustCLI(t, c, 0, "vm", "create", "db", "--disk", "spare", "--disk", "web-root")
	var st admin.ClusterStatus
	if err := getJSON(c.Nodes[0].AdminAddr, "/v1/cluster", &st); err != nil {
		t.Fatal(err)
	}
	dead := slices.IndexFunc(c.Nodes, func(n *testbin.Node) bool { return n.Name != st.ControlLeader })
	ask := slices.IndexFunc(c.Nodes, func(n *testbin.Node) bool { return n.Name == st.ControlLeader })
	c.Kill(dead)
	waitFor(t, 20*time.Second, "the killed host to be marked failed", func() error {
		var hs []admin.Host
		if err := getJSON(c.Nodes[ask].AdminAddr, "/v1/hosts", &hs); err != nil {
			return err
		}
		for _, h := range hs {
			if h.Name == c.Nodes[dead].Name && h.State != admin.HostFailed {
				return fmt.Errorf("%s is %s", h.Name, h.State)
			}
		}
		return nil
	})
	refused(t, c, ask, []string{"409 Conflict", "host " + c.Nodes[dead].Name + " is failed"}, "vm", "start", "db", "--host", c.Nodes[dead].Name)
	mustCLI(t, c, ask, "vm", "start", "db", "--host", st.ControlLeader)
	if vm := showVM(t, c, ask, "db"); vm.Host != st.ControlLeader || vm.State != admin.VMRunning {
		t.Fatalf("VM started with a host down: %+v", vm)
	}
}

func diskNames(vm admin.VM) []string {
	var names []string
	for _, d := range vm.Disks {
		names = append(names, d.Volume)
	}
	return names
}

// checkWriters checks a VM's disks' writer fields, in the VM's body and
// in the volumes' own.
func checkWriters(t *testing.T, c *testbin.Cluster, vm admin.VM, epoch, gen uint64) {
	t.Helper()
	for _, d := range vm.Disks {
		if d.WriterEpoch != epoch || d.WriterGen != gen {
			t.Errorf("VM %s, disk %s: writer %d/%d, want %d/%d", vm.Name, d.Volume, d.WriterEpoch, d.WriterGen, epoch, gen)
		}
		v := showVolume(t, c, 0, d.Volume)
		if v.VM != vm.Name || v.WriterEpoch != epoch || v.WriterGen != gen {
			t.Errorf("volume %s: vm %q writer %d/%d, want %q %d/%d", d.Volume, v.VM, v.WriterEpoch, v.WriterGen, vm.Name, epoch, gen)
		}
	}
}
