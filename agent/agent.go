// Package agent runs the Tandem agent of one host: it opens the host's
// volumes and serves them as NBD exports on TCP and unix-socket listeners
// until its context ends, then shuts down cleanly.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-project/tandem/nbd"
	"github.com/tandem-project/tandem/volume"
	"github.com/tandem-project/tandem/volume/blockfile"
)

// VolumeSpec declares one volume served by the agent.
type VolumeSpec struct {
	// Name is the volume and export name.
	Name string
	// Size in bytes. An existing volume smaller than Size is grown; a larger
	// one is an error.
	Size int64
	// ReadOnly serves the volume read-only.
	ReadOnly bool
}

// Config is the configuration of one agent.
type Config struct {
	// DataDir holds the volume files (DataDir/volumes/NAME.img).
	DataDir string
	// NBDAddr is the TCP address of the NBD listener ("" for none).
	NBDAddr string
	// NBDSocket is the path of a unix-socket NBD listener ("" for none).
	NBDSocket string
	// Volumes lists the volumes to serve.
	Volumes []VolumeSpec
	// DefaultExport is served to clients that ask for the empty export name.
	DefaultExport string
	// NBD tunes the NBD server.
	NBD nbd.Config
	// ShutdownTimeout bounds the wait for requests in flight at shutdown.
	ShutdownTimeout time.Duration
	// Logger receives the agent's logs. Nil discards.
	Logger *slog.Logger
	// Ready, if set, is called once every listener accepts connections.
	Ready func(Listening)
}

// Listening reports where a running agent accepts connections.
type Listening struct {
	NBDAddr   net.Addr // nil without a TCP listener
	NBDSocket string   // "" without a unix listener
}

// DefaultConfig returns an agent configuration with the NBD port 10809 on
// loopback and no volumes.
func DefaultConfig() Config {
	return Config{
		NBDAddr:         "127.0.0.1:10809",
		NBD:             nbd.DefaultConfig(),
		ShutdownTimeout: 10 * time.Second,
	}
}

// Validate reports the first problem with c.
func (c Config) Validate() error {
	if c.DataDir == "" {
		return errors.New("agent: data directory is required")
	}
	if c.NBDAddr == "" && c.NBDSocket == "" {
		return errors.New("agent: no NBD listener: set a TCP address or a unix socket")
	}
	if len(c.Volumes) == 0 {
		return errors.New("agent: no volumes to serve")
	}
	seen := map[string]bool{}
	for _, v := range c.Volumes {
		if err := volume.ValidateName(v.Name); err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		if seen[v.Name] {
			return fmt.Errorf("agent: volume %q declared twice", v.Name)
		}
		seen[v.Name] = true
		if v.Size <= 0 {
			return fmt.Errorf("agent: volume %q: size must be positive, got %d", v.Name, v.Size)
		}
	}
	if c.DefaultExport != "" && !seen[c.DefaultExport] {
		return fmt.Errorf("agent: default export %q is not a declared volume", c.DefaultExport)
	}
	if c.ShutdownTimeout <= 0 {
		return fmt.Errorf("agent: shutdown timeout must be positive, got %v", c.ShutdownTimeout)
	}
	return c.NBD.Validate()
}

// lockDataDir takes an exclusive lock on dir for the life of the agent, so
// that two agents never serve (and write) the same volume files. The lock is
// released by the kernel if the agent dies.
func lockDataDir(dir string) (unlock func(), err error) {
	path := filepath.Join(dir, "agent.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		owner, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("agent: data directory %s is in use by another agent (pid %s)", dir, strings.TrimSpace(string(owner)))
		}
		return nil, fmt.Errorf("agent: locking %s: %w", path, err)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return func() { f.Close() }, nil
}

// Run serves the configured volumes until ctx ends, then stops accepting,
// lets requests in flight finish (up to ShutdownTimeout), flushes and closes
// the volumes.
func Run(ctx context.Context, cfg Config) (err error) {
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	volDir := filepath.Join(cfg.DataDir, "volumes")
	if err := os.MkdirAll(volDir, 0o700); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	unlock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return err
	}
	defer unlock()

	var exports []nbd.Export
	defer func() {
		for _, e := range exports {
			if cerr := e.Backend.Close(); cerr != nil && err == nil {
				err = fmt.Errorf("agent: closing volume %s: %w", e.Name, cerr)
			}
		}
	}()
	for _, v := range cfg.Volumes {
		path := filepath.Join(volDir, v.Name+".img")
		b, err := blockfile.Open(path, blockfile.Options{Size: v.Size, Create: true, ReadOnly: v.ReadOnly})
		if errors.Is(err, os.ErrNotExist) && v.ReadOnly {
			return fmt.Errorf("agent: volume %s is declared read-only but %s does not exist: serve it writable first, or check --data", v.Name, path)
		}
		if err != nil {
			return fmt.Errorf("agent: volume %s: %w", v.Name, err)
		}
		exports = append(exports, nbd.Export{Name: v.Name, Description: "tandem volume " + v.Name, Backend: b})
		log.Info("volume ready", "name", v.Name, "size", volume.FormatSize(b.Size()), "path", path, "read_only", v.ReadOnly)
	}

	ncfg := cfg.NBD
	ncfg.Logger = log
	srv := nbd.NewServer(nbd.NewStaticExports(cfg.DefaultExport, exports...), ncfg)

	var lns []net.Listener
	var where Listening
	closeAll := func() {
		for _, l := range lns {
			l.Close()
		}
	}
	if cfg.NBDAddr != "" {
		l, err := net.Listen("tcp", cfg.NBDAddr)
		if err != nil {
			return fmt.Errorf("agent: NBD listener: %w", err)
		}
		lns = append(lns, l)
		where.NBDAddr = l.Addr()
	}
	if cfg.NBDSocket != "" {
		// A socket file left by a killed agent would make Listen fail.
		if fi, err := os.Lstat(cfg.NBDSocket); err == nil && fi.Mode()&os.ModeSocket != 0 {
			os.Remove(cfg.NBDSocket)
		}
		l, err := net.Listen("unix", cfg.NBDSocket)
		if err != nil {
			closeAll()
			return fmt.Errorf("agent: NBD unix listener: %w", err)
		}
		lns = append(lns, l)
		where.NBDSocket = cfg.NBDSocket
	}

	errc := make(chan error, len(lns))
	for _, l := range lns {
		log.Info("serving NBD", "addr", l.Addr().String())
		go func() { errc <- srv.Serve(l) }()
	}
	if cfg.Ready != nil {
		cfg.Ready(where)
	}

	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err = <-errc:
		log.Error("NBD listener failed", "err", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if serr := srv.Shutdown(sctx); serr != nil && err == nil {
		err = serr
	}
	if errors.Is(err, nbd.ErrServerClosed) {
		err = nil
	}
	return err
}
