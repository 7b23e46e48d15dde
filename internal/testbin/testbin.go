// Package testbin builds the tandem binary once per test process and runs it
// as a child process, for end-to-end tests that drive it with real NBD
// clients (qemu-io, nbdinfo, nbdsh, fio, QEMU).
package testbin

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// removeStaleBuilds removes the binaries that test processes no longer
// running built (each builds its own in a directory named after its pid,
// and nothing runs when it exits to remove it).
func removeStaleBuilds(tmp string) {
	dirs, _ := filepath.Glob(filepath.Join(tmp, "tandem-testbin-*"))
	for _, d := range dirs {
		var pid int
		if _, err := fmt.Sscanf(filepath.Base(d), "tandem-testbin-%d-", &pid); err != nil {
			// Named by an older testbin: remove it once it is old.
			if fi, err := os.Stat(d); err == nil && time.Since(fi.ModTime()) > time.Hour {
				os.RemoveAll(d)
			}
			continue
		}
		if pid > 0 && syscall.Kill(pid, 0) == syscall.ESRCH {
			os.RemoveAll(d)
		}
	}
}

// Binary returns the path of a tandem binary built from this checkout,
// building it on first use. The TANDEM_BIN environment variable overrides it.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("TANDEM_BIN"); p != "" {
		return p
	}
	buildOnce.Do(func() {
		removeStaleBuilds(os.TempDir())
		dir, err := os.MkdirTemp("", fmt.Sprintf("tandem-testbin-%d-", os.Getpid()))
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "tandem")
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		cmd := exec.Command("go", "build", "-race=false", "-o", buildPath, "./cmd/tandem")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatalf("building tandem: %v", buildErr)
	}
	return buildPath
}

// Agent is a running "tandem agent" (or "tandem dev") child process.
type Agent struct {
	t       testing.TB
	cmd     *exec.Cmd
	NBDAddr string // host:port of the NBD listener
	DataDir string
	Args    []string

	mu     sync.Mutex
	log    strings.Builder
	exited chan struct{}
	err    error
}

var serveRE = regexp.MustCompile(`msg="serving NBD" addr=(\S+)`)

// StartAgent starts "tandem agent" with args plus --data and, unless args
// has one, --nbd-listen 127.0.0.1:0. It waits until the NBD listener is up
// and stops the agent when the test ends.
func StartAgent(t testing.TB, dataDir string, args ...string) *Agent {
	t.Helper()
	full := append([]string{"agent", "--data", dataDir}, args...)
	if !hasFlag(args, "--nbd-listen") {
		full = append(full, "--nbd-listen", "127.0.0.1:0")
	}
	return Start(t, dataDir, full...)
}

func hasFlag(args []string, name string) bool {
	for _, a := range args {
		if a == name || strings.HasPrefix(a, name+"=") {
			return true
		}
	}
	return false
}

// Start runs the tandem binary with args and waits for its NBD listener.
func Start(t testing.TB, dataDir string, args ...string) *Agent {
	t.Helper()
	a := &Agent{t: t, DataDir: dataDir, Args: args, exited: make(chan struct{})}
	a.cmd = exec.Command(Binary(t), args...)
	stderr, err := a.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	a.cmd.Stdout = io.Discard
	if err := a.cmd.Start(); err != nil {
		t.Fatalf("starting tandem: %v", err)
	}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			a.mu.Lock()
			a.log.WriteString(line + "\n")
			a.mu.Unlock()
			if m := serveRE.FindStringSubmatch(line); m != nil && !strings.HasPrefix(m[1], "/") {
				select {
				case addr <- m[1]:
				default:
				}
			}
		}
	}()
	go func() {
		a.err = a.cmd.Wait()
		close(a.exited)
	}()
	t.Cleanup(func() {
		a.Kill()
		if t.Failed() {
			t.Logf("tandem log:\n%s", a.Log())
		}
	})
	select {
	case a.NBDAddr = <-addr:
	case <-a.exited:
		t.Fatalf("tandem exited before serving: %v\n%s", a.err, a.Log())
	case <-time.After(30 * time.Second):
		t.Fatalf("tandem did not start serving within 30s\n%s", a.Log())
	}
	return a
}

// URI returns the NBD URI of export on this agent.
func (a *Agent) URI(export string) string { return "nbd://" + a.NBDAddr + "/" + export }

// Log returns everything the agent wrote to stderr so far.
func (a *Agent) Log() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.log.String()
}

// Stop sends SIGTERM and waits for a clean exit, failing the test if the
// agent does not exit within the timeout or exits with an error.
func (a *Agent) Stop(timeout time.Duration) {
	a.t.Helper()
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.exited:
		if a.err != nil {
			a.t.Errorf("tandem exited with %v\n%s", a.err, a.Log())
		}
	case <-time.After(timeout):
		a.t.Errorf("tandem did not exit within %v of SIGTERM", timeout)
		a.Kill()
	}
}

// Kill sends SIGKILL (kill -9) and waits for the process to be gone.
func (a *Agent) Kill() {
	select {
	case <-a.exited:
		return
	default:
	}
	_ = a.cmd.Process.Kill()
	<-a.exited
}

// Exited reports whether the process has ended.
func (a *Agent) Exited() bool {
	select {
	case <-a.exited:
		return true
	default:
		return false
	}
}

// Run runs an external command with a timeout and returns its combined
// output, failing the test on error.
func Run(t testing.TB, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := RunErr(timeout, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// RunErr is Run without failing the test.
func RunErr(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = CleanEnv()
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %v: %w", timeout, err)
	}
	return string(out), err
}

// CleanEnv returns the environment for external tools: PATH with /usr/bin
// first, so that Debian's python3 (which has the libnbd module nbdsh
// needs) wins over any other python3 on the PATH.
func CleanEnv() []string {
	env := os.Environ()
	for i, e := range env {
		if strings.HasPrefix(e, "PATH=") {
			env[i] = "PATH=/usr/bin:/bin:/usr/sbin:/sbin:" + strings.TrimPrefix(e, "PATH=")
		}
	}
	return env
}

// Require skips the test unless every named program is on the PATH. Set
// TANDEM_REQUIRE_TOOLS=1 (as CI does) to fail instead of skipping, so a
// missing package cannot silently turn tests off.
func Require(t testing.TB, programs ...string) {
	t.Helper()
	for _, p := range programs {
		if _, err := exec.LookPath(p); err != nil {
			if os.Getenv("TANDEM_REQUIRE_TOOLS") != "" {
				t.Fatalf("%s is not installed (needed by this test); run .ci/run's apt-get install line", p)
			}
			t.Skipf("%s is not installed", p)
		}
	}
}

// MountTmpfs mounts a tmpfs of size bytes on dir (an empty directory, a
// host's data directory in tests of full disks) and unmounts it when the
// test ends. It skips the test unless it runs as root and can mount
// (fails it instead with TANDEM_REQUIRE_TOOLS set, as CI does).
func MountTmpfs(t testing.TB, dir string, size int64) {
	t.Helper()
	skip := t.Skipf
	if os.Getenv("TANDEM_REQUIRE_TOOLS") != "" {
		skip = t.Fatalf
	}
	if os.Geteuid() != 0 {
		skip("needs root to mount a tmpfs")
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "tmpfs", dir).CombinedOutput(); err != nil {
		skip("mounting a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("unmounting %s: %v: %s", dir, err, out)
		}
	})
}
