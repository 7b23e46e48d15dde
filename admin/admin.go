// Package admin is an agent's admin HTTP endpoint: health and readiness
// probes, Prometheus metrics, and the versioned JSON API under /v1/ that the
// CLI talks to. Errors are JSON objects {"error": "..."} with the matching
// status code.
package admin

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"time"

	"github.com/tandem-project/tandem/raftlog"
)

// Config configures the admin handler.
type Config struct {
	// Host is the agent's replication layer.
	Host *raftlog.Host
	// Metrics serves /metrics (nil: 404).
	Metrics http.Handler
	// Version is reported by /v1/cluster.
	Version string
	// Logger receives request errors.
	Logger *slog.Logger
	// Cluster, in cluster mode, serves the cluster API (catalog reads and
	// changes on the control leader); without it the /v1/ endpoints
	// describe this host's fixed configuration, read-only, with the same
	// bodies (fixed.go).
	Cluster Cluster
	// Token is the admin token required by state-changing requests.
	Token string
	// Self is this agent's name (marks forwarded requests).
	Self string
	// Peers reaches the other agents' admin APIs, where requests for the
	// control leader are forwarded (nil: plain HTTP).
	Peers *Peers
	// Local lists the agent's local volumes (fixed mode; nil: none), shown
	// with the replicated ones by /v1/volumes, their replica's state
	// "Local".
	Local func() []raftlog.VolumeStatus
}

// Handler returns the admin HTTP handler.
func Handler(cfg Config) http.Handler {
	if cfg.Peers == nil {
		cfg.Peers = NewPeers(nil)
	}
	s := &server{cfg: cfg, log: cfg.Logger, client: cfg.Peers.Client(30 * time.Second)}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /readyz", s.readyz)
	if cfg.Metrics != nil {
		mux.Handle("GET /metrics", cfg.Metrics)
	}
	if cfg.Cluster != nil {
		s.routeCluster(mux)
	} else {
		mux.HandleFunc("GET /v1/cluster", s.cluster)
		mux.HandleFunc("GET /v1/hosts", s.hosts)
		mux.HandleFunc("GET /v1/volumes", s.volumes)
		mux.HandleFunc("GET /v1/volumes/{name}", s.volume)
		mux.HandleFunc("GET /v1/local/volumes", s.localVolumes)
		mux.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
			writeError(w, http.StatusNotFound, "no such endpoint: "+r.Method+" "+r.URL.Path+
				": this agent runs a fixed configuration (started without --control-voters), whose volumes are the --volume flags of its agents;"+
				" creating, resizing, deleting, moving or verifying volumes, and VMs, need a managed cluster (README, \"Running the agents\")")
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.Method+" "+r.URL.Path)
	})
	return mux
}

type server struct {
	cfg    Config
	log    *slog.Logger
	client *http.Client
}

// Error is the body of every error response.
type Error struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, Error{Error: msg})
}

func (s *server) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readyz is ready when every volume of this host has a leader (and, in
// cluster mode, the control plane has one).
func (s *server) readyz(w http.ResponseWriter, _ *http.Request) {
	var waiting []string
	for _, st := range s.cfg.Host.Statuses() {
		if st.Leader == "" || st.Error != "" {
			waiting = append(waiting, st.Name)
		}
	}
	if len(waiting) > 0 {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "not ready", "volumes_without_leader": waiting})
		return
	}
	if s.cfg.Cluster != nil {
		if err := s.cfg.Cluster.ControlError(); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "not ready", "control_error": err.Error()})
			return
		}
		if _, _, ok := s.cfg.Cluster.Leader(); !ok {
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "not ready", "control_leader": "none known"})
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}
