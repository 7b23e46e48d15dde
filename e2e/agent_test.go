package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testbin"
)

// TestAgentUnixSocket serves a volume on a unix socket (next to the TCP
// listener) and uses it with qemu-io and nbdinfo; data written through the
// socket is seen through TCP.
func TestAgentUnixSocket(t *testing.T) {
	t.Parallel()
	testbin.Require(t, "qemu-io", "nbdinfo")
	sock := filepath.Join(shortDir(t), "nbd.sock")
	dir := t.TempDir()
	args := []string{"--nbd-socket", sock, "--volume", "vol0=8M"}
	a := testbin.StartAgent(t, dir, args...)
	uri := unixURI(sock, "vol0")
	qemuIO(t, uri, "write -P 0x3c 1M 1M", "flush", "read -P 0x3c 1M 1M", "read -P 0 0 1M")
	qemuIO(t, a.URI("vol0"), "read -P 0x3c 1M 1M")
	if out := strings.TrimSpace(testbin.Run(t, toolTimeout, "nbdinfo", "--size", uri)); out != fmt.Sprint(8*mib) {
		t.Errorf("nbdinfo --size %s = %q, want %d", uri, out, 8*mib)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket %s: %v %v", sock, fi, err)
	}

	// kill -9 leaves the socket file behind; a new agent must take over
	// the path.
	a.Kill()
	if _, err := os.Stat(sock); err != nil {
		t.Logf("socket file gone after kill -9: %v", err)
	}
	b := testbin.StartAgent(t, dir, args...)
	qemuIO(t, uri, "read -P 0x3c 1M 1M")
	b.Stop(10 * time.Second)
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket file %s still exists after a clean stop: %v", sock, err)
	}
}

// TestAgentReadOnlyVolumeMissing declares a read-only volume whose file does
// not exist: the agent refuses to start, naming the volume and the reason,
// rather than serve an empty disk (most likely a wrong --data).
func TestAgentReadOnlyVolumeMissing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out, err := testbin.RunErr(10*time.Second, testbin.Binary(t), "agent", "--data", dir,
		"--nbd-listen", "127.0.0.1:0", "--volume", "iso=1M,ro")
	if err == nil || strings.Contains(err.Error(), "timed out") {
		t.Fatalf("agent with a missing read-only volume: %v\n%s", err, out)
	}
	for _, want := range []string{"iso", "read-only", "does not exist"} {
		if !strings.Contains(out, want) {
			t.Errorf("error does not mention %q:\n%s", want, out)
		}
	}
}

// TestAgentDataDirLocked: a second agent on the same data directory is
// refused while the first runs (two writers of one volume file would
// corrupt it), and starts once the first was killed.
func TestAgentDataDirLocked(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a := testbin.StartAgent(t, dir, "--volume", "vol0=1M")
	out, err := testbin.RunErr(10*time.Second, testbin.Binary(t), "agent", "--data", dir,
		"--nbd-listen", "127.0.0.1:0", "--volume", "vol0=1M")
	if err == nil || strings.Contains(err.Error(), "timed out") {
		t.Fatalf("second agent on the same data directory: %v\n%s", err, out)
	}
	if !strings.Contains(out, "in use by another agent") {
		t.Errorf("error does not say the directory is in use:\n%s", out)
	}
	a.Kill()
	testbin.StartAgent(t, dir, "--volume", "vol0=1M")
}

// TestAgentFailedCreateLeavesNothing: a volume that cannot be created (too
// large for the filesystem) is refused and leaves no file behind.
func TestAgentFailedCreateLeavesNothing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out, err := testbin.RunErr(10*time.Second, testbin.Binary(t), "agent", "--data", dir,
		"--nbd-listen", "127.0.0.1:0", "--volume", "huge=1P")
	if err == nil || strings.Contains(err.Error(), "timed out") {
		t.Fatalf("agent with a 1 PiB volume: %v\n%s", err, out)
	}
	if _, err := os.Stat(volumePath(dir, "huge")); !os.IsNotExist(err) {
		t.Errorf("a failed volume creation left %s behind (%v)", volumePath(dir, "huge"), err)
	}
}

// TestAgentDefaultExport reaches the volume named by --default-export with
// the empty export name, and only that volume.
func TestAgentDefaultExport(t *testing.T) {
	t.Parallel()
	testbin.Require(t, "qemu-io", "nbdinfo")
	a := startAgent(t, "--volume", "other=4M", "--volume", "vol0=8M", "--default-export", "vol0")
	empty := "nbd://" + a.NBDAddr // no export name
	if out := strings.TrimSpace(testbin.Run(t, toolTimeout, "nbdinfo", "--size", empty)); out != fmt.Sprint(8*mib) {
		t.Errorf("nbdinfo --size %s = %q, want the size of vol0 (%d)", empty, out, 8*mib)
	}
	out := testbin.Run(t, toolTimeout, "nbdinfo", empty)
	if !strings.Contains(out, "tandem volume vol0") {
		t.Errorf("nbdinfo %s does not describe vol0:\n%s", empty, out)
	}
	qemuIO(t, empty+"/", "write -P 0x42 0 64k")
	qemuIO(t, a.URI("vol0"), "read -P 0x42 0 64k")
	qemuIO(t, a.URI("other"), "read -P 0 0 64k")
}

// TestAgentNoDefaultExport: without --default-export the empty export name
// is refused.
func TestAgentNoDefaultExport(t *testing.T) {
	t.Parallel()
	testbin.Require(t, "nbdinfo")
	a := startAgent(t, "--volume", "vol0=1M")
	code, out := exitCode(t, "nbdinfo", "nbd://"+a.NBDAddr)
	if code == 0 {
		t.Errorf("nbdinfo with the empty export name succeeded without a default export:\n%s", out)
	}
}

// TestAgentUnknownExport asks for an export that does not exist: the
// clients fail and say why.
func TestAgentUnknownExport(t *testing.T) {
	t.Parallel()
	testbin.Require(t, "qemu-io", "nbdinfo")
	a := startAgent(t, "--volume", "vol0=1M")
	uri := a.URI("nope")
	out := qemuIOFails(t, uri, "read 0 4k")
	if !strings.Contains(out, `export "nope" not found`) {
		t.Errorf("qemu-io on an unknown export: want the server's message naming the export, got:\n%s", out)
	}
	code, out := exitCode(t, "nbdinfo", uri)
	if code == 0 || !strings.Contains(out, "nope") {
		t.Errorf("nbdinfo on an unknown export: exit %d, want a failure naming the export:\n%s", code, out)
	}
	// The server survives and still serves the real export.
	if out := strings.TrimSpace(testbin.Run(t, toolTimeout, "nbdinfo", "--size", a.URI("vol0"))); out != fmt.Sprint(1*mib) {
		t.Errorf("nbdinfo --size vol0 after the refusal = %q", out)
	}
}

// TestAgentRestartKeepsData writes data, restarts the agent on the same data
// directory (after SIGTERM, and after kill -9 following a flush) and reads
// the data back.
func TestAgentRestartKeepsData(t *testing.T) {
	t.Parallel()
	testbin.Require(t, "qemu-io")
	for _, c := range []struct {
		name string
		stop func(*testbin.Agent)
	}{
		{"SIGTERM", func(a *testbin.Agent) { a.Stop(10 * time.Second) }},
		{"kill -9 after flush", func(a *testbin.Agent) { a.Kill() }},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			args := []string{"--volume", "vol0=16M", "--volume", "vol1=4M"}
			a := testbin.StartAgent(t, dir, args...)
			qemuIO(t, a.URI("vol0"),
				"write -P 0x61 0 1M",
				"write -f -P 0x62 5M 4k",
				"write -P 0x63 15M 1M",
				"discard 0 64k",
				"flush")
			qemuIO(t, a.URI("vol1"), "write -P 0x64 1000 10", "flush")
			c.stop(a)
			if !a.Exited() {
				t.Fatal("agent still running")
			}
			b := testbin.StartAgent(t, dir, args...)
			qemuIO(t, b.URI("vol0"),
				"read -P 0 0 64k",
				"read -P 0x61 64k 960k",
				"read -P 0 1M 4M",
				"read -P 0x62 5M 4k",
				"read -P 0x63 15M 1M")
			qemuIO(t, b.URI("vol1"), "read -P 0 0 1000", "read -P 0x64 1000 10", "read -P 0 1010 4k")
		})
	}
}

// TestAgentStopsWhileIdle checks SIGTERM with no client at all.
func TestAgentStopsWhileIdle(t *testing.T) {
	t.Parallel()
	a := startAgent(t, "--volume", "vol0=1M")
	start := time.Now()
	a.Stop(5 * time.Second)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("agent took %v to stop", d)
	}
}

// TestAgentVolumeSize: declaring a larger size grows an existing volume
// (keeping its data, the new part reading as zeroes); declaring a smaller
// one is refused with a clear error and leaves the file alone.
func TestAgentVolumeSize(t *testing.T) {
	t.Parallel()
	testbin.Require(t, "qemu-io", "nbdinfo")
	dir := t.TempDir()
	a := testbin.StartAgent(t, dir, "--volume", "vol0=1M")
	qemuIO(t, a.URI("vol0"), "write -P 0x99 0 1M", "flush")
	a.Stop(10 * time.Second)

	b := testbin.StartAgent(t, dir, "--volume", "vol0=3M")
	if out := strings.TrimSpace(testbin.Run(t, toolTimeout, "nbdinfo", "--size", b.URI("vol0"))); out != fmt.Sprint(3*mib) {
		t.Errorf("size after growing to 3M: %q, want %d", out, 3*mib)
	}
	qemuIO(t, b.URI("vol0"), "read -P 0x99 0 1M", "read -P 0 1M 2M", "write -P 0x98 2M 1M", "read -P 0x98 2M 1M")
	b.Stop(10 * time.Second)

	out, err := testbin.RunErr(30*time.Second, testbin.Binary(t), "agent", "--data", dir,
		"--nbd-listen", "127.0.0.1:0", "--volume", "vol0=2M")
	if err == nil {
		t.Fatalf("agent started with vol0 shrunk from 3M to 2M:\n%s", out)
	}
	for _, want := range []string{"vol0", "never shrink"} {
		if !strings.Contains(out, want) {
			t.Errorf("error for a smaller volume size does not mention %q:\n%s", want, out)
		}
	}
	if fi, err := os.Stat(volumePath(dir, "vol0")); err != nil || fi.Size() != 3*mib {
		t.Errorf("volume file after the refused shrink: %v %v, want %d bytes", fi.Size(), err, 3*mib)
	}
}

// TestAgentCLIErrors runs the agent with bad command lines: each must exit
// non-zero at once with a message naming the problem.
func TestAgentCLIErrors(t *testing.T) {
	t.Parallel()
	bin := testbin.Binary(t)
	for _, c := range []struct {
		name string
		args []string // after "agent"; --data is added unless noData
		want []string // substrings of the error output
	}{
		{"bad volume name", []string{"--volume", "bad/name=1G"}, []string{`invalid volume name "bad/name"`}},
		{"uppercase volume name", []string{"--volume", "Vol=1G"}, []string{`invalid volume name "Vol"`}},
		{"bad size suffix", []string{"--volume", "x=12Q"}, []string{`invalid size "12Q"`}},
		{"empty size", []string{"--volume", "x="}, []string{`invalid size ""`}},
		{"no size", []string{"--volume", "x"}, []string{`--volume "x"`, "NAME=SIZE"}},
		{"zero size", []string{"--volume", "x=0"}, []string{`"x"`, "size must be positive"}},
		{"unknown volume option", []string{"--volume", "x=1G,rw"}, []string{`unknown option "rw"`}},
		{"duplicate volume", []string{"--volume", "x=1G", "--volume", "x=2G"}, []string{`"x" declared twice`}},
		{"volume both local and replicated", []string{"--volume", "x=1G", "--volume", "x=1G,local"}, []string{`"x" declared twice`}},
		{"local volume with replicas", []string{"--volume", "x=1G,local,replicas=n1+n2"}, []string{"a local volume has no replicas"}},
		{"local volume read-only, missing", []string{"--volume", "x=1G,ro,local"}, []string{"declared read-only", "does not exist"}},
		{"no volumes", nil, []string{"no volumes"}},
		{"unknown default export", []string{"--volume", "x=1G", "--default-export", "y"}, []string{`default export "y"`}},
		{"no listener", []string{"--volume", "x=1G", "--nbd-listen", ""}, []string{"no NBD listener"}},
		{"replication address, no peers", []string{"--volume", "x=1G", "--raft-listen", "127.0.0.1:0"}, []string{"--raft-listen", "no hosts to replicate with", "--peer"}},
		{"bad checkpoint bytes", []string{"--volume", "x=1G", "--checkpoint-bytes", "lots"}, []string{"--checkpoint-bytes", `invalid size "lots"`}},
		{"negative replica retry", []string{"--volume", "x=1G", "--replica-retry", "-1s"}, []string{"replica retry must not be negative", "-1s"}},
		{"bad disk reserve", []string{"--volume", "x=1G", "--disk-reserve", "lots"}, []string{"--disk-reserve", `invalid size "lots"`}},
		{"unknown flag", []string{"--volume", "x=1G", "--bogus"}, []string{"unknown flag: --bogus"}},
		{"bad log level", []string{"--volume", "x=1G", "--log-level", "loud"}, []string{`--log-level "loud"`}},
		{"missing --data", []string{"--volume", "x=1G"}, []string{"data directory is required"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"agent"}, c.args...)
			if c.name != "missing --data" {
				args = append(args, "--data", t.TempDir())
			}
			if c.name != "no listener" {
				args = append(args, "--nbd-listen", "127.0.0.1:0")
			}
			// A command line that is wrongly accepted makes the agent
			// serve until the timeout.
			out, err := testbin.RunErr(15*time.Second, bin, args...)
			if err == nil {
				t.Fatalf("tandem %s succeeded:\n%s", strings.Join(args, " "), out)
			}
			if strings.Contains(err.Error(), "timed out") {
				t.Fatalf("tandem %s did not exit: %v\n%s", strings.Join(args, " "), err, out)
			}
			for _, w := range c.want {
				if !strings.Contains(out, w) {
					t.Errorf("tandem %s: error output lacks %q:\n%s", strings.Join(args, " "), w, out)
				}
			}
			if strings.Contains(out, "serving NBD") {
				t.Errorf("tandem %s started serving:\n%s", strings.Join(args, " "), out)
			}
		})
	}
}
