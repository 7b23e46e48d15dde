package qemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ErrMigrationFailed is returned by WaitMigration when the migration ended
// failed or cancelled instead of reaching the state waited for.
var ErrMigrationFailed = errors.New("qemu: migration failed")

// MigrationState is the state of a live migration (QEMU's MigrationStatus).
type MigrationState string

// The migration states of QEMU 7.2 a precopy migration goes through.
const (
	// MigrationNone: no migration yet.
	MigrationNone MigrationState = "none"
	// MigrationSetup: connecting.
	MigrationSetup MigrationState = "setup"
	// MigrationActive: copying RAM while the guest runs (on the
	// destination: receiving).
	MigrationActive MigrationState = "active"
	// MigrationPreSwitchover: the source's guest is stopped, its disks
	// still active, waiting for MigrateContinue or MigrateCancel (with
	// pause-before-switchover, which Migrate sets).
	MigrationPreSwitchover MigrationState = "pre-switchover"
	// MigrationDevice: sending the device state after pre-switchover.
	MigrationDevice MigrationState = "device"
	// MigrationCompleted: done; the source has released its disks and is
	// in StatePostMigrate (QEMU may report StateFinishMigrate for a moment
	// after it reports the migration completed), the destination holds
	// the guest.
	MigrationCompleted MigrationState = "completed"
	// MigrationFailed: the migration failed; the source guest runs again
	// if it ran before.
	MigrationFailed MigrationState = "failed"
	// MigrationCancelling: MigrateCancel was called.
	MigrationCancelling MigrationState = "cancelling"
	// MigrationCancelled: cancelled; the source guest runs again if it ran
	// before.
	MigrationCancelled MigrationState = "cancelled"
)

// terminal reports whether a migration in state s is over.
func (s MigrationState) terminal() bool {
	return s == MigrationCompleted || s == MigrationFailed || s == MigrationCancelled
}

// MigrationInfo is query-migrate's report of the current (or last)
// migration. Times and sizes QEMU did not report are zero.
type MigrationInfo struct {
	State MigrationState
	// Transferred, Remaining and Total are RAM bytes: sent so far, still
	// dirty, and the guest's RAM size.
	Transferred, Remaining, Total int64
	// Passes is the number of passes over RAM (dirty-sync-count).
	Passes int64
	// MBps is the current transfer rate in megabits per second.
	MBps float64
	// TotalTime is the time since the migration started (its duration once
	// completed); SetupTime the time it took to set up.
	TotalTime, SetupTime time.Duration
	// ExpectedDowntime is QEMU's estimate while active; Downtime the time
	// the guest was stopped, once completed (on the source, including the
	// time spent in pre-switchover).
	ExpectedDowntime, Downtime time.Duration
	// Error is QEMU's description of a failure.
	Error string
	// Listening are the URIs a destination listens on (after
	// MigrateIncoming), e.g. "tcp:127.0.0.1:40123".
	Listening []string
}

// migrateInfo is the wire form of query-migrate's reply.
type migrateInfo struct {
	Status MigrationState `json:"status"`
	RAM    *struct {
		Transferred    int64   `json:"transferred"`
		Remaining      int64   `json:"remaining"`
		Total          int64   `json:"total"`
		DirtySyncCount int64   `json:"dirty-sync-count"`
		MBps           float64 `json:"mbps"`
	} `json:"ram"`
	TotalTime        int64  `json:"total-time"`
	SetupTime        int64  `json:"setup-time"`
	ExpectedDowntime int64  `json:"expected-downtime"`
	Downtime         int64  `json:"downtime"`
	ErrorDesc        string `json:"error-desc"`
	SocketAddress    []struct {
		Type string `json:"type"`
		Host string `json:"host"`
		Port string `json:"port"`
		Path string `json:"path"`
	} `json:"socket-address"`
}

// MigrationStatus returns the state of the current or last migration
// (query-migrate).
func (p *Process) MigrationStatus(ctx context.Context) (MigrationInfo, error) {
	var w migrateInfo
	if err := p.execute(ctx, "query-migrate", nil, &w); err != nil {
		return MigrationInfo{}, err
	}
	ms := func(v int64) time.Duration { return time.Duration(v) * time.Millisecond }
	info := MigrationInfo{
		State:            w.Status,
		TotalTime:        ms(w.TotalTime),
		SetupTime:        ms(w.SetupTime),
		ExpectedDowntime: ms(w.ExpectedDowntime),
		Downtime:         ms(w.Downtime),
		Error:            w.ErrorDesc,
	}
	if info.State == "" {
		info.State = MigrationNone
	}
	if r := w.RAM; r != nil {
		info.Transferred, info.Remaining, info.Total = r.Transferred, r.Remaining, r.Total
		info.Passes, info.MBps = r.DirtySyncCount, r.MBps
	}
	for _, a := range w.SocketAddress {
		switch a.Type {
		case "inet":
			info.Listening = append(info.Listening, "tcp:"+net.JoinHostPort(a.Host, a.Port))
		case "unix":
			info.Listening = append(info.Listening, "unix:"+a.Path)
		}
	}
	return info, nil
}

// capability is one entry of migrate-set-capabilities.
type capability struct {
	Capability string `json:"capability"`
	State      bool   `json:"state"`
}

// setCapabilities turns the named migration capabilities on.
func (p *Process) setCapabilities(ctx context.Context, names ...string) error {
	caps := make([]capability, len(names))
	for i, n := range names {
		caps[i] = capability{n, true}
	}
	return p.execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": caps}, nil)
}

// migrationTLSID is the QOM id of the migration's TLS credentials.
const migrationTLSID = "tandem-migration-tls"

// addMigrationTLS creates the migration's x509 credentials from
// Options.MigrationTLSDir for endpoint ("server": the destination, which
// requires the source's certificate; "client": the source), replacing
// those of an earlier attempt.
func (p *Process) addMigrationTLS(ctx context.Context, endpoint string) error {
	_ = p.execute(ctx, "object-del", map[string]any{"id": migrationTLSID}, nil) // none yet: an error
	args := map[string]any{"qom-type": "tls-creds-x509", "id": migrationTLSID, "endpoint": endpoint, "dir": p.opts.MigrationTLSDir}
	if endpoint == "server" {
		args["verify-peer"] = true
	}
	return p.execute(ctx, "object-add", args, nil)
}

// migrationHost returns the host of a "tcp:HOST:PORT" migration URI.
func migrationHost(uri string) (string, error) {
	addr, ok := strings.CutPrefix(uri, "tcp:")
	host, _, err := net.SplitHostPort(addr)
	if !ok || err != nil {
		return "", fmt.Errorf("qemu: migration URI %q: want tcp:HOST:PORT for TLS", uri)
	}
	return host, nil
}

// DefaultMaxBandwidth is the migration bandwidth limit Migrate sets unless
// told otherwise: high enough not to limit a local or 10 Gbit/s link
// (QEMU's own default is 128 MiB/s).
const DefaultMaxBandwidth = 10 << 30

// MigrateParams tune an outgoing migration.
type MigrateParams struct {
	// MaxBandwidth limits the migration stream in bytes per second
	// (0: DefaultMaxBandwidth).
	MaxBandwidth int64
	// DowntimeLimit is the longest the guest may be stopped for the last
	// RAM pass; QEMU keeps copying until it estimates the rest fits
	// (0: QEMU's default, 300 ms). It does not count the time spent in
	// pre-switchover.
	DowntimeLimit time.Duration
}

// Migrate starts a live migration of this VM to uri ("tcp:HOST:PORT", a
// destination's MigrateIncoming address) and returns once it started. It
// sets the capabilities "events" (MIGRATION events) and
// "pause-before-switchover": once RAM has converged the source stops its
// guest and waits in MigrationPreSwitchover with its disks still active,
// which is where the caller puts its disk barrier or fence before
// MigrateContinue (or MigrateCancel). Follow it with WaitMigration.
func (p *Process) Migrate(ctx context.Context, uri string, params MigrateParams) error {
	if err := p.setCapabilities(ctx, "events", "pause-before-switchover"); err != nil {
		return err
	}
	if params.MaxBandwidth == 0 {
		params.MaxBandwidth = DefaultMaxBandwidth
	}
	set := map[string]any{"max-bandwidth": params.MaxBandwidth}
	if params.DowntimeLimit > 0 {
		set["downtime-limit"] = params.DowntimeLimit.Milliseconds()
	}
	if p.opts.MigrationTLSDir != "" {
		host, err := migrationHost(uri)
		if err != nil {
			return err
		}
		if err := p.addMigrationTLS(ctx, "client"); err != nil {
			return err
		}
		set["tls-creds"], set["tls-hostname"] = migrationTLSID, host
	}
	if err := p.execute(ctx, "migrate-set-parameters", set, nil); err != nil {
		return err
	}
	p.log.Info("migration starting", "to", uri, "tls", p.opts.MigrationTLSDir != "")
	return p.execute(ctx, "migrate", map[string]any{"uri": uri}, nil)
}

// MigrateContinue lets a source waiting in MigrationPreSwitchover finish:
// it sends the device state, releases (inactivates, flushing) its disks and
// ends in StatePostMigrate.
func (p *Process) MigrateContinue(ctx context.Context) error {
	return p.execute(ctx, "migrate-continue", map[string]any{"state": MigrationPreSwitchover}, nil)
}

// MigrateCancel cancels the outgoing migration (migrate_cancel). The
// destination QEMU fails its incoming migration and exits. QEMU 7.2
// resumes a source guest that ran before the migration by itself, also
// from pre-switchover: the caller must undo any fence it set for the
// destination first.
func (p *Process) MigrateCancel(ctx context.Context) error {
	return p.execute(ctx, "migrate_cancel", nil, nil)
}

// MigrateIncoming makes a VM started with Spec.Incoming listen for the
// migration stream on uri ("tcp:HOST:PORT"; port 0 picks a free port) and
// returns the URI it listens on, for the source's Migrate. It sets the
// capabilities "events" and "late-block-activate": when the migration
// completes the VM stays paused (StatePaused) with its disks inactive
// until Cont, so the source's last writes and the caller's handover come
// before the destination's first.
func (p *Process) MigrateIncoming(ctx context.Context, uri string) (string, error) {
	if !p.spec.Incoming {
		return "", fmt.Errorf("qemu: VM %s was not started as a migration destination (Spec.Incoming)", p.spec.Name)
	}
	if err := p.setCapabilities(ctx, "events", "late-block-activate"); err != nil {
		return "", err
	}
	if p.opts.MigrationTLSDir != "" {
		if err := p.addMigrationTLS(ctx, "server"); err != nil {
			return "", err
		}
		if err := p.execute(ctx, "migrate-set-parameters", map[string]any{"tls-creds": migrationTLSID}, nil); err != nil {
			return "", err
		}
	}
	if err := p.execute(ctx, "migrate-incoming", map[string]any{"uri": uri}, nil); err != nil {
		return "", err
	}
	info, err := p.MigrationStatus(ctx)
	if err != nil {
		return "", err
	}
	if len(info.Listening) == 0 {
		return "", fmt.Errorf("qemu: VM %s: migrate-incoming %s: QEMU reports no listening address", p.spec.Name, uri)
	}
	p.log.Info("waiting for an incoming migration", "on", info.Listening[0])
	return info.Listening[0], nil
}

// migrationPoll is how often WaitMigration reads the state in addition to
// watching MIGRATION events.
const migrationPoll = 200 * time.Millisecond

// WaitMigration waits until the migration reaches one of states and
// returns its info then. It returns an error wrapping ErrMigrationFailed
// if the migration ends (completed, failed or cancelled) in a state not
// among states, ErrExited if QEMU exits, or ctx's error.
func (p *Process) WaitMigration(ctx context.Context, states ...MigrationState) (MigrationInfo, error) {
	sub := p.qmp.Subscribe()
	defer func() { sub.Close() }()
	for {
		info, err := p.MigrationStatus(ctx)
		if err != nil {
			return info, err
		}
		if slices.Contains(states, info.State) {
			return info, nil
		}
		if info.State.terminal() {
			return info, fmt.Errorf("%w: VM %s: migration %s (waiting for %v)%s",
				ErrMigrationFailed, p.spec.Name, info.State, states, quoteIf(info.Error))
		}
		t := time.NewTimer(migrationPoll)
		select {
		case _, ok := <-sub.Events():
			if !ok { // dropped as slow, or the connection ended
				sub.Close()
				sub = p.qmp.Subscribe()
			}
		case <-t.C:
		case <-p.done:
		case <-ctx.Done():
		}
		t.Stop()
		if ctx.Err() != nil {
			return info, fmt.Errorf("qemu: VM %s: waiting for migration state %v (now %s): %w", p.spec.Name, states, info.State, ctx.Err())
		}
	}
}

// quoteIf returns ": " and s quoted, or "" for an empty s.
func quoteIf(s string) string {
	if s == "" {
		return ""
	}
	return ": " + strconv.Quote(s)
}
