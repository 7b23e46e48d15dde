package pidfile

import (
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// TestKillLeftovers kills a process whose command line names its run
// directory, and spares one that does not (its pid was reused).
func TestKillLeftovers(t *testing.T) {
	dir := t.TempDir()
	start := func(name string, args ...string) *exec.Cmd {
		run := filepath.Join(dir, name)
		if err := os.MkdirAll(run, 0o700); err != nil {
			t.Fatal(err)
		}
		for i, a := range args {
			if a == "RUN" {
				args[i] = run
			}
		}
		cmd := exec.Command(args[0], args[1:]...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		if err := Write(run, cmd.Process.Pid); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	left := start("vm1", "sh", "-c", "sleep 60", "RUN")
	other := start("vm2", "sleep", "60")
	exited := make(chan error, 1)
	go func() { exited <- left.Wait() }()
	if err := KillLeftovers(dir, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	if err := <-exited; err == nil {
		t.Fatal("the leftover exited cleanly: it was not killed")
	}
	if _, err := os.Stat(filepath.Join(dir, "vm1", Name)); !os.IsNotExist(err) {
		t.Fatalf("the leftover's pid file stays: %v", err)
	}
	if err := syscall.Kill(other.Process.Pid, 0); err != nil {
		t.Fatal("a process whose command line does not name its run directory was killed")
	}
	if err := KillLeftovers(filepath.Join(dir, "none"), slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("no run directory at all: %v", err)
	}
}

// TestKillWaitsForExit checks that Kill returns only once the process has
// exited with its files closed: a new QEMU must be able to listen on the
// run directory's QMP socket at once (the command line, which a naive wait
// would watch, vanishes earlier, while the process still tears down).
func TestKillWaitsForExit(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed")
	}
	const listen = `import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen()
b = bytearray(256 << 20)  # an address space that takes a while to tear down
for i in range(0, len(b), 4096): b[i] = 1
print("ready", flush=True)
time.sleep(60)
`
	for i := range 5 {
		run := filepath.Join(t.TempDir(), "vm")
		if err := os.MkdirAll(run, 0o700); err != nil {
			t.Fatal(err)
		}
		sock := filepath.Join(run, "qmp.sock")
		cmd := exec.Command(py, "-c", listen, sock)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		if _, err := out.Read(make([]byte, 6)); err != nil {
			t.Fatalf("the listener did not start: %v", err)
		}
		if err := Write(run, cmd.Process.Pid); err != nil {
			t.Fatal(err)
		}
		if err := Kill(run, slog.New(slog.DiscardHandler)); err != nil {
			t.Fatal(err)
		}
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			t.Fatalf("round %d: the socket still accepts connections after Kill returned", i)
		}
	}
}
