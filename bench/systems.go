package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tandem-project/tandem/nbd/nbdclient"
	"github.com/tandem-project/tandem/volume"
)

// Role tells Tandem from the systems it is compared with.
type Role string

// Roles of the systems under test.
const (
	RoleTandem   Role = "tandem"
	RoleBaseline Role = "baseline"
)

// Names of the baselines the harness can start itself.
const (
	BaselineNbdkit    = "nbdkit"
	BaselineNBDServer = "nbd-server"
)

// System is one NBD server under test.
type System struct {
	// Name labels the system in reports ("tandem", "nbdkit", …).
	Name string `json:"name"`
	// Role is RoleTandem or RoleBaseline.
	Role Role `json:"role"`
	// URI is the NBD URI clients use.
	URI string `json:"uri"`
	// Started says the harness started (and stops) the server itself.
	Started bool `json:"started_by_harness"`
	// Version is what the server says its version is, when known.
	Version string `json:"version,omitempty"`
	// Description says what exactly runs (program, plugin, storage).
	Description string `json:"description"`

	ep      Endpoint
	proc    restarter // set when the harness runs Tandem
	cluster *Cluster  // set when that Tandem is a 3-agent cluster
}

// restarter is a Tandem the harness runs and can crash and restart whole.
type restarter interface {
	// crash kills every process of it with SIGKILL and waits until they
	// are gone.
	crash()
	// restart starts it again on the same data and addresses and waits
	// until it serves.
	restart(ctx context.Context) error
}

// Endpoint returns where the system serves its export.
func (s *System) Endpoint() Endpoint { return s.ep }

// CanRestart reports whether the harness runs this system's process and
// can kill and restart it (see Kill and Restart).
func (s *System) CanRestart() bool { return s.proc != nil }

// Cluster returns the three-agent cluster the system runs on, or nil when
// it is "tandem dev" or was given by URI.
func (s *System) Cluster() *Cluster { return s.cluster }

// Kill kills every process of the system with SIGKILL, as a crash would,
// and waits until they are gone.
func (s *System) Kill() error {
	if s.proc == nil {
		return fmt.Errorf("%s was not started by the harness: cannot kill it", s.Name)
	}
	s.proc.crash()
	return nil
}

// Restart starts the system's processes again on the same data and
// addresses and waits until it serves NBD.
func (s *System) Restart(ctx context.Context) error {
	if s.proc == nil {
		return fmt.Errorf("%s was not started by the harness: cannot restart it", s.Name)
	}
	if err := s.proc.restart(ctx); err != nil {
		return fmt.Errorf("restarting %s: %w", s.Name, err)
	}
	return nil
}

// servingRE matches the agent's log line announcing an NBD listener.
var servingRE = regexp.MustCompile(`msg="serving NBD"(?: \S+=\S+)*? addr=(\S+)`)

// tandemProc runs "tandem dev" as a child process.
type tandemProc struct {
	bin     string
	dataDir string
	size    int64
	log     io.Writer // receives the process's output (serialized)
	sup     *supervisor

	// raftPort, when not 0, is passed as --raft-port: a dev command that
	// replicates between hosts in the process takes it, and restarts must
	// reuse it.
	raftPort int
	// noAdmin turns off the dev cluster's admin endpoints (fixed ports
	// that a second dev cluster on the machine would hold).
	noAdmin bool

	mu   sync.Mutex
	addr string // host:port, fixed after the first start
	proc *child
}

// listenHost is the address tandem dev's first host serves NBD on.
const listenHost = "127.0.0.1"

// start starts tandem and waits for its NBD listener. The first start
// listens on a free port; restarts reuse it so clients can reconnect.
func (t *tandemProc) start(ctx context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	listen := t.addr
	if listen == "" {
		listen = listenHost + ":0"
	}
	args := []string{"--log-format", "text", "--log-level", "info",
		"dev", "--data", t.dataDir, "--nbd-listen", listen, "--size", volume.FormatSize(t.size)}
	if t.raftPort != 0 {
		args = append(args, "--raft-port", strconv.Itoa(t.raftPort))
	}
	if t.noAdmin {
		args = append(args, "--admin-port", "0")
	}
	pr, pw := io.Pipe()
	c, err := startChild("tandem", pw, t.bin, args...)
	if err != nil {
		pw.Close()
		return err
	}
	t.proc = c
	t.sup.add(c.info(), func() error { return c.stop(15 * time.Second) })
	addr := make(chan string, 1)
	go func() {
		defer pr.Close()
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(t.log, line)
			// The first host's TCP listener (a multi-host dev serves on
			// 127.0.0.2 and 127.0.0.3 too).
			if m := servingRE.FindStringSubmatch(line); m != nil && strings.HasPrefix(m[1], listenHost+":") {
				select {
				case addr <- m[1]:
				default:
				}
			}
		}
	}()
	go func() {
		<-c.exited
		pw.Close()
	}()
	select {
	case a := <-addr:
		t.addr = a
		return nil
	case <-c.exited:
		return fmt.Errorf("tandem dev exited before serving NBD: %v (see its log)", c.err)
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(30 * time.Second):
		return errors.New("tandem dev did not serve NBD within 30s (see its log)")
	}
}

func (t *tandemProc) crash() {
	t.mu.Lock()
	p := t.proc
	t.mu.Unlock()
	if p != nil {
		p.kill()
	}
}

func (t *tandemProc) restart(ctx context.Context) error { return t.start(ctx) }

// startTandem starts "tandem dev" on dataDir with one volume of size
// bytes.
func startTandem(ctx context.Context, bin, dataDir string, size int64, log io.Writer, sup *supervisor) (*System, error) {
	t := &tandemProc{bin: bin, dataDir: dataDir, size: size, log: log, sup: sup}
	if help := toolHelp(ctx, bin, "dev", "--help"); strings.Contains(help, "--raft-port") {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		t.raftPort = port
	}
	if strings.Contains(toolHelp(ctx, bin, "dev", "--help"), "--admin-port") {
		t.noAdmin = true
	}
	if err := t.start(ctx); err != nil {
		return nil, fmt.Errorf("starting tandem: %w", err)
	}
	ep := Endpoint{Network: "tcp", Addr: t.addr, Export: "vol0"}
	if err := waitNBD(ctx, ep, 30*time.Second); err != nil {
		return nil, fmt.Errorf("starting tandem: %w", err)
	}
	return &System{
		Name: "tandem", Role: RoleTandem, URI: ep.URI(), Started: true, ep: ep, proc: t,
		Version:     toolVersion(ctx, bin, "version"),
		Description: "tandem dev (the whole dev cluster in one child process), volume vol0, data in " + dataDir,
	}, nil
}

// startTandemCluster starts a three-agent cluster (see Cluster) with one
// volume of size bytes, waits until the preferred leader n1 leads it, and
// returns it as the system under test, served by n1.
func startTandemCluster(ctx context.Context, bin, dir string, size int64, logs func(string) (io.Writer, error), sup *supervisor) (*System, error) {
	c, err := startCluster(ctx, bin, dir, size, logs, sup)
	if err != nil {
		return nil, err
	}
	ep, err := c.Endpoint(PreferredLeader)
	if err != nil {
		return nil, err
	}
	return &System{
		Name: "tandem", Role: RoleTandem, URI: ep.URI(), Started: true, ep: ep, proc: c, cluster: c,
		Version:     toolVersion(ctx, bin, "version"),
		Description: c.Describe() + "; the client uses the leader n1",
	}, nil
}

// startNbdkit serves file with "nbdkit file" on a free loopback port.
func startNbdkit(ctx context.Context, file, workDir string, log io.Writer, sup *supervisor) (*System, error) {
	prog, err := exec.LookPath("nbdkit")
	if err != nil {
		return nil, errors.New("nbdkit is not installed (Debian package nbdkit); leave it out with --baselines")
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		pidFile := filepath.Join(workDir, "nbdkit.pid")
		os.Remove(pidFile)
		c, err := startChild("nbdkit", log, prog, "-f", "--exit-with-parent",
			"-i", "127.0.0.1", "-p", strconv.Itoa(port), "-P", pidFile, "file", file)
		if err != nil {
			return nil, err
		}
		sup.add(c.info(), func() error { return c.stop(10 * time.Second) })
		ep := Endpoint{Network: "tcp", Addr: "127.0.0.1:" + strconv.Itoa(port)}
		if err := waitFile(ctx, pidFile, 10*time.Second, c.exited); err != nil {
			lastErr = fmt.Errorf("nbdkit did not start: %w (see its log)", err)
			c.stop(5 * time.Second)
			continue
		}
		if err := waitNBD(ctx, ep, 10*time.Second); err != nil {
			lastErr = err
			c.stop(5 * time.Second)
			continue
		}
		return &System{
			Name: BaselineNbdkit, Role: RoleBaseline, URI: ep.URI(), Started: true, ep: ep,
			Version:     toolVersion(ctx, prog, "--version"),
			Description: "nbdkit file plugin on " + file,
		}, nil
	}
	return nil, fmt.Errorf("starting nbdkit: %w", lastErr)
}

// startNBDServer serves file with nbd-server on a free loopback port.
// nbd-server always detaches into a daemon; the harness stops it through
// its pid file.
func startNBDServer(ctx context.Context, file, workDir string, log io.Writer, sup *supervisor) (*System, error) {
	prog, err := exec.LookPath("nbd-server")
	if err != nil {
		return nil, errNotInstalled
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		conf := filepath.Join(workDir, "nbd-server.conf")
		pidFile := filepath.Join(workDir, "nbd-server.pid")
		os.Remove(pidFile)
		// flush and fua make it advertise and honour FLUSH (fdatasync), as
		// the durable workloads need.
		cfg := fmt.Sprintf("[generic]\n\tlistenaddr = 127.0.0.1\n\tport = %d\n[bench]\n\texportname = %s\n\tflush = true\n\tfua = true\n", port, file)
		if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
			return nil, fmt.Errorf("nbd-server config: %w", err)
		}
		c, err := startChild("nbd-server", log, prog, "-C", conf, "-p", pidFile)
		if err != nil {
			return nil, err
		}
		// The foreground process exits once the daemon has forked.
		select {
		case <-c.exited:
		case <-time.After(10 * time.Second):
			c.stop(time.Second)
		}
		if err := waitFile(ctx, pidFile, 10*time.Second, nil); err != nil {
			lastErr = fmt.Errorf("nbd-server did not start: %w (see its log)", err)
			continue
		}
		pid, err := readPID(pidFile)
		if err != nil {
			lastErr = err
			continue
		}
		sup.add(ProcessInfo{Name: "nbd-server", PID: pid, Command: prog + " -C " + conf + " -p " + pidFile}, daemonStopper("nbd-server", pid, 10*time.Second))
		ep := Endpoint{Network: "tcp", Addr: "127.0.0.1:" + strconv.Itoa(port), Export: "bench"}
		if err := waitNBD(ctx, ep, 10*time.Second); err != nil {
			lastErr = err
			daemonStopper("nbd-server", pid, 5*time.Second)()
			continue
		}
		return &System{
			Name: BaselineNBDServer, Role: RoleBaseline, URI: ep.URI(), Started: true, ep: ep,
			Version:     strings.TrimPrefix(toolVersion(ctx, prog, "-V"), "This is "),
			Description: "nbd-server (flush and fua on) on " + file,
		}, nil
	}
	return nil, fmt.Errorf("starting nbd-server: %w", lastErr)
}

// errNotInstalled marks an optional baseline that is not installed.
var errNotInstalled = errors.New("not installed")

// externalSystem is a server given by URI.
func externalSystem(name string, role Role, uri string) (*System, error) {
	ep, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	return &System{Name: name, Role: role, URI: uri, ep: ep, Description: "given by URI " + uri}, nil
}

// waitNBD waits until ep completes an NBD handshake.
func waitNBD(ctx context.Context, ep Endpoint, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		c, err := nbdclient.Dial(dctx, ep.Network, ep.Addr, nbdclient.Options{Export: ep.Export})
		cancel()
		if err == nil {
			c.Close()
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not answer NBD after %v: %w", ep.URI(), timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// prepareExport checks the export's size and fills its first size bytes
// with the generator's self-checking data, identically on every system,
// so that reads hit real data (and can be verified); then flushes.
func prepareExport(ctx context.Context, s *System, size int64) (time.Duration, error) {
	c, err := nbdclient.Dial(ctx, s.ep.Network, s.ep.Addr, nbdclient.Options{Export: s.ep.Export})
	if err != nil {
		return 0, fmt.Errorf("%s: %w", s.Name, err)
	}
	defer c.Close()
	if c.Size() < size {
		return 0, fmt.Errorf("%s: export %s has %d bytes, the benchmark needs %d (--size)", s.Name, s.URI, c.Size(), size)
	}
	if c.Flags()&nbdclient.FlagReadOnly != 0 {
		return 0, fmt.Errorf("%s: export %s is read-only", s.Name, s.URI)
	}
	start := time.Now()
	_, err = RunLoad(ctx, s.ep, LoadSpec{
		Workload: Workload{Name: "fill", BlockSize: 1 * mib, QueueDepth: 8, Conns: 1},
		Region:   size, OnePass: true, Verify: true, Seed: 1,
	})
	if err != nil {
		return 0, fmt.Errorf("filling %s: %w", s.Name, err)
	}
	if err := c.Flush(ctx); err != nil {
		return 0, fmt.Errorf("flushing %s after the fill: %w", s.Name, err)
	}
	return time.Since(start), nil
}
