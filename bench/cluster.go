package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/tandem-project/tandem/nbd/nbdclient"
	"github.com/tandem-project/tandem/raftlog"
	"github.com/tandem-project/tandem/volume"
)

// clusterIPs are the loopback addresses of the cluster's hosts n1, n2 and
// n3 (every address of 127.0.0.0/8 is local on Linux).
var clusterIPs = [...]string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}

// ClusterVolume is the volume a Cluster serves, replicated on every host,
// and PreferredLeader the host that leads it while healthy.
const (
	ClusterVolume   = "vol0"
	PreferredLeader = "n1"
)

// Cluster is a real three-host Tandem cluster run by the harness: three
// "tandem agent" child processes, n1, n2 and n3, on 127.0.0.1, 127.0.0.2
// and 127.0.0.3 with free ports, each with its own data directory, the
// same --peer list and the volume ClusterVolume replicated on all three
// (preferred leader n1). Unlike "tandem dev", which runs the three agents
// in one process, one agent can be killed while the others go on.
//
// Every agent process is registered with the run's supervisor, so it is
// stopped when the run ends, fails or is interrupted. A Cluster is safe for
// concurrent use.
type Cluster struct {
	bin    string
	size   int64
	agents []*clusterAgent
	http   *http.Client
}

// clusterAgent is one host of a Cluster. Its addresses and data directory
// stay the same across restarts.
type clusterAgent struct {
	name                 string
	dataDir              string
	raft, nbd, adminAddr string
	bin                  string
	log                  io.Writer
	sup                  *supervisor

	mu     sync.Mutex
	proc   *child // nil before the first start
	starts int
}

// VolumeStatus is an agent's view of the volume, as its admin API reports
// it (its element of GET /v1/local/volumes).
type VolumeStatus = raftlog.VolumeStatus

// startCluster starts a three-host cluster under dir with a volume of
// size bytes, waits until every agent serves NBD and the preferred leader
// leads the volume and serves it, and returns it. logs opens the log of each
// agent (named n1, n2, n3). A port taken by another program between its
// choice and the agent's bind makes the agent exit: the cluster is then
// started again from scratch on new ports, up to three times.
func startCluster(ctx context.Context, bin, dir string, size int64, logs func(agent string) (io.Writer, error), sup *supervisor) (*Cluster, error) {
	outs := make([]io.Writer, len(clusterIPs))
	for i := range clusterIPs {
		var err error
		if outs[i], err = logs("n" + strconv.Itoa(i+1)); err != nil {
			return nil, err
		}
	}
	var lastErr error
	for attempt := 1; attempt <= 3; attempt++ {
		c, err := tryStartCluster(ctx, bin, filepath.Join(dir, "attempt-"+strconv.Itoa(attempt)), size, outs, sup)
		if err == nil {
			return c, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	return nil, fmt.Errorf("starting a 3-agent cluster: %w", lastErr)
}

func tryStartCluster(ctx context.Context, bin, dir string, size int64, outs []io.Writer, sup *supervisor) (*Cluster, error) {
	c := &Cluster{bin: bin, size: size, http: &http.Client{Timeout: 2 * time.Second}}
	for i, ip := range clusterIPs {
		a := &clusterAgent{name: "n" + strconv.Itoa(i+1), bin: bin, sup: sup, log: outs[i]}
		a.dataDir = filepath.Join(dir, a.name)
		for _, p := range []*string{&a.raft, &a.nbd, &a.adminAddr} {
			port, err := freePortOn(ip)
			if err != nil {
				return nil, err
			}
			*p = net.JoinHostPort(ip, strconv.Itoa(port))
		}
		c.agents = append(c.agents, a)
	}
	for _, a := range c.agents {
		if err := a.spawn(c.args(a)); err != nil {
			c.Stop()
			return nil, err
		}
	}
	for _, a := range c.agents {
		if err := c.waitServing(ctx, a.name, 60*time.Second); err != nil {
			c.Stop()
			return nil, err
		}
	}
	// The first leader elected hands leadership to the preferred one as
	// soon as it can: wait for that, so that the cluster starts stable.
	if _, _, err := waitLeaderIs(ctx, c, PreferredLeader, 60*time.Second); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// freePortOn returns a TCP port that was free on ip a moment ago.
func freePortOn(ip string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, fmt.Errorf("finding a free port on %s: %w", ip, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// args returns the command line of agent a.
func (c *Cluster) args(a *clusterAgent) []string {
	args := []string{"--log-format", "text", "--log-level", "info",
		"agent", "--name", a.name, "--data", a.dataDir,
		"--raft-listen", a.raft, "--nbd-listen", a.nbd, "--admin-listen", a.adminAddr}
	for _, p := range c.agents {
		args = append(args, "--peer", fmt.Sprintf("%s,raft=%s,nbd=%s", p.name, p.raft, p.nbd))
	}
	return append(args, "--volume", fmt.Sprintf("%s=%s,leader=%s", ClusterVolume, volume.FormatSize(c.size), PreferredLeader))
}

// spawn starts the agent's process without waiting for it to serve.
func (a *clusterAgent) spawn(args []string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.proc != nil && !a.proc.done() {
		return fmt.Errorf("agent %s is already running (pid %d)", a.name, a.proc.cmd.Process.Pid)
	}
	a.starts++
	fmt.Fprintf(a.log, "=== harness: start %d of agent %s at %s\n", a.starts, a.name, time.Now().UTC().Format(time.RFC3339Nano))
	c, err := startChild("tandem-agent-"+a.name, a.log, a.bin, args...)
	if err != nil {
		return fmt.Errorf("agent %s: %w", a.name, err)
	}
	a.proc = c
	a.sup.add(c.info(), func() error { return c.stop(15 * time.Second) })
	return nil
}

// running returns the agent's live process, or nil.
func (a *clusterAgent) running() *child {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.proc == nil || a.proc.done() {
		return nil
	}
	return a.proc
}

// agent returns the agent called name.
func (c *Cluster) agent(name string) (*clusterAgent, error) {
	for _, a := range c.agents {
		if a.name == name {
			return a, nil
		}
	}
	return nil, fmt.Errorf("the cluster has no agent %q", name)
}

// Agents returns the names of the cluster's agents: n1, n2, n3.
func (c *Cluster) Agents() []string {
	var out []string
	for _, a := range c.agents {
		out = append(out, a.name)
	}
	return out
}

// Endpoint returns where agent name serves the volume over NBD.
func (c *Cluster) Endpoint(name string) (Endpoint, error) {
	a, err := c.agent(name)
	if err != nil {
		return Endpoint{}, err
	}
	return Endpoint{Network: "tcp", Addr: a.nbd, Export: ClusterVolume}, nil
}

// Running reports whether agent name's process is running.
func (c *Cluster) Running(name string) bool {
	a, err := c.agent(name)
	return err == nil && a.running() != nil
}

// Describe says what runs, for reports.
func (c *Cluster) Describe() string {
	s := fmt.Sprintf("3 tandem agent processes (%s %s", c.bin, "agent")
	for _, a := range c.agents {
		s += fmt.Sprintf(", %s: nbd %s admin %s", a.name, a.nbd, a.adminAddr)
	}
	return s + fmt.Sprintf("), volume %s of %s replicated on all three, preferred leader %s", ClusterVolume, fmtSize(c.size), PreferredLeader)
}

// Status asks agent name's admin API for its view of the volume.
func (c *Cluster) Status(ctx context.Context, name string) (VolumeStatus, error) {
	a, err := c.agent(name)
	if err != nil {
		return VolumeStatus{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a.adminAddr+"/v1/local/volumes", nil)
	if err != nil {
		return VolumeStatus{}, fmt.Errorf("agent %s: %w", name, err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return VolumeStatus{}, fmt.Errorf("agent %s admin API: %w", name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return VolumeStatus{}, fmt.Errorf("agent %s admin API: %s: %s", name, resp.Status, b)
	}
	var vs []VolumeStatus
	if err := json.NewDecoder(resp.Body).Decode(&vs); err != nil {
		return VolumeStatus{}, fmt.Errorf("agent %s admin API: decoding the volume status: %w", name, err)
	}
	for _, st := range vs {
		if st.Name == ClusterVolume {
			return st, nil
		}
	}
	return VolumeStatus{}, fmt.Errorf("agent %s admin API: no volume %s among its replicas", name, ClusterVolume)
}

// Leader returns the agent that leads the volume and serves it now (its
// own admin API says it is the raft leader and holds its read lease), or
// "" if no running agent does.
func (c *Cluster) Leader(ctx context.Context) (string, VolumeStatus, error) {
	type answer struct {
		name string
		st   VolumeStatus
		err  error
	}
	var live []string
	for _, a := range c.agents {
		if a.running() != nil {
			live = append(live, a.name)
		}
	}
	ch := make(chan answer, len(live))
	for _, n := range live {
		go func() {
			st, err := c.Status(ctx, n)
			ch <- answer{n, st, err}
		}()
	}
	var (
		leader string
		lst    VolumeStatus
		errs   []error
	)
	for range live {
		a := <-ch
		switch {
		case a.err != nil:
			errs = append(errs, a.err)
		case a.st.State == "Leader" && a.st.Serving:
			if leader != "" {
				return "", VolumeStatus{}, fmt.Errorf("agents %s and %s both say they lead %s", leader, a.name, ClusterVolume)
			}
			leader, lst = a.name, a.st
		}
	}
	if leader == "" && len(errs) > 0 && len(errs) == len(live) {
		return "", VolumeStatus{}, errors.Join(errs...)
	}
	return leader, lst, nil
}

// WaitLeader polls the running agents every 10 ms until one other than
// not leads the volume and serves it, for at most timeout, and returns it
// with its status.
func (c *Cluster) WaitLeader(ctx context.Context, not string, timeout time.Duration) (string, VolumeStatus, error) {
	deadline := time.Now().Add(timeout)
	for {
		l, st, err := c.Leader(ctx)
		if err == nil && l != "" && l != not {
			return l, st, nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = errors.New("no agent leads and serves it")
			}
			return "", VolumeStatus{}, fmt.Errorf("no new leader of %s within %v: %w", ClusterVolume, timeout, err)
		}
		select {
		case <-ctx.Done():
			return "", VolumeStatus{}, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Kill kills agent name with SIGKILL, as a crash would, and waits until
// its process is gone.
func (c *Cluster) Kill(name string) error {
	a, err := c.agent(name)
	if err != nil {
		return err
	}
	p := a.running()
	if p == nil {
		return fmt.Errorf("agent %s is not running", name)
	}
	p.kill()
	return nil
}

// Restart starts agent name again on the same data and addresses and
// waits until it serves NBD (it serves the volume before it has caught
// up: see WaitCaughtUp).
func (c *Cluster) Restart(ctx context.Context, name string) error {
	a, err := c.agent(name)
	if err != nil {
		return err
	}
	if err := a.spawn(c.args(a)); err != nil {
		return err
	}
	return c.waitServing(ctx, name, 60*time.Second)
}

// KillAll kills every running agent at once with SIGKILL (a crash of the
// whole cluster) and waits until they are gone.
func (c *Cluster) KillAll() {
	var ps []*child
	for _, a := range c.agents {
		if p := a.running(); p != nil {
			ps = append(ps, p)
		}
	}
	for _, p := range ps {
		_ = p.cmd.Process.Kill()
	}
	for _, p := range ps {
		<-p.exited
	}
}

func (c *Cluster) crash()                            { c.KillAll() }
func (c *Cluster) restart(ctx context.Context) error { return c.RestartAll(ctx) }

// RestartAll starts every stopped agent again and waits until all serve
// NBD and one leads the volume.
func (c *Cluster) RestartAll(ctx context.Context) error {
	var names []string
	for _, a := range c.agents {
		if a.running() != nil {
			continue
		}
		if err := a.spawn(c.args(a)); err != nil {
			return err
		}
		names = append(names, a.name)
	}
	for _, n := range names {
		if err := c.waitServing(ctx, n, 60*time.Second); err != nil {
			return err
		}
	}
	_, _, err := c.WaitLeader(ctx, "", 60*time.Second)
	return err
}

// Stop stops every agent (SIGTERM, then SIGKILL after 15 s) and returns
// the errors joined.
func (c *Cluster) Stop() error {
	var wg sync.WaitGroup
	errs := make([]error, len(c.agents))
	for i, a := range c.agents {
		if p := a.running(); p != nil {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = p.stop(15 * time.Second)
			}()
		}
	}
	wg.Wait()
	return errors.Join(errs...)
}

// waitServing waits until agent name completes an NBD handshake for the
// volume and answers on its admin API, failing early if its process
// exits.
func (c *Cluster) waitServing(ctx context.Context, name string, timeout time.Duration) error {
	a, err := c.agent(name)
	if err != nil {
		return err
	}
	a.mu.Lock()
	p := a.proc
	a.mu.Unlock()
	deadline := time.Now().Add(timeout)
	var last error
	for {
		if p.done() {
			return fmt.Errorf("agent %s exited before serving NBD: %v (see its log)", name, p.err)
		}
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		conn, err := nbdclient.Dial(dctx, "tcp", a.nbd, nbdclient.Options{Export: ClusterVolume})
		if err == nil {
			conn.Close()
			_, err = c.Status(dctx, name)
		}
		cancel()
		if err == nil {
			return nil
		}
		last = err
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent %s does not serve NBD after %v: %w (see its log)", name, timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// WaitCaughtUp waits until agent name follows (or leads) the volume under
// a leader it knows, and has applied every entry the leader had committed
// when the wait began, for at most timeout. It returns the leader it found
// and the index the agent had to reach.
func (c *Cluster) WaitCaughtUp(ctx context.Context, name string, timeout time.Duration) (leader string, target uint64, err error) {
	deadline := time.Now().Add(timeout)
	for {
		var st VolumeStatus
		leader, st, err = c.Leader(ctx)
		if err == nil && leader != "" {
			target = st.CommitIndex
			break
		}
		if time.Now().After(deadline) {
			return "", 0, fmt.Errorf("waiting for %s to catch up: no leader within %v: %v", name, timeout, err)
		}
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return "", 0, err
		}
	}
	var last VolumeStatus
	for {
		st, err := c.Status(ctx, name)
		if err == nil {
			last = st
			if st.Error == "" && (st.State == "Follower" || st.State == "Leader") && st.Leader != "" && st.AppliedIndex >= target {
				return leader, target, nil
			}
		}
		if time.Now().After(deadline) {
			return leader, target, fmt.Errorf("agent %s did not catch up within %v: it is %s, knows leader %q, applied index %d, wants %d (last error %v)",
				name, timeout, last.State, last.Leader, last.AppliedIndex, target, err)
		}
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return leader, target, err
		}
	}
}

// sleepCtx sleeps for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}
