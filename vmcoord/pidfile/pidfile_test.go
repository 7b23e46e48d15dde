package pidfile

import (
	"log/slog"
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
