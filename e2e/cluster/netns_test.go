package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-project/tandem/internal/testbin"
)

// netnet is a network of namespaces for partition tests: one namespace per
// host, each with an eth0 (10.99.0.<i+1>/24) wired by a veth pair to a
// bridge that lives in a namespace of its own. Nothing is added to the
// test's own namespace; the test reaches host i's agent from inside host
// i's namespace (as a VM on that host would), so a host cut off from the
// others stays reachable by its local clients.
type netnet struct {
	t      *testing.T
	prefix string   // unique name prefix
	br     string   // namespace of the bridge
	hosts  []string // namespace of each host
}

const (
	nsRaftPort = 10810
	nsNBDPort  = 10809
)

// newNetnet creates the namespaces, links and bridge for n hosts, and
// removes them all when the test ends (after the agents were killed). It
// skips the test if namespaces cannot be made here (not root, no ip
// command), or fails it if TANDEM_REQUIRE_TOOLS is set.
func newNetnet(t *testing.T, n int) *netnet {
	t.Helper()
	nn, why := tryNetnet(t, n)
	if nn == nil {
		if os.Getenv("TANDEM_REQUIRE_TOOLS") != "" {
			t.Fatalf("network namespaces: %s (TANDEM_REQUIRE_TOOLS is set)", why)
		}
		t.Skipf("network namespaces: %s", why)
	}
	return nn
}

// tryNetnet is newNetnet returning nil and the reason when namespaces
// cannot be made here.
func tryNetnet(t *testing.T, n int) (*netnet, string) {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, "the ip command is not installed"
	}
	if os.Geteuid() != 0 {
		return nil, "they need root"
	}
	var id [4]byte
	_, _ = rand.Read(id[:])
	nn := &netnet{t: t, prefix: "tdm" + hex.EncodeToString(id[:])}
	nn.br = nn.prefix + "-br"
	if out, err := ipCmd("netns", "add", nn.br); err != nil {
		return nil, fmt.Sprintf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(nn.remove)
	nn.run("-n", nn.br, "link", "add", "br0", "type", "bridge")
	nn.run("-n", nn.br, "link", "set", "br0", "up")
	nn.run("-n", nn.br, "link", "set", "lo", "up")
	for i := range n {
		ns := fmt.Sprintf("%s-n%d", nn.prefix, i+1)
		nn.run("netns", "add", ns)
		nn.hosts = append(nn.hosts, ns)
		port := fmt.Sprintf("p%d", i+1)
		nn.run("-n", nn.br, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
		nn.run("-n", nn.br, "link", "set", port, "master", "br0")
		nn.run("-n", nn.br, "link", "set", port, "up")
		nn.run("-n", ns, "link", "set", "lo", "up")
		nn.run("-n", ns, "addr", "add", nn.ip(i)+"/24", "dev", "eth0")
		nn.run("-n", ns, "link", "set", "eth0", "up")
	}
	return nn, ""
}

func ipCmd(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	return string(out), err
}

func (nn *netnet) run(args ...string) {
	nn.t.Helper()
	if out, err := ipCmd(args...); err != nil {
		nn.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// remove deletes every namespace created (which deletes their links).
func (nn *netnet) remove() {
	for _, ns := range append(slices.Clone(nn.hosts), nn.br) {
		if out, err := ipCmd("netns", "del", ns); err != nil {
			nn.t.Errorf("removing network namespace %s: %v\n%s", ns, err, out)
		}
	}
}

func (nn *netnet) ip(i int) string { return fmt.Sprintf("10.99.0.%d", i+1) }

// cut disconnects host i from the others (its bridge port goes down; its
// own interface stays up, so local clients still reach its agent).
func (nn *netnet) cut(i int) {
	nn.t.Helper()
	nn.run("-n", nn.br, "link", "set", fmt.Sprintf("p%d", i+1), "down")
}

// heal reconnects host i.
func (nn *netnet) heal(i int) {
	nn.t.Helper()
	nn.run("-n", nn.br, "link", "set", fmt.Sprintf("p%d", i+1), "up")
}

// clusterConfig returns a cluster configuration whose hosts run in the
// namespaces.
func (nn *netnet) clusterConfig(args ...string) testbin.ClusterConfig {
	var ips []string
	for i := range nn.hosts {
		ips = append(ips, nn.ip(i))
	}
	return testbin.ClusterConfig{
		Hosts:    len(nn.hosts),
		Volumes:  []string{fmt.Sprintf("%s=%d", vol, volSize)},
		Args:     args,
		IPs:      ips,
		RaftPort: nsRaftPort,
		NBDPort:  nsNBDPort,
		Wrap:     func(i int) []string { return []string{"ip", "netns", "exec", nn.hosts[i]} },
		Dial: func(ctx context.Context, i int, addr string) (net.Conn, error) {
			return dialInNetns(ctx, nn.hosts[i], addr)
		},
	}
}

// dialInNetns opens a TCP connection from inside network namespace ns: the
// socket is created by a thread that entered ns and is then thrown away
// (a goroutine that exits while locked to its thread ends the thread), so
// no other goroutine ever runs in ns. The connection itself works from any
// thread.
func dialInNetns(ctx context.Context, ns, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open("/var/run/netns/" + ns)
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{nil, fmt.Errorf("entering network namespace %s: %w", ns, err)}
			return
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// checkWiring fails the test unless every host reaches every host's
// replication port: a setup problem must not pass for a Tandem bug.
func (nn *netnet) checkWiring(c *testbin.Cluster) {
	nn.t.Helper()
	for i := range nn.hosts {
		for j := range nn.hosts {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			conn, err := dialInNetns(ctx, nn.hosts[i], c.Nodes[j].RaftAddr)
			cancel()
			if err != nil {
				out, _ := ipCmd("-n", nn.hosts[j], "addr")
				ss, _ := exec.Command("ip", "netns", "exec", nn.hosts[j], "ss", "-ltnp").CombinedOutput()
				nn.t.Fatalf("network namespaces: n%d cannot reach n%d at %s: %v\naddresses of n%d:\n%s\nlisteners of n%d:\n%s", i+1, j+1, c.Nodes[j].RaftAddr, err, j+1, out, j+1, ss)
			}
			conn.Close()
		}
	}
}
