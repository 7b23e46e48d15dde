// Package deploy tests the example installation of deploy/: the three
// agent configs deploy/config/n1.yaml, n2.yaml and n3.yaml run as they
// are, on their own addresses (10.77.0.1-3), each agent in a network
// namespace of its own. Only the paths in the files change (data
// directory, NBD socket, key and token files go to temporary directories);
// names, addresses, ports and every other setting stay as written. The
// test then follows deploy/README.md: it waits for the cluster, creates a
// volume with the CLI, writes it with qemu-io through one host and reads
// it through the others.
//
// The replication port runs with mutual TLS, its certificates made by the
// openssl commands of deploy/README.md. It needs root, the ip command,
// qemu-io and openssl: it skips otherwise, and fails
// instead with TANDEM_REQUIRE_TOOLS=1. The namespaces it creates
// (tdd<random>-br, -n1, -n2, -n3) are removed when it ends.
package deploy

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/internal/testbin"
)

// pathKeys are the config keys holding paths, which the test moves to
// temporary directories. A config key with an absolute path that is not
// listed here fails the test, so that it never writes to /etc or /var.
var pathKeys = []string{"data", "nbd-socket", "gossip-key-file", "admin-token-file", "tls-cert", "tls-key", "tls-client-ca",
	"peer-tls-cert", "peer-tls-key", "peer-tls-ca", "peer-tls-crl", "admin-tls-cert", "admin-tls-key", "admin-tls-ca", "admin-tls-crl"}

// host is one host of the example cluster: its config as the test runs
// it, its namespace and its agent process.
type host struct {
	name    string
	ip      string
	ns      string
	cfg     map[string]string // scalar settings of the rewritten config
	cfgPath string
	adminCA string // the CLI's --admin-ca

	cmd    *exec.Cmd
	log    *syncBuffer
	exited chan struct{}
	err    error
}

func TestExampleCluster(t *testing.T) {
	start := time.Now()
	requireNetns(t)
	testbin.Require(t, "qemu-io", "openssl")
	bin := testbin.Binary(t)
	t.Logf("tandem built in %v", time.Since(start).Round(time.Millisecond))
	start = time.Now()

	// The shared secrets, made the way deploy/README.md says.
	secrets := t.TempDir()
	keyFile, tokenFile := filepath.Join(secrets, "gossip.key"), filepath.Join(secrets, "admin-token")
	writeFile(t, keyFile, base64.StdEncoding.EncodeToString(randBytes(t, 32))+"\n")
	writeFile(t, tokenFile, base64.StdEncoding.EncodeToString(randBytes(t, 32))+"\n")
	// The replication port's certificates, made by the commands of
	// deploy/README.md (without the copies to the hosts).
	if out, err := exec.Command("bash", "-euc", "cd \"$1\"\n"+certScript(t, 0), "certs", secrets).CombinedOutput(); err != nil {
		t.Fatalf("the certificate commands of deploy/README.md: %v\n%s", err, out)
	}

	caFile, crlFile := filepath.Join(secrets, "peer-ca.crt"), filepath.Join(secrets, "peer-ca.crl")
	var hosts []*host
	for i := 1; i <= 3; i++ {
		cert, key := filepath.Join(secrets, fmt.Sprintf("n%d-peer.crt", i)), filepath.Join(secrets, fmt.Sprintf("n%d-peer.key", i))
		h := loadConfig(t, i, map[string]string{
			"gossip-key-file": keyFile, "admin-token-file": tokenFile,
			"peer-tls-cert": cert, "peer-tls-key": key, "peer-tls-ca": caFile, "peer-tls-crl": crlFile,
			"admin-tls-cert": cert, "admin-tls-key": key, "admin-tls-ca": caFile, "admin-tls-crl": crlFile,
		})
		h.adminCA = caFile
		hosts = append(hosts, h)
	}
	newNetns(t, hosts)
	for _, h := range hosts {
		h.start(t, bin)
	}

	// The cluster forms: every host alive and in the control plane, as
	// every host's admin API tells.
	for _, h := range hosts {
		waitFor(t, 40*time.Second, "every host alive in "+h.name+"'s catalog", hosts, func() error {
			out, err := h.cli(t, bin, tokenFile, "host", "list", "-o", "json")
			if err != nil {
				return fmt.Errorf("tandem host list: %v: %s", err, out)
			}
			var hs []admin.Host
			if err := json.Unmarshal([]byte(out), &hs); err != nil {
				return fmt.Errorf("tandem host list -o json: %v: %s", err, out)
			}
			var alive []string
			for _, x := range hs {
				if x.State == admin.HostAlive && x.Control != "" {
					alive = append(alive, x.Name)
				}
			}
			if len(alive) != 3 {
				return fmt.Errorf("alive control members %v, want n1, n2, n3: %s", alive, out)
			}
			return nil
		})
	}
	t.Logf("cluster formed %v after the agents started", time.Since(start).Round(time.Millisecond))
	// The admin API speaks HTTPS only.
	plain := *hosts[1]
	plain.adminCA = ""
	if out, err := plain.cli(t, bin, tokenFile, "host", "list"); err == nil {
		t.Errorf("the admin API answered plain HTTP:\n%s", out)
	}

	// The first volume, created through the admin API of a host that
	// does not lead the control plane: it forwards the request to the
	// leader's (over HTTPS).
	via := hosts[0]
	out, err := via.cli(t, bin, tokenFile, "host", "list", "-o", "json")
	var hs []admin.Host
	if err != nil || json.Unmarshal([]byte(out), &hs) != nil {
		t.Fatalf("tandem host list: %v\n%s", err, out)
	}
	for _, x := range hs {
		if x.Name == via.name && x.Control == "leader" {
			via = hosts[1]
		}
	}
	if out, err := via.cli(t, bin, tokenFile, "volume", "create", "disk1", "--size", "64M"); err != nil {
		t.Fatalf("tandem volume create through %s: %v\n%s", via.name, err, out)
	}
	var vol admin.Volume
	waitFor(t, 20*time.Second, "disk1 ready with a replica on every host", hosts, func() error {
		out, err := hosts[2].cli(t, bin, tokenFile, "volume", "show", "disk1", "-o", "json")
		if err != nil {
			return fmt.Errorf("tandem volume show: %v: %s", err, out)
		}
		if err := json.Unmarshal([]byte(out), &vol); err != nil {
			return err
		}
		hs := slices.Sorted(slices.Values(vol.Hosts))
		if vol.State != "ready" || !slices.Equal(hs, []string{"n1", "n2", "n3"}) {
			return fmt.Errorf("volume: %s", out)
		}
		return nil
	})

	// Written through n2, read back through n3 (VMs on those hosts).
	hosts[1].qemuIO(t, "tcp", "write -P 0x5a 0 1M", "write -P 0xa5 63M 1M")
	hosts[2].qemuIO(t, "tcp", "read -P 0x5a 0 1M", "read -P 0xa5 63M 1M")
	// Every host's agent serves it, over TCP and on its unix socket.
	for _, h := range hosts {
		h.qemuIO(t, "tcp", "read -P 0x5a 0 1M", "read -P 0xa5 63M 1M")
		h.qemuIO(t, "unix", "read -P 0x5a 0 1M", "read -P 0xa5 63M 1M")
	}
	t.Logf("volume created, written and read %v after the agents started", time.Since(start).Round(time.Millisecond))

	// n3's certificate is revoked, the way deploy/README.md says (the
	// hosts share the list's file here): n1 and n2 cut n3 off, and the
	// volume goes on with the two of them.
	if out, err := exec.Command("bash", "-euc", "cd \"$1\"\n"+certScript(t, 1), "revoke", secrets).CombinedOutput(); err != nil {
		t.Fatalf("the revocation commands of deploy/README.md: %v\n%s", err, out)
	}
	for _, h := range hosts[:2] {
		waitFor(t, 20*time.Second, h.name+" refusing n3's revoked certificate", hosts, func() error {
			if !strings.Contains(h.log.String(), `(serial`) || !strings.Contains(h.log.String(), `is revoked`) {
				return errors.New("no revocation in its log")
			}
			return nil
		})
	}
	hosts[0].qemuIO(t, "tcp", "write -P 0x3c 1M 1M")
	hosts[1].qemuIO(t, "tcp", "read -P 0x3c 1M 1M", "read -P 0x5a 0 1M")
	t.Logf("n3 revoked and cut off %v after the agents started", time.Since(start).Round(time.Millisecond))
	// n3 still gossips (the gossip key is shared), but the catalog says it
	// is shut out, so that it takes no new replica and self-healing moves
	// its replicas away.
	waitFor(t, 20*time.Second, "n3 revoked in the catalog", hosts, func() error {
		out, err := hosts[0].cli(t, bin, tokenFile, "host", "list", "-o", "json")
		if err != nil {
			return fmt.Errorf("tandem host list: %v: %s", err, out)
		}
		var hs []admin.Host
		if err := json.Unmarshal([]byte(out), &hs); err != nil {
			return fmt.Errorf("tandem host list -o json: %v: %s", err, out)
		}
		for _, x := range hs {
			if want := map[bool]string{true: admin.HostRevoked, false: admin.HostAlive}[x.Name == "n3"]; x.State != want {
				return fmt.Errorf("%s is %s, want %s: %s", x.Name, x.State, want, out)
			}
		}
		return nil
	})
	if out, err := hosts[0].cli(t, bin, tokenFile, "volume", "create", "disk2", "--size", "64M"); err == nil {
		t.Fatalf("a volume of 3 replicas was placed with n3 revoked: %s", out)
	} else {
		t.Logf("tandem volume create disk2 with n3 revoked: %v: %s", err, strings.TrimSpace(out))
	}

	// systemd stops the agents with SIGTERM: they exit cleanly.
	for _, h := range hosts {
		_ = h.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, h := range hosts {
		select {
		case <-h.exited:
			if h.err != nil {
				t.Errorf("%s exited with %v after SIGTERM", h.name, h.err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("%s did not exit within 30s of SIGTERM", h.name)
		}
	}
}

// certScript returns sh block n (from 0) of deploy/README.md's section
// "3. Certificates" (0: making the certificates, 1: revoking one), without
// its scp lines.
func certScript(t *testing.T, n int) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	b, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "deploy", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(b), "\n## 3. Certificates")
	sec, _, _ = strings.Cut(sec, "\n## ")
	var block string
	for range n + 1 {
		var ok2, ok3 bool
		_, sec, ok2 = strings.Cut(sec, "\n```sh\n")
		block, sec, ok3 = strings.Cut(sec, "\n```\n")
		ok = ok && ok2 && ok3
	}
	if !ok {
		t.Fatalf("deploy/README.md: no sh block %d in section 3. Certificates", n)
	}
	var lines []string
	for _, l := range strings.Split(block, "\n") {
		if !strings.Contains(l, "scp ") {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n") + "\n"
}

// loadConfig reads deploy/config/nI.yaml, moves its paths to temporary
// directories or to the files in secrets (by key) and writes the result
// for the agent of host nI.
func loadConfig(t *testing.T, i int, secrets map[string]string) *host {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	src := filepath.Join(filepath.Dir(file), "..", "..", "deploy", "config", fmt.Sprintf("n%d.yaml", i))
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %v", src, err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		t.Fatalf("%s is not a mapping", src)
	}
	dir := t.TempDir()
	newPath := map[string]string{
		"data":       filepath.Join(dir, "data"),
		"nbd-socket": filepath.Join(dir, "nbd.sock"),
	}
	maps.Copy(newPath, secrets)
	h := &host{cfg: map[string]string{}, cfgPath: filepath.Join(dir, "agent.yaml"), log: &syncBuffer{}, exited: make(chan struct{})}
	m := doc.Content[0]
	for j := 0; j+1 < len(m.Content); j += 2 {
		k, v := m.Content[j], m.Content[j+1]
		if slices.Contains(pathKeys, k.Value) {
			p, ok := newPath[k.Value]
			if !ok {
				t.Fatalf("%s sets %s: the test does not know where to put it", src, k.Value)
			}
			v.Value, v.Tag, v.Style = p, "!!str", 0
		} else if v.Kind == yaml.ScalarNode && strings.HasPrefix(v.Value, "/") {
			t.Fatalf("%s: %s is a path (%s): add it to pathKeys", src, k.Value, v.Value)
		}
		if v.Kind == yaml.ScalarNode {
			h.cfg[k.Value] = v.Value
		}
	}
	for _, k := range []string{"data", "nbd-socket", "gossip-key-file", "admin-token-file", "peer-tls-cert", "peer-tls-key", "peer-tls-ca", "peer-tls-crl"} {
		if _, ok := h.cfg[k]; !ok {
			t.Fatalf("%s does not set %s", src, k)
		}
	}
	out, err := yaml.Marshal(&doc)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, h.cfgPath, string(out))
	h.name = h.cfg["name"]
	if h.name != fmt.Sprintf("n%d", i) {
		t.Fatalf("%s: name %q", src, h.name)
	}
	ip, _, err := net.SplitHostPort(h.cfg["raft-listen"])
	if err != nil {
		t.Fatalf("%s: raft-listen: %v", src, err)
	}
	for _, k := range []string{"nbd-listen", "admin-listen", "gossip-listen"} {
		if a, _, _ := net.SplitHostPort(h.cfg[k]); a != ip {
			t.Fatalf("%s: %s %q is not on the raft-listen address %s", src, k, h.cfg[k], ip)
		}
	}
	h.ip = ip
	return h
}

// start runs the agent of h in its namespace: tandem agent --config FILE,
// nothing else, as the systemd unit does. It is stopped (SIGKILL) when the
// test ends, before the namespaces go; if the test failed, its log is
// printed.
func (h *host) start(t *testing.T, bin string) {
	t.Helper()
	h.cmd = exec.Command("ip", "netns", "exec", h.ns, bin, "agent", "--config", h.cfgPath)
	h.cmd.Env = testbin.CleanEnv()
	h.cmd.Stderr = h.log
	// The agent dies with the test process, even if the test is killed.
	// The test never runs a goroutine in another namespace (clients run
	// through ip netns exec), so no thread that forked an agent exits.
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := h.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", h.name, err)
	}
	go func() {
		h.err = h.cmd.Wait()
		close(h.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-h.exited:
		default:
			_ = h.cmd.Process.Kill()
			<-h.exited
		}
		if t.Failed() {
			t.Logf("%s (%s): agent log (%v):\n%s", h.name, h.ns, errOrOK(h.err), lastLines(h.log.String(), 40))
		}
	})
}

// cli runs the tandem CLI inside h's namespace against h's admin API.
func (h *host) cli(t *testing.T, bin, tokenFile string, args ...string) (string, error) {
	t.Helper()
	args = append(args, "--admin", h.cfg["admin-listen"], "--token-file", tokenFile, "--timeout", "10s")
	if h.adminCA != "" {
		args = append(args, "--admin-ca", h.adminCA)
	}
	return inNetns(h.ns, 20*time.Second, bin, args...)
}

// qemuIO runs qemu-io commands on volume disk1 inside h's namespace, over
// TCP to h's nbd-listen or on h's unix socket.
func (h *host) qemuIO(t *testing.T, via string, cmds ...string) {
	t.Helper()
	uri := "nbd://" + h.cfg["nbd-listen"] + "/disk1"
	if via == "unix" {
		uri = "nbd+unix:///disk1?socket=" + h.cfg["nbd-socket"]
	}
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, err := inNetns(h.ns, 30*time.Second, "qemu-io", append(args, uri)...)
	if err != nil || strings.Contains(out, "failed") {
		t.Fatalf("%s: qemu-io %s %s: %v\n%s", h.name, strings.Join(cmds, "; "), uri, err, out)
	}
}

// inNetns runs a program inside network namespace ns and returns its
// combined output.
func inNetns(ns string, timeout time.Duration, prog string, args ...string) (string, error) {
	return testbin.RunErr(timeout, "ip", append([]string{"netns", "exec", ns, prog}, args...)...)
}

// netns is the test's network: one namespace per host with an eth0 on the
// host's address (/24), wired by a veth pair to a bridge in a namespace of
// its own, as in e2e/cluster. Nothing is added to the test's own
// namespace.
type netns struct {
	t     *testing.T
	names []string // every namespace made, the bridge's first
}

// requireNetns skips the test unless network namespaces can be made here
// (root, the ip command), or fails it if TANDEM_REQUIRE_TOOLS is set.
func requireNetns(t *testing.T) {
	t.Helper()
	why := ""
	if _, err := exec.LookPath("ip"); err != nil {
		why = "the ip command is not installed"
	} else if os.Geteuid() != 0 {
		why = "they need root"
	}
	if why == "" {
		return
	}
	if os.Getenv("TANDEM_REQUIRE_TOOLS") != "" {
		t.Fatalf("network namespaces: %s (TANDEM_REQUIRE_TOOLS is set)", why)
	}
	t.Skipf("network namespaces: %s", why)
}

// newNetns creates the namespaces of hosts (setting their ns) and removes
// them when the test ends, after the agents are gone.
func newNetns(t *testing.T, hosts []*host) *netns {
	t.Helper()
	prefix := "tdd" + hex.EncodeToString(randBytes(t, 4))
	nn := &netns{t: t}
	t.Cleanup(nn.remove)
	br := prefix + "-br"
	nn.add(br)
	nn.ip("-n", br, "link", "add", "br0", "type", "bridge")
	nn.ip("-n", br, "link", "set", "br0", "up")
	nn.ip("-n", br, "link", "set", "lo", "up")
	for i, h := range hosts {
		h.ns = fmt.Sprintf("%s-%s", prefix, h.name)
		nn.add(h.ns)
		port := fmt.Sprintf("p%d", i+1)
		nn.ip("-n", br, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", h.ns)
		nn.ip("-n", br, "link", "set", port, "master", "br0")
		nn.ip("-n", br, "link", "set", port, "up")
		nn.ip("-n", h.ns, "link", "set", "lo", "up")
		nn.ip("-n", h.ns, "addr", "add", h.ip+"/24", "dev", "eth0")
		nn.ip("-n", h.ns, "link", "set", "eth0", "up")
	}
	return nn
}

func (nn *netns) add(name string) {
	nn.t.Helper()
	nn.ip("netns", "add", name)
	nn.names = append(nn.names, name)
}

func (nn *netns) ip(args ...string) {
	nn.t.Helper()
	if out, err := testbin.RunErr(30*time.Second, "ip", args...); err != nil {
		nn.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// remove deletes every namespace made (which deletes their links).
func (nn *netns) remove() {
	for _, ns := range slices.Backward(nn.names) {
		if out, err := testbin.RunErr(30*time.Second, "ip", "netns", "del", ns); err != nil {
			nn.t.Errorf("removing network namespace %s: %v\n%s", ns, err, out)
		}
	}
}

// waitFor polls f every 200 ms until it succeeds, failing the test after
// timeout or as soon as an agent exits.
func waitFor(t *testing.T, timeout time.Duration, what string, hosts []*host, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		for _, h := range hosts {
			select {
			case <-h.exited:
				t.Fatalf("waiting for %s: %s exited: %v", what, h.name, errOrOK(h.err))
			default:
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func randBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

func errOrOK(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// syncBuffer is a bytes.Buffer safe for a writer and readers at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
