package admin

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tandem-project/tandem/cluster/catalog"
	"github.com/tandem-project/tandem/raftlog"
)

// Cluster is what the cluster API needs from an agent in cluster mode.
// Methods that read or change the catalog run on the control leader: the
// handler forwards requests there first (see Leader).
type Cluster interface {
	// Leader returns the admin address of the control leader, and whether
	// this agent is the leader. ok is false when no leader is known.
	Leader() (addr string, self bool, ok bool)
	// ControlError says why this agent left the control plane (its
	// control write log failed), or is nil while it is a member.
	ControlError() error
	Status(ctx context.Context) (ClusterStatus, error)
	Hosts(ctx context.Context) ([]Host, error)
	Volumes(ctx context.Context) ([]Volume, error)
	Volume(ctx context.Context, name string) (Volume, error)
	CreateVolume(ctx context.Context, req CreateVolume) (Volume, error)
	ResizeVolume(ctx context.Context, name string, size int64) (Volume, error)
	DeleteVolume(ctx context.Context, name string, force bool) error
	// VolumeWriters returns, by volume name, the VM that has each volume
	// as a disk and its writer fields, which the handler adds to the
	// volume bodies.
	VolumeWriters(ctx context.Context) (map[string]VolumeWriter, error)
	// Local returns this agent's replicas and attachments (any agent).
	Local() []LocalVolume

	// VMs lists the catalog's VMs, each with its host's runtime report.
	VMs(ctx context.Context) ([]VM, error)
	// VM returns one VM (a StatusError 404 if there is none).
	VM(ctx context.Context, name string) (VM, error)
	// CreateVM records a new, stopped VM.
	CreateVM(ctx context.Context, req CreateVM) (VM, error)
	// StartVM records the VM as running on a host under a new writer
	// epoch (req.Host, or the default host StartVM documents).
	StartVM(ctx context.Context, name string, req StartVM) (VM, error)
	// StopVM records the VM as stopped; its disks' writer goes back to 0.
	StopVM(ctx context.Context, name string) (VM, error)
	// DeleteVM removes a stopped VM from the catalog (its disks stay).
	DeleteVM(ctx context.Context, name string) error
	// MigrateVM records a live migration of a running VM to req.To; the
	// agents of both hosts carry it out (docs/migration.md).
	MigrateVM(ctx context.Context, name string, req MigrateVM) (VM, error)
	// CancelMigration ends the VM's migration before its switchover (a
	// 409 once switched: the VM then completes on the destination).
	CancelMigration(ctx context.Context, name string) (VM, error)
	// MoveDisk records a move of disk n of a running VM to req.To (a
	// volume, or an external target); the agent of the VM's host
	// carries it out (docs/move-disk.md).
	MoveDisk(ctx context.Context, name string, n int, req MoveDisk) (VM, error)
	// CancelDiskMove ends the VM's move of disk n before its pivot (a 409
	// once pivoting: the move then completes).
	CancelDiskMove(ctx context.Context, name string, n int) (VM, error)
	// DrainHost sets or clears a host's drained flag: a drained host
	// takes no new replicas and its replicas are moved to other hosts.
	DrainHost(ctx context.Context, name string, drained bool) (Host, error)
	// MigrationStep records a step of a migration (an agent's internal
	// request, on the control leader) and returns its catalog index.
	MigrationStep(ctx context.Context, step MigrationStep) (uint64, error)
	// FenceLocal fences volume name through its log if this agent leads
	// it (a 409 StatusError otherwise), then moves its leadership to
	// req.Leader if that host holds a replica.
	FenceLocal(ctx context.Context, name string, req Fence) error
	// LocalVMs returns the VMs this agent's VM runtime knows (any agent;
	// empty without a runtime), once the runtime has acted on the catalog
	// up to minIndex: a VM it does not report then runs no QEMU here. It
	// waits for that at most until ctx ends, then fails.
	LocalVMs(ctx context.Context, minIndex uint64) ([]LocalVM, error)
}

// LocalVolume is one replica held by the answering agent, with the NBD
// connections attached to the volume there: the body of
// GET /v1/local/volumes, which the control leader gathers from the
// replicas' agents.
type LocalVolume struct {
	raftlog.VolumeStatus
	Attached int `json:"attached"`
	// FailedSince is when the agent first saw this replica fail, for a
	// failed one: attempts at opening it again do not reset it, serving
	// for a while does (agent/reopen.go).
	FailedSince time.Time `json:"failed_since,omitzero"`
}

// StatusError is an error with an HTTP status: Cluster methods return it
// for answers such as "not found" (404) or "exists" (409). A refused
// catalog command (an error wrapping one of package catalog's Err*
// sentinels) gets its status from the sentinel; other errors are 500s.
type StatusError struct {
	Code int
	Msg  string
}

func (e *StatusError) Error() string { return e.Msg }

// Errorf returns a StatusError.
func Errorf(code int, format string, args ...any) error {
	return &StatusError{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// forwardedHeader marks a request forwarded to the control leader, so a
// second hop (stale leader knowledge) answers 503 instead of bouncing.
const forwardedHeader = "X-Tandem-Forwarded-By"

// maxBody bounds request bodies.
const maxBody = 1 << 20

// routeCluster adds the cluster API to mux.
func (s *server) routeCluster(mux *http.ServeMux) {
	c := s.cfg.Cluster
	mux.HandleFunc("GET /v1/local/volumes", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, c.Local())
	})
	mux.HandleFunc("GET /v1/cluster", s.onLeader(false, func(w http.ResponseWriter, r *http.Request) {
		st, err := c.Status(r.Context())
		s.reply(w, http.StatusOK, st, err)
	}))
	mux.HandleFunc("GET /v1/hosts", s.onLeader(false, func(w http.ResponseWriter, r *http.Request) {
		hs, err := c.Hosts(r.Context())
		s.reply(w, http.StatusOK, hs, err)
	}))
	mux.HandleFunc("GET /v1/volumes", s.onLeader(false, func(w http.ResponseWriter, r *http.Request) {
		vs, err := c.Volumes(r.Context())
		if err == nil {
			err = s.addWriters(r.Context(), vs)
		}
		s.reply(w, http.StatusOK, vs, err)
	}))
	mux.HandleFunc("GET /v1/volumes/{name}", s.onLeader(false, func(w http.ResponseWriter, r *http.Request) {
		v, err := c.Volume(r.Context(), r.PathValue("name"))
		if err == nil {
			v, err = s.addWriter(r.Context(), v)
		}
		s.reply(w, http.StatusOK, v, err)
	}))
	mux.HandleFunc("POST /v1/volumes", s.onLeader(true, func(w http.ResponseWriter, r *http.Request) {
		var req CreateVolume
		if !decode(w, r, &req) {
			return
		}
		v, err := c.CreateVolume(r.Context(), req)
		if err == nil {
			v, err = s.addWriter(r.Context(), v)
		}
		s.reply(w, http.StatusCreated, v, err)
	}))
	mux.HandleFunc("PATCH /v1/volumes/{name}", s.onLeader(true, func(w http.ResponseWriter, r *http.Request) {
		var req ResizeVolume
		if !decode(w, r, &req) {
			return
		}
		if req.Size <= 0 {
			writeError(w, http.StatusBadRequest, "size: a positive size is required, e.g. {\"size\": \"2G\"}")
			return
		}
		v, err := c.ResizeVolume(r.Context(), r.PathValue("name"), int64(req.Size))
		if err == nil {
			v, err = s.addWriter(r.Context(), v)
		}
		s.reply(w, http.StatusOK, v, err)
	}))
	mux.HandleFunc("DELETE /v1/volumes/{name}", s.onLeader(true, func(w http.ResponseWriter, r *http.Request) {
		force := false
		switch f := r.URL.Query().Get("force"); f {
		case "", "false", "0":
		case "true", "1":
			force = true
		default:
			writeError(w, http.StatusBadRequest, fmt.Sprintf("force=%q: want true or false", f))
			return
		}
		name := r.PathValue("name")
		err := c.DeleteVolume(r.Context(), name, force)
		s.reply(w, http.StatusOK, map[string]string{"deleted": name}, err)
	}))
	s.routeVMs(mux)
	s.routeMoves(mux)
	s.routeVerify(mux)
}

// routeVMs adds the VM API to mux.
func (s *server) routeVMs(mux *http.ServeMux) {
	c := s.cfg.Cluster
	mux.HandleFunc("GET /v1/local/vms", func(w http.ResponseWriter, r *http.Request) {
		var min uint64
		if q := r.URL.Query().Get("min_index"); q != "" {
			var err error
			if min, err = strconv.ParseUint(q, 10, 64); err != nil {
				writeError(w, http.StatusBadRequest, fmt.Sprintf("min_index %q: not a catalog index", q))
				return
			}
		}
		vms, err := c.LocalVMs(r.Context(), min)
		if vms == nil {
			vms = []LocalVM{}
		}
		s.reply(w, http.StatusOK, vms, err)
	})
	mux.HandleFunc("GET /v1/vms", s.onLeader(false, func(w http.ResponseWriter, r *http.Request) {
		vms, err := c.VMs(r.Context())
		if vms == nil {
			vms = []VM{}
		}
		s.reply(w, http.StatusOK, vms, err)
	}))
	mux.HandleFunc("GET /v1/vms/{name}", s.onLeader(false, func(w http.ResponseWriter, r *http.Request) {
		vm, err := c.VM(r.Context(), r.PathValue("name"))
		s.reply(w, http.StatusOK, vm, err)
	}))
	mux.HandleFunc("POST /v1/vms", s.onLeader(true, func(w http.ResponseWriter, r *http.Request) {
		var req CreateVM
		if !decode(w, r, &req) {
			return
		}
		vm, err := c.CreateVM(r.Context(), req)
		s.reply(w, http.StatusCreated, vm, err)
	}))
	mux.HandleFunc("POST /v1/vms/{name}/start", s.onLeader(true, func(w http.ResponseWriter, r *http.Request) {
		var req StartVM
		if !decodeOptional(w, r, &req) {
			return
		}
		vm, err := c.StartVM(r.Context(), r.PathValue("name"), req)
		s.reply(w, http.StatusOK, vm, err)
	}))
	mux.HandleFunc("POST /v1/vms/{name}/stop", s.onLeader(true, func(w http.ResponseWriter, r *http.Request) {
		vm, err := c.StopVM(r.Context(), r.PathValue("name"))
		s.reply(w, http.StatusOK, vm, err)
	}))
	mux.HandleFunc("POST /v1/vms/{name}/migrate", s.onLeader(true, func(w http.ResponseWriter, r *http.Request) {
		var req MigrateVM
		if !decode(w, r, &req) {
			return
		}
		vm, err := c.MigrateVM(r.Context(), r.PathValue("name"), req)
		s.reply(w, http.StatusAccepted, vm, err)
	}))
	mux.HandleFunc("POST /v1/vms/{name}/migrate/cancel", s.onLeader(true, func(w http.ResponseWriter, r *http.Request) {
		vm, err := c.CancelMigration(r.Context(), r.PathValue("name"))
		s.reply(w, http.StatusOK, vm, err)
	}))
	mux.HandleFunc("POST /v1/vms/{name}/disks/{n}/move", s.onLeader(true, func(w http.ResponseWriter, r *http.Request) {
		n, ok := diskIndex(w, r)
		if !ok {
			return
		}
		var req MoveDisk
		if !decode(w, r, &req) {
			return
		}
		vm, err := c.MoveDisk(r.Context(), r.PathValue("name"), n, req)
		s.reply(w, http.StatusAccepted, vm, err)
	}))
	mux.HandleFunc("POST /v1/vms/{name}/disks/{n}/move/cancel", s.onLeader(true, func(w http.ResponseWriter, r *http.Request) {
		n, ok := diskIndex(w, r)
		if !ok {
			return
		}
		vm, err := c.CancelDiskMove(r.Context(), r.PathValue("name"), n)
		s.reply(w, http.StatusOK, vm, err)
	}))
	mux.HandleFunc("POST /v1/hosts/{name}/drain", s.onLeader(true, func(w http.ResponseWriter, r *http.Request) {
		h, err := c.DrainHost(r.Context(), r.PathValue("name"), true)
		s.reply(w, http.StatusOK, h, err)
	}))
	mux.HandleFunc("POST /v1/hosts/{name}/undrain", s.onLeader(true, func(w http.ResponseWriter, r *http.Request) {
		h, err := c.DrainHost(r.Context(), r.PathValue("name"), false)
		s.reply(w, http.StatusOK, h, err)
	}))
	mux.HandleFunc("POST /v1/internal/migration", s.onLeader(true, func(w http.ResponseWriter, r *http.Request) {
		var req MigrationStep
		if !decode(w, r, &req) {
			return
		}
		idx, err := c.MigrationStep(r.Context(), req)
		s.reply(w, http.StatusOK, Committed{Index: idx}, err)
	}))
	mux.HandleFunc("POST /v1/local/volumes/{name}/fence", func(w http.ResponseWriter, r *http.Request) {
		if !s.authorized(r) {
			writeError(w, http.StatusUnauthorized, "fencing needs the admin token")
			return
		}
		var req Fence
		if !decode(w, r, &req) {
			return
		}
		err := c.FenceLocal(r.Context(), r.PathValue("name"), req)
		s.reply(w, http.StatusOK, req, err)
	})
	mux.HandleFunc("DELETE /v1/vms/{name}", s.onLeader(true, func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		err := c.DeleteVM(r.Context(), name)
		s.reply(w, http.StatusOK, map[string]string{"deleted": name}, err)
	}))
}

// addWriters fills the VM and writer fields of volume bodies.
func (s *server) addWriters(ctx context.Context, vs []Volume) error {
	ws, err := s.cfg.Cluster.VolumeWriters(ctx)
	if err != nil {
		return err
	}
	for i := range vs {
		w := ws[vs[i].Name]
		vs[i].VM, vs[i].WriterEpoch, vs[i].WriterGen = w.VM, w.WriterEpoch, w.WriterGen
	}
	return nil
}

// addWriter is addWriters for one volume.
func (s *server) addWriter(ctx context.Context, v Volume) (Volume, error) {
	vs := []Volume{v}
	err := s.addWriters(ctx, vs)
	return vs[0], err
}

// onLeader wraps a cluster API handler: state-changing requests need the
// admin token; every request runs on the control leader (forwarded there
// when this agent does not lead).
func (s *server) onLeader(changes bool, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if changes && !s.authorized(r) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="tandem"`)
			writeError(w, http.StatusUnauthorized, "this request changes the cluster: send the admin token as \"Authorization: Bearer TOKEN\" (tandem CLI: --token, --token-file or TANDEM_ADMIN_TOKEN)")
			return
		}
		addr, self, ok := s.waitLeader(r.Context())
		switch {
		case !ok && s.cfg.Cluster.ControlError() != nil:
			writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("this agent left the control plane (%v): send the request to another agent; this one rejoins once its log opens again (--replica-retry, or as soon as a full disk has room), or when restarted", s.cfg.Cluster.ControlError()))
		case !ok:
			// Retry-After marks a request that was not carried out at
			// all: a client may send it again as is.
			w.Header().Set("Retry-After", "1")
			writeError(w, http.StatusServiceUnavailable, "the control plane has no leader right now (a majority of the control voters must be up); retry in a few seconds")
		case self:
			h(w, r)
		case r.Header.Get(forwardedHeader) != "":
			w.Header().Set("Retry-After", "1")
			writeError(w, http.StatusServiceUnavailable, "the control leader moved while forwarding the request; retry")
		default:
			s.forward(w, r, addr)
		}
	}
}

// leaderWait bounds how long a request waits for a control leader to be
// known (an election, or an agent that just started learning the leader).
const leaderWait = 5 * time.Second

// waitLeader returns the control leader, waiting up to leaderWait for one.
func (s *server) waitLeader(ctx context.Context) (addr string, self, ok bool) {
	deadline := time.Now().Add(leaderWait)
	for {
		if addr, self, ok = s.cfg.Cluster.Leader(); ok || time.Now().After(deadline) || s.cfg.Cluster.ControlError() != nil {
			return addr, self, ok
		}
		select {
		case <-ctx.Done():
			return "", false, false
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// authorized checks the bearer token in constant time.
func (s *server) authorized(r *http.Request) bool {
	if s.cfg.Token == "" {
		return false
	}
	got, ok := strings.CutPrefix(r.Header.Get(TokenHeader), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(s.cfg.Token)) == 1
}

// forward proxies r to the control leader's admin endpoint.
func (s *server) forward(w http.ResponseWriter, r *http.Request, addr string) {
	target, err := url.Parse(s.cfg.Peers.URL(addr))
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("control leader address %q: %v", addr, err))
		return
	}
	p := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Header.Set(forwardedHeader, s.cfg.Self)
		},
		Transport: s.client.Transport,
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("forwarding to the control leader at %s: %v; retry", addr, err))
		},
	}
	p.ServeHTTP(w, r)
}

// decode reads a JSON body into v, answering 400 with what is wrong.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		msg := err.Error()
		if errors.Is(err, io.EOF) {
			msg = "empty body"
		}
		writeError(w, http.StatusBadRequest, "request body: "+msg)
		return false
	}
	return true
}

// decodeOptional is decode for a body that may be absent (or empty).
func decodeOptional(w http.ResponseWriter, r *http.Request, v any) bool {
	b, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
	if err != nil {
		writeError(w, http.StatusBadRequest, "request body: "+err.Error())
		return false
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return true
	}
	r.Body = io.NopCloser(bytes.NewReader(b))
	return decode(w, r, v)
}

// reply writes v with code, or the error with its status.
func (s *server) reply(w http.ResponseWriter, code int, v any, err error) {
	if err == nil {
		writeJSON(w, code, v)
		return
	}
	var se *StatusError
	if errors.As(err, &se) {
		writeError(w, se.Code, se.Msg)
		return
	}
	if code, ok := catalogStatus(err); ok {
		writeError(w, code, strings.TrimPrefix(err.Error(), "catalog: "))
		return
	}
	if errors.Is(err, context.DeadlineExceeded) {
		writeError(w, http.StatusGatewayTimeout, err.Error())
		return
	}
	s.log.Warn("admin request failed", "err", err)
	writeError(w, http.StatusInternalServerError, err.Error())
}

// diskIndex reads the {n} of a VM disk path: a disk's index, from 0; it
// answers 400 itself to anything else.
func diskIndex(w http.ResponseWriter, r *http.Request) (int, bool) {
	n, err := strconv.Atoi(r.PathValue("n"))
	if err != nil || n < 0 {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("disk %q: want the disk's index in the VM's disks, from 0", r.PathValue("n")))
		return 0, false
	}
	return n, true
}

// catalogStatus returns the HTTP status of a refused catalog command.
func catalogStatus(err error) (int, bool) {
	switch {
	case errors.Is(err, catalog.ErrNotFound):
		return http.StatusNotFound, true
	case errors.Is(err, catalog.ErrInvalid), errors.Is(err, catalog.ErrShrinking):
		return http.StatusBadRequest, true
	case errors.Is(err, catalog.ErrExists), errors.Is(err, catalog.ErrNoPlace), errors.Is(err, catalog.ErrInUse),
		errors.Is(err, catalog.ErrRunning), errors.Is(err, catalog.ErrStopped), errors.Is(err, catalog.ErrNoDiskMove),
		errors.Is(err, catalog.ErrNoMigration), errors.Is(err, catalog.ErrNoMove):
		return http.StatusConflict, true
	}
	return 0, false
}
