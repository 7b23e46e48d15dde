package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ProcessInfo records a process the harness started, for the report and
// for checking that it is gone.
type ProcessInfo struct {
	Name    string `json:"name"`
	PID     int    `json:"pid"`
	Command string `json:"command"`
}

// supervisor tracks the processes one Run started and stops them all,
// latest first, when the run ends.
type supervisor struct {
	mu      sync.Mutex
	stops   []func() error
	started []ProcessInfo
}

// add registers a process and how to stop it.
func (s *supervisor) add(info ProcessInfo, stop func() error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.started = append(s.started, info)
	s.stops = append(s.stops, stop)
}

// processes returns every process started so far.
func (s *supervisor) processes() []ProcessInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]ProcessInfo(nil), s.started...)
}

// stopAll stops every registered process, latest first, and returns the
// errors joined.
func (s *supervisor) stopAll() error {
	s.mu.Lock()
	stops := s.stops
	s.stops = nil
	s.mu.Unlock()
	var errs []error
	for i := len(stops) - 1; i >= 0; i-- {
		errs = append(errs, stops[i]())
	}
	return errors.Join(errs...)
}

// child is a child process started in its own process group, so that
// stopping it also stops whatever it forked, and so that a Ctrl-C in the
// terminal reaches only the harness, which then stops it in order. It is
// killed if the harness dies (Pdeathsig).
type child struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // valid once exited is closed
}

// startChild starts name with args; its stdout and stderr go to out.
func startChild(name string, out io.Writer, prog string, args ...string) (*child, error) {
	cmd := exec.Command(prog, args...)
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s (%s): %w", name, prog, err)
	}
	c := &child{name: name, cmd: cmd, exited: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.exited)
	}()
	return c, nil
}

func (c *child) info() ProcessInfo {
	return ProcessInfo{Name: c.name, PID: c.cmd.Process.Pid, Command: strings.Join(c.cmd.Args, " ")}
}

// done reports whether the process has exited.
func (c *child) done() bool {
	select {
	case <-c.exited:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group and waits up to timeout for the
// process to exit, then kills the group. An exit caused by the SIGTERM is
// not an error.
func (c *child) stop(timeout time.Duration) error {
	if c.done() {
		return nil
	}
	pid := c.cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-c.exited:
		_ = syscall.Kill(-pid, syscall.SIGKILL) // anything it left behind
		return nil
	case <-time.After(timeout):
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	<-c.exited
	return fmt.Errorf("%s (pid %d) did not exit within %v of SIGTERM: killed", c.name, pid, timeout)
}

// kill sends SIGKILL to the process alone (like a crash) and waits for it
// to be gone.
func (c *child) kill() {
	if c.done() {
		return
	}
	_ = c.cmd.Process.Kill()
	<-c.exited
}

// daemonStopper stops a daemon that detached from the harness (nbd-server
// forks into its own session): SIGTERM to its process group (it is the
// leader), then SIGKILL if it lingers.
func daemonStopper(name string, pid int, timeout time.Duration) func() error {
	return func() error {
		target := pid
		if pgid, err := syscall.Getpgid(pid); err == nil && pgid == pid {
			target = -pid
		}
		_ = syscall.Kill(target, syscall.SIGTERM)
		deadline := time.Now().Add(timeout)
		for time.Now().Before(deadline) {
			if !alive(pid) {
				return nil
			}
			time.Sleep(20 * time.Millisecond)
		}
		_ = syscall.Kill(target, syscall.SIGKILL)
		return fmt.Errorf("%s (pid %d) did not exit within %v of SIGTERM: killed", name, pid, timeout)
	}
}

// alive reports whether pid is a live process (not gone, not a zombie).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return syscall.Kill(pid, 0) == nil
	}
	// The state follows the command name in parentheses.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z' && s[i+2] != 'X'
	}
	return true
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
// Servers that cannot take a listening socket from us are started on it;
// the caller retries if another process took it in between.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitFile waits until path exists and is not empty.
func waitFile(ctx context.Context, path string, timeout time.Duration, exited <-chan struct{}) error {
	deadline := time.Now().Add(timeout)
	for {
		if fi, err := os.Stat(path); err == nil && fi.Size() > 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within %v", path, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-exited:
			return errors.New("the process exited")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// readPID reads a pid file.
func readPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("pid file %s: %w", path, err)
	}
	return pid, nil
}

// toolHelp returns what a program prints for args (its help text), or ""
// if it cannot run.
func toolHelp(ctx context.Context, prog string, args ...string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, prog, args...).CombinedOutput()
	return string(out)
}

// toolVersion returns the first line a program prints for its version
// flag, or "" if it fails.
func toolVersion(ctx context.Context, prog string, args ...string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, prog, args...).CombinedOutput()
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			return l
		}
	}
	return ""
}
