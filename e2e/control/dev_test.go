package control

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testbin"
)

// TestDevCluster runs "tandem dev" (what "make run" starts) on free ports:
// it prints vol0's URI and the admin token once vol0 is served, writes
// the token to <data>/admin-token, serves vol0 on every host, and takes
// CLI commands with that token. A restart keeps the data and the token.
func TestDevCluster(t *testing.T) {
	testbin.Require(t, "qemu-io")
	data := t.TempDir()
	// Replication addresses are part of each raft group's configuration:
	// they must stay the same across restarts (the other ports may move).
	raftPort := freePortOnAll(t, "127.0.0.1", "127.0.0.2", "127.0.0.3")
	// tandem dev picks free ports for its admin and gossip listeners and
	// binds them a moment later: a port another test took meanwhile makes
	// it exit at start, and it is started again.
	var run func() (uri, admin, token string, stop func())
	attempts := 0
	run = func() (uri, admin, token string, stop func()) {
		attempts++
		cmd := exec.Command(testbin.Binary(t), "dev", "--data", data, "--size", "64M",
			"--nbd-listen", "127.0.0.1:0", "--raft-port", strconv.Itoa(raftPort), "--admin-port", "0", "--gossip-port", "0")
		cmd.Env = testbin.CleanEnv()
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var logs strings.Builder
		cmd.Stderr = &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		stop = func() {
			cmd.Process.Signal(syscall.SIGINT)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("tandem dev exited with %v after Ctrl-C", err)
				}
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				t.Errorf("tandem dev did not stop within 30 s of Ctrl-C")
			}
		}
		lines := make(chan string)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		uriRE := regexp.MustCompile(`^\s+(nbd://127\.0\.0\.1:\d+/vol0)$`)
		envRE := regexp.MustCompile(`export TANDEM_ADMIN=(\S+) TANDEM_ADMIN_TOKEN=(\S+)`)
		timeout := time.After(60 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					cmd.Wait() // stderr is copied in full
					if strings.Contains(logs.String(), "address already in use") && attempts < 3 {
						t.Logf("tandem dev could not bind a port it picked; starting it again")
						return run()
					}
					t.Fatalf("tandem dev stopped before it was ready:\n%s", logs.String())
				}
				if m := uriRE.FindStringSubmatch(l); m != nil && uri == "" {
					uri = m[1]
				}
				if m := envRE.FindStringSubmatch(l); m != nil {
					admin, token = m[1], m[2]
				}
				if strings.Contains(l, "Press Ctrl-C") {
					go func() {
						for range lines {
						}
					}()
					if uri == "" || token == "" {
						t.Fatalf("tandem dev printed no URI or token")
					}
					return uri, admin, token, stop
				}
			case <-timeout:
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("tandem dev not ready within 60 s:\n%s", logs.String())
			}
		}
	}
	uri, adminAddr, token, stop := run()
	b, err := os.ReadFile(filepath.Join(data, "admin-token"))
	if err != nil || strings.TrimSpace(string(b)) != token {
		t.Fatalf("admin-token file: %q, %v; printed token %q", b, err, token)
	}
	testbin.Run(t, 30*time.Second, "qemu-io", "-f", "raw", "-c", "write -P 0xab 0 1M", "-c", "read -P 0xab 0 1M", uri)
	cliDev := func(args ...string) string {
		cmd := exec.Command(testbin.Binary(t), append(args, "--admin", adminAddr, "--token-file", filepath.Join(data, "admin-token"))...)
		cmd.Env = testbin.CleanEnv()
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("tandem %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	cliDev("volume", "create", "vol1", "--size", "16M")
	if out := cliDev("volume", "list"); !strings.Contains(out, "vol0") || !strings.Contains(out, "vol1") {
		t.Fatalf("volume list:\n%s", out)
	}
	stop()

	uri2, _, token2, stop2 := run()
	defer stop2()
	if token2 != token {
		t.Errorf("the token changed across a restart: %q then %q", token, token2)
	}
	testbin.Run(t, 30*time.Second, "qemu-io", "-f", "raw", "-c", "read -P 0xab 0 1M", uri2)
}

// freePortOnAll returns a TCP port free on every one of ips.
func freePortOnAll(t *testing.T, ips ...string) int {
	t.Helper()
	for range 100 {
		l, err := net.Listen("tcp", ips[0]+":0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		ok := true
		for _, ip := range ips[1:] {
			l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
			if err != nil {
				ok = false
				break
			}
			l.Close()
		}
		if ok {
			return port
		}
	}
	t.Fatal("no port free on every address")
	return 0
}
