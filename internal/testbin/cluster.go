package testbin

import (
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testpki"
	"github.com/tandem-project/tandem/nbd/nbdclient"
	"github.com/tandem-project/tandem/raftlog"
	"github.com/tandem-project/tandem/raftlog/mux"
	"github.com/tandem-project/tandem/vmcoord/pidfile"
)

// ClusterConfig describes a cluster of "tandem agent" processes, one per
// host, all started with the same --peer list and --volume list.
type ClusterConfig struct {
	// Hosts is the number of agents (default 3). They are named n1, n2...
	Hosts int
	// Volumes are the --volume values, e.g. "v=64M".
	Volumes []string
	// Args are extra flags given to every agent (e.g. --heartbeat-timeout).
	Args []string
	// HostArgs, if set, returns extra flags for host i alone (e.g. its
	// certificate).
	HostArgs func(i int) []string
	// IPs are the hosts' addresses. Default: 127.A.B.1, 127.A.B.2... on
	// loopback, with A and B picked at random so that parallel clusters do
	// not share addresses (every address of 127.0.0.0/8 is local).
	IPs []string
	// RaftPort and NBDPort are the hosts' ports. Zero picks free ports on
	// each IP, which needs the IPs to be local to this network namespace;
	// set them when the hosts run elsewhere (in network namespaces).
	RaftPort, NBDPort int
	// Wrap, if set, returns the command prefix host i runs under, e.g.
	// {"ip", "netns", "exec", "ns1"}. The prefix must exec the agent (not
	// fork it), so that signals reach the agent itself.
	Wrap func(i int) []string
	// Dial, if set, opens a TCP connection to addr as a client on host i
	// (for hosts in network namespaces). Default: net.Dialer.
	Dial func(ctx context.Context, i int, addr string) (net.Conn, error)
	// NBDTLS, if set, is the TLS configuration of NBD clients (Dial): for
	// agents started with --tls-required.
	NBDTLS *tls.Config
	// PeerTLS, if set, is the identity LeaderOf presents on the hosts'
	// replication ports: for agents started with --peer-tls-*.
	PeerTLS *mux.TLS
	// Managed runs the agents in cluster mode (tandem agent
	// --control-voters ...): gossip, the control plane and the admin API
	// on every host, volumes created through the API. Volumes must then
	// be empty.
	Managed bool
	// PeersWithoutNBD lists the hosts of a fixed-mode cluster as
	// --peer NAME,raft=ADDR, without their NBD addresses (which only the
	// admin API shows).
	PeersWithoutNBD bool
	// Voters is the number of control voters in managed mode (default 3,
	// or 1 with a single host): n1, n2...
	Voters int
	// AdminPort and GossipPort are the hosts' ports in managed mode (0:
	// free ports).
	AdminPort, GossipPort int
	// Prepare, if set, is called with each host's (empty) data directory
	// before the agents first start: to mount a small file system there,
	// say. Cleanups it registers run after the agents are killed.
	Prepare func(i int, dir string)
}

// Cluster is a set of agents started by StartCluster. Its methods must be
// called from the test's goroutine unless they say otherwise.
type Cluster struct {
	t     testing.TB
	cfg   ClusterConfig
	Nodes []*Node
	// Token is the admin token (managed mode); TokenFile and KeyFile hold
	// the token and the gossip key.
	Token, TokenFile, KeyFile string
	// picked holds the addresses port handed out already.
	picked map[string]bool
}

// Node is one host of a Cluster. Its addresses and data directory stay the
// same across restarts.
type Node struct {
	Index    int
	Name     string
	DataDir  string
	RaftAddr string
	NBDAddr  string
	// AdminAddr and GossipAddr are set in managed mode.
	AdminAddr  string
	GossipAddr string

	c *Cluster

	mu       sync.Mutex
	log      strings.Builder // every run's stderr, with a header per run
	runStart int             // offset of the current run in log
	runs     int
	changed  chan struct{} // closed and replaced whenever log grows
	cmd      *exec.Cmd
	exited   chan struct{} // nil before the first start
	err      error
}

// StartCluster starts cfg.Hosts agents on fresh data directories, waits
// until every one serves NBD, and kills them all when the test ends. If
// the test failed (or TANDEM_KEEP_LOGS is set), the agents' logs are saved
// to files named in the test log.
func StartCluster(t testing.TB, cfg ClusterConfig) *Cluster {
	t.Helper()
	if cfg.Hosts == 0 {
		cfg.Hosts = 3
	}
	if len(cfg.IPs) == 0 {
		cfg.IPs = randomIPs(cfg.Hosts)
	}
	if len(cfg.IPs) != cfg.Hosts {
		t.Fatalf("testbin: %d IPs for %d hosts", len(cfg.IPs), cfg.Hosts)
	}
	Binary(t)
	c := &Cluster{t: t, cfg: cfg}
	for i := range cfg.Hosts {
		n := &Node{Index: i, Name: fmt.Sprintf("n%d", i+1), DataDir: t.TempDir(), c: c, changed: make(chan struct{})}
		n.RaftAddr = net.JoinHostPort(cfg.IPs[i], strconv.Itoa(c.port(t, cfg.IPs[i], cfg.RaftPort)))
		n.NBDAddr = net.JoinHostPort(cfg.IPs[i], strconv.Itoa(c.port(t, cfg.IPs[i], cfg.NBDPort)))
		if cfg.Managed {
			n.AdminAddr = net.JoinHostPort(cfg.IPs[i], strconv.Itoa(c.port(t, cfg.IPs[i], cfg.AdminPort)))
			n.GossipAddr = net.JoinHostPort(cfg.IPs[i], strconv.Itoa(c.port(t, cfg.IPs[i], cfg.GossipPort)))
		}
		c.Nodes = append(c.Nodes, n)
	}
	if cfg.Managed {
		if len(cfg.Volumes) > 0 {
			t.Fatal("testbin: a managed cluster's volumes are created through the API")
		}
		if c.cfg.Voters == 0 {
			c.cfg.Voters = min(3, cfg.Hosts)
		}
		dir := t.TempDir()
		key := make([]byte, 32)
		tok := make([]byte, 16)
		for _, b := range [][]byte{key, tok} {
			if _, err := crand.Read(b); err != nil {
				t.Fatal(err)
			}
		}
		c.Token = hex.EncodeToString(tok)
		c.TokenFile, c.KeyFile = filepath.Join(dir, "admin-token"), filepath.Join(dir, "gossip-key")
		if err := os.WriteFile(c.TokenFile, []byte(c.Token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(c.KeyFile, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if cfg.Prepare != nil {
		for _, n := range c.Nodes {
			cfg.Prepare(n.Index, n.DataDir)
		}
	}
	t.Cleanup(c.cleanup)
	for _, n := range c.Nodes {
		n.spawn()
	}
	for _, n := range c.Nodes {
		n.waitServing()
	}
	return c
}

// randomIPs returns n loopback addresses 127.A.B.1, 127.A.B.2... with A
// and B random, so that parallel clusters do not share addresses.
func randomIPs(n int) []string {
	a, b := 1+rand.IntN(254), 1+rand.IntN(254)
	var ips []string
	for i := range n {
		ips = append(ips, fmt.Sprintf("127.%d.%d.%d", a, b, i+1))
	}
	return ips
}

// PeerTLSFiles are the certificates WithPeerTLS made: the peer CA and,
// for each host, a certificate naming its IP and its key (PEM files).
type PeerTLSFiles struct {
	CA          *testpki.CA
	CAFile      string
	Certs, Keys []string
}

// WithPeerTLS sets cfg up for mutual TLS between the hosts: it picks the
// hosts' IPs if cfg has none, makes a peer CA and a certificate per host,
// adds the --peer-tls-* flags to each host's (after cfg.HostArgs') and
// sets cfg.PeerTLS for the test's own connections to the replication
// ports.
func WithPeerTLS(t testing.TB, cfg *ClusterConfig) *PeerTLSFiles {
	t.Helper()
	if cfg.Hosts == 0 {
		cfg.Hosts = 3
	}
	if len(cfg.IPs) == 0 {
		cfg.IPs = randomIPs(cfg.Hosts)
	}
	dir := t.TempDir()
	f := &PeerTLSFiles{CA: testpki.NewCA(t, "tandem peers"), CAFile: filepath.Join(dir, "peer-ca.pem")}
	testpki.WriteFile(t, f.CAFile, f.CA.PEM())
	for i, ip := range cfg.IPs {
		cert, key := f.CA.Issue(fmt.Sprintf("n%d", i+1), ip).Write(t, dir, fmt.Sprintf("n%d.pem", i+1), fmt.Sprintf("n%d-key.pem", i+1))
		f.Certs, f.Keys = append(f.Certs, cert), append(f.Keys, key)
	}
	more := cfg.HostArgs
	cfg.HostArgs = func(i int) []string {
		var args []string
		if more != nil {
			args = more(i)
		}
		return append(args, "--peer-tls-cert", f.Certs[i], "--peer-tls-key", f.Keys[i], "--peer-tls-ca", f.CAFile)
	}
	cfg.PeerTLS = &mux.TLS{Cert: f.CA.Issue("test", "127.0.0.1").TLS(t), CA: f.CA.Pool()}
	return f
}

// port returns fixed if set, else a port that is free on ip now.
func (c *Cluster) port(t testing.TB, ip string, fixed int) int {
	if fixed != 0 {
		return fixed
	}
	// A port is free once its listener is closed: the kernel may hand it
	// out again to the next pick, which would give one agent the same
	// port for two listeners.
	if c.picked == nil {
		c.picked = map[string]bool{}
	}
	for {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			t.Fatalf("testbin: picking a free port on %s: %v", ip, err)
		}
		addr := l.Addr().String()
		l.Close()
		if !c.picked[addr] {
			c.picked[addr] = true
			return l.Addr().(*net.TCPAddr).Port
		}
	}
}

func (c *Cluster) cleanup() {
	if c.t.Failed() {
		// Have running agents print their goroutines into their logs
		// (SIGQUIT) before they go: the record of a hang.
		for _, n := range c.Nodes {
			if n.Running() {
				n.signal(syscall.SIGQUIT)
			}
		}
		deadline := time.After(5 * time.Second)
		for _, n := range c.Nodes {
			n.mu.Lock()
			ch := n.exited
			n.mu.Unlock()
			if ch == nil {
				continue
			}
			select {
			case <-ch:
			case <-deadline:
			}
		}
	}
	for _, n := range c.Nodes {
		n.kill()
		// The VMs of managed agents outlive them (the next run of the
		// agent kills them): kill them now.
		if err := pidfile.KillLeftovers(filepath.Join(n.DataDir, "vms"), slog.New(slog.DiscardHandler)); err != nil {
			c.t.Errorf("%s: %v", n.Name, err)
		}
	}
	keep := os.Getenv("TANDEM_KEEP_LOGS") != ""
	if !c.t.Failed() && !keep {
		return
	}
	dir, err := os.MkdirTemp("", "tandem-cluster-logs-")
	if err != nil {
		c.t.Logf("saving agent logs: %v", err)
	}
	for _, n := range c.Nodes {
		log := n.Log()
		if dir != "" {
			p := filepath.Join(dir, n.Name+".log")
			if err := os.WriteFile(p, []byte(log), 0o644); err == nil {
				c.t.Logf("%s: full agent log in %s", n.Name, p)
			}
		}
		if c.t.Failed() {
			c.t.Logf("%s: last lines of the agent log:\n%s", n.Name, lastLines(beforeDump(log), 40))
		}
	}
}

// beforeDump returns log up to the goroutine dump SIGQUIT made the agent
// print at the end (the dump is in the saved log file): the lines that
// tell what happened come before it.
func beforeDump(log string) string {
	if i := strings.LastIndex(log, "SIGQUIT: quit"); i >= 0 {
		return log[:i] + "[goroutine dump (SIGQUIT) in the full log]\n"
	}
	return log
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// args returns the agent command line of node n.
func (n *Node) args() []string {
	c := n.c
	args := []string{"agent", "--name", n.Name, "--data", n.DataDir,
		"--raft-listen", n.RaftAddr, "--nbd-listen", n.NBDAddr}
	if c.cfg.Managed {
		var voters, join []string
		for i, p := range c.Nodes {
			if i < c.cfg.Voters {
				voters = append(voters, p.Name)
			}
			join = append(join, p.GossipAddr)
		}
		args = append(args, "--admin-listen", n.AdminAddr, "--gossip-listen", n.GossipAddr,
			"--join", strings.Join(join, ","), "--control-voters", strings.Join(voters, ","),
			"--gossip-key-file", c.KeyFile, "--admin-token-file", c.TokenFile, "--fast-gossip")
		return append(append(args, c.cfg.Args...), n.hostArgs()...)
	}
	for _, p := range c.Nodes {
		peer := p.Name + ",raft=" + p.RaftAddr
		if !c.cfg.PeersWithoutNBD {
			peer += ",nbd=" + p.NBDAddr
		}
		args = append(args, "--peer", peer)
	}
	for _, v := range c.cfg.Volumes {
		args = append(args, "--volume", v)
	}
	return append(append(args, c.cfg.Args...), n.hostArgs()...)
}

// hostArgs returns ClusterConfig.HostArgs of n, if any.
func (n *Node) hostArgs() []string {
	if n.c.cfg.HostArgs == nil {
		return nil
	}
	return n.c.cfg.HostArgs(n.Index)
}

// spawn starts the agent process of n without waiting for it to serve.
func (n *Node) spawn() {
	t := n.c.t
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.exited != nil {
		select {
		case <-n.exited:
		default:
			t.Fatalf("testbin: %s is already running", n.Name)
		}
	}
	argv := append([]string{Binary(t)}, n.args()...)
	if n.c.cfg.Wrap != nil {
		argv = append(n.c.cfg.Wrap(n.Index), argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = CleanEnv()
	cmd.Stdout = nil
	cmd.Stderr = logWriter{n}
	// The agent dies with the test process, even if the test is killed
	// (see startOnSpawnThread).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	n.runs++
	n.log.WriteString(fmt.Sprintf("=== testbin: run %d of %s: %s\n", n.runs, n.Name, strings.Join(argv, " ")))
	n.runStart = n.log.Len()
	if err := startOnSpawnThread(cmd); err != nil {
		t.Fatalf("testbin: starting %s: %v", n.Name, err)
	}
	n.cmd, n.err = cmd, nil
	exited := make(chan struct{})
	n.exited = exited
	go func() {
		err := cmd.Wait()
		n.mu.Lock()
		n.err = err
		n.log.WriteString(fmt.Sprintf("=== testbin: %s exited: %v\n", n.Name, errOrOK(err)))
		n.notifyLocked()
		n.mu.Unlock()
		close(exited)
	}()
}

func errOrOK(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// logWriter appends an agent's stderr to its node's log.
type logWriter struct{ n *Node }

func (w logWriter) Write(p []byte) (int, error) {
	w.n.mu.Lock()
	w.n.log.Write(p)
	w.n.notifyLocked()
	w.n.mu.Unlock()
	return len(p), nil
}

func (n *Node) notifyLocked() {
	close(n.changed)
	n.changed = make(chan struct{})
}

var servingRE = regexp.MustCompile(`msg="serving NBD" addr=`)

// waitServing waits until the current run of n serves NBD.
func (n *Node) waitServing() {
	t := n.c.t
	t.Helper()
	if _, err := n.WaitLog(servingRE, 0, 60*time.Second); err != nil {
		t.Fatalf("testbin: %s did not start serving: %v\n%s", n.Name, err, lastLines(n.RunLog(), 40))
	}
}

// Start starts the agent of host i again (same data directory, addresses
// and flags) and waits until it serves NBD. The host must not be running.
func (c *Cluster) Start(i int) {
	c.t.Helper()
	c.Nodes[i].spawn()
	c.Nodes[i].waitServing()
}

// StartAll starts every host that is not running, at once, and waits until
// they all serve.
func (c *Cluster) StartAll() {
	c.t.Helper()
	var started []*Node
	for _, n := range c.Nodes {
		if !n.Running() {
			n.spawn()
			started = append(started, n)
		}
	}
	for _, n := range started {
		n.waitServing()
	}
}

// Restart kills host i if it runs (SIGKILL), then starts it again.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	c.Kill(i)
	c.Start(i)
}

// Kill sends SIGKILL (kill -9) to host i and waits until it is gone. It
// may be called from any goroutine.
func (c *Cluster) Kill(i int) { c.Nodes[i].kill() }

// KillAll sends SIGKILL to every running host at once (one signal after
// the other, without waiting in between), then waits until all are gone.
func (c *Cluster) KillAll() {
	for _, n := range c.Nodes {
		n.signal(syscall.SIGKILL)
	}
	for _, n := range c.Nodes {
		n.wait()
	}
}

// Stop sends SIGTERM to host i and waits for it to exit; the test fails
// if it does not exit cleanly within 30 s.
func (c *Cluster) Stop(i int) {
	c.t.Helper()
	if err := c.Nodes[i].stop(30 * time.Second); err != nil {
		c.t.Errorf("testbin: %v", err)
	}
}

// StopAll sends SIGTERM to every running host at once and waits for them;
// the test fails if one does not exit cleanly within 30 s.
func (c *Cluster) StopAll() {
	c.t.Helper()
	var running []*Node
	for _, n := range c.Nodes {
		if n.Running() {
			n.signal(syscall.SIGTERM)
			running = append(running, n)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, n := range running {
		if err := n.awaitExit(max(time.Until(deadline), 0)); err != nil {
			c.t.Errorf("testbin: %v", err)
		}
	}
}

func (n *Node) signal(sig syscall.Signal) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil && n.cmd.Process != nil {
		_ = n.cmd.Process.Signal(sig)
	}
}

func (n *Node) wait() {
	n.mu.Lock()
	ch := n.exited
	n.mu.Unlock()
	if ch != nil {
		<-ch
	}
}

func (n *Node) kill() {
	if !n.Running() {
		return
	}
	n.signal(syscall.SIGKILL)
	n.wait()
}

func (n *Node) stop(timeout time.Duration) error {
	if !n.Running() {
		return nil
	}
	n.signal(syscall.SIGTERM)
	return n.awaitExit(timeout)
}

// awaitExit waits for the process to exit after a SIGTERM.
func (n *Node) awaitExit(timeout time.Duration) error {
	n.mu.Lock()
	ch := n.exited
	n.mu.Unlock()
	select {
	case <-ch:
	case <-time.After(timeout):
		// SIGQUIT makes a Go program print every goroutine's stack
		// (into the log) and exit: the record of the hang.
		n.signal(syscall.SIGQUIT)
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			n.kill()
		}
		return fmt.Errorf("%s did not exit within 30s of SIGTERM (its goroutines, dumped with SIGQUIT, are in its log)", n.Name)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.err != nil {
		return fmt.Errorf("%s exited with %v after SIGTERM", n.Name, n.err)
	}
	return nil
}

// Running reports whether the agent of n runs. Safe from any goroutine.
func (n *Node) Running() bool {
	n.mu.Lock()
	ch := n.exited
	n.mu.Unlock()
	if ch == nil {
		return false
	}
	select {
	case <-ch:
		return false
	default:
		return true
	}
}

// Running reports whether host i runs.
func (c *Cluster) Running(i int) bool { return c.Nodes[i].Running() }

// Log returns the stderr of every run of n so far, each run after a
// "=== testbin: run" header.
func (n *Node) Log() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.log.String()
}

// RunLog returns the stderr of the current (or last) run of n.
func (n *Node) RunLog() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.log.String()[n.runStart:]
}

// LogLen returns the length of the current run's log so far: an offset
// for WaitLog and LogSince.
func (n *Node) LogLen() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.log.Len() - n.runStart
}

// LogSince returns the current run's log after offset off (see LogLen).
func (n *Node) LogSince(off int) string {
	s := n.RunLog()
	if off > len(s) {
		return ""
	}
	return s[off:]
}

// WaitLog waits until the current run's log after offset off matches re,
// and returns the first matching line. It fails if the agent exits first
// or timeout passes. Safe from any goroutine.
func (n *Node) WaitLog(re *regexp.Regexp, off int, timeout time.Duration) (string, error) {
	deadline := time.After(timeout)
	for {
		n.mu.Lock()
		s := n.log.String()[n.runStart:]
		ch, exited := n.changed, n.exited
		n.mu.Unlock()
		if off < len(s) {
			if loc := re.FindStringIndex(s[off:]); loc != nil {
				start := strings.LastIndexByte(s[:off+loc[0]], '\n') + 1
				end := strings.IndexByte(s[off+loc[0]:], '\n')
				if end < 0 {
					return s[start:], nil
				}
				return s[start : off+loc[0]+end], nil
			}
		}
		select {
		case <-exited:
			return "", fmt.Errorf("%s exited before logging %q", n.Name, re)
		default:
		}
		select {
		case <-ch:
		case <-deadline:
			return "", fmt.Errorf("%s did not log %q within %v", n.Name, re, timeout)
		}
	}
}

// URI returns the NBD URI of export on host i.
func (c *Cluster) URI(i int, export string) string {
	return "nbd://" + c.Nodes[i].NBDAddr + "/" + export
}

// VolumePath returns the replica file of volume vol on host i.
func (c *Cluster) VolumePath(i int, vol string) string {
	return filepath.Join(c.Nodes[i].DataDir, "groups", vol, "volume.img")
}

// Dial opens an NBD connection to export on host i. Safe from any
// goroutine.
func (c *Cluster) Dial(ctx context.Context, i int, export string) (*nbdclient.Conn, error) {
	addr := c.Nodes[i].NBDAddr
	opts := nbdclient.Options{Export: export}
	if c.cfg.NBDTLS != nil {
		host, _, _ := net.SplitHostPort(addr)
		opts.TLS = c.cfg.NBDTLS.Clone()
		opts.TLS.ServerName = host
	}
	if c.cfg.Dial == nil {
		return nbdclient.Dial(ctx, "tcp", addr, opts)
	}
	nc, err := c.cfg.Dial(ctx, i, addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: dial %s: %w", addr, err)
	}
	return handshake(ctx, nc, opts)
}

// handshake starts NBD on nc, closing it on failure.
func handshake(ctx context.Context, nc net.Conn, opts nbdclient.Options) (*nbdclient.Conn, error) {
	conn, err := nbdclient.Handshake(ctx, nc, opts)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return conn, nil
}

// DialForward opens export on host i's replication port, as an agent
// forwarding to it does: only the forwarding views
// (raftlog.ForwardPrefix) are served there. Safe from any goroutine.
func (c *Cluster) DialForward(ctx context.Context, i int, export string) (*nbdclient.Conn, error) {
	addr := c.Nodes[i].RaftAddr
	d := mux.Dialer{TLS: c.cfg.PeerTLS}
	var nc net.Conn
	var err error
	if c.cfg.Dial == nil {
		nc, err = d.Dial(ctx, addr, mux.KindNBD, "")
	} else if nc, err = c.cfg.Dial(ctx, i, addr); err == nil {
		nc, err = d.Open(ctx, nc, addr, mux.KindNBD, "")
	}
	if err != nil {
		return nil, err
	}
	return handshake(ctx, nc, nbdclient.Options{Export: export})
}

// LeaderOf probes which running host leads volume vol and can serve it
// now: the one whose leader-only export (_fwd/vol) answers a read. It
// returns -1 if no host or several hosts answered. Safe from any goroutine.
func (c *Cluster) LeaderOf(vol string) int {
	type res struct {
		i  int
		ok bool
	}
	ch := make(chan res, len(c.Nodes))
	n := 0
	for i, node := range c.Nodes {
		if !node.Running() {
			continue
		}
		n++
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			conn, err := c.DialForward(ctx, i, raftlog.ForwardPrefix+vol)
			if err != nil {
				ch <- res{i, false}
				return
			}
			defer conn.Close()
			buf := make([]byte, 512)
			ch <- res{i, conn.ReadAt(ctx, buf, 0, 0) == nil}
		}()
	}
	leader, found := -1, 0
	for range n {
		r := <-ch
		if r.ok {
			leader = r.i
			found++
		}
	}
	if found != 1 {
		return -1
	}
	return leader
}

// ErrNoLeader is returned by WaitLeader when no single leader emerged.
var ErrNoLeader = errors.New("testbin: no single leader")

// WaitLeader polls LeaderOf until one host leads vol, for up to timeout.
// Safe from any goroutine.
func (c *Cluster) WaitLeader(vol string, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for {
		if l := c.LeaderOf(vol); l >= 0 {
			return l, nil
		}
		if time.Now().After(deadline) {
			return -1, fmt.Errorf("%w of volume %s within %v", ErrNoLeader, vol, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Leader is WaitLeader that fails the test after 30 s.
func (c *Cluster) Leader(vol string) int {
	c.t.Helper()
	l, err := c.WaitLeader(vol, 30*time.Second)
	if err != nil {
		c.t.Fatal(err)
	}
	return l
}

// Followers returns the running hosts other than leader.
func (c *Cluster) Followers(leader int) []int {
	var out []int
	for i, n := range c.Nodes {
		if i != leader && n.Running() {
			out = append(out, i)
		}
	}
	return out
}

var (
	spawnOnce sync.Once
	spawnCh   chan func()
)

// startOnSpawnThread starts cmd from one OS thread that never exits. The
// kernel sends a child its Pdeathsig when the *thread* that forked it
// exits, and the Go runtime ends threads: any goroutine that exits while
// locked to its thread (as tests do after entering a network namespace
// with setns) takes its thread with it, and that thread may have forked an
// agent earlier. Forking only from a thread locked to a goroutine that
// never ends ties the signal to the death of the test process alone.
func startOnSpawnThread(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnCh = make(chan func())
		go func() {
			runtime.LockOSThread()
			for f := range spawnCh {
				f()
			}
		}()
	})
	errc := make(chan error, 1)
	spawnCh <- func() { errc <- cmd.Start() }
	return <-errc
}
