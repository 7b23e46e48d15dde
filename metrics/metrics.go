// Package metrics holds an agent's Prometheus metrics: NBD requests per
// volume (count, bytes, latency), raft commit latency, the state of each
// volume replica and of the data disk, collected at scrape time, and in a
// managed cluster the members and control plane. Each agent has its own
// registry.
package metrics

import (
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tandem-project/tandem/raftlog"
)

// Metrics is one agent's set of metrics.
type Metrics struct {
	reg *prometheus.Registry

	requests *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	commit   *prometheus.HistogramVec

	mu  sync.Mutex
	obs map[[2]string]requestObs // (volume, op) → pre-resolved children
}

type requestObs struct {
	ok, failed prometheus.Counter
	bytes      prometheus.Counter
	latency    prometheus.Observer
}

// New returns an agent's metrics, with Go runtime and process collectors.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tandem_nbd_requests_total",
			Help: "NBD requests answered, by volume, operation and result (ok or the NBD error).",
		}, []string{"volume", "op", "result"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tandem_nbd_bytes_total",
			Help: "Bytes read or written by successful NBD requests, by volume and operation.",
		}, []string{"volume", "op"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tandem_nbd_request_seconds",
			Help:    "Time from reading an NBD request to queueing its reply, by volume and operation.",
			Buckets: prometheus.ExponentialBuckets(20e-6, 2, 18), // 20 µs .. 2.6 s
		}, []string{"volume", "op"}),
		commit: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tandem_raft_commit_seconds",
			Help:    "Time for a log entry to be committed on a majority and answered on the leader (writes at commit, other entries once applied), by volume.",
			Buckets: prometheus.ExponentialBuckets(100e-6, 2, 16), // 100 µs .. 3.3 s
		}, []string{"volume"}),
		obs: map[[2]string]requestObs{},
	}
	m.reg.MustRegister(m.requests, m.bytes, m.latency, m.commit,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the metrics in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Observe implements nbd.Observer.
func (m *Metrics) Observe(volume, op string, length uint32, took time.Duration, errno uint32) {
	k := [2]string{volume, op}
	m.mu.Lock()
	o, ok := m.obs[k]
	if !ok {
		o = requestObs{
			ok:      m.requests.WithLabelValues(volume, op, "ok"),
			failed:  m.requests.WithLabelValues(volume, op, "error"),
			bytes:   m.bytes.WithLabelValues(volume, op),
			latency: m.latency.WithLabelValues(volume, op),
		}
		m.obs[k] = o
	}
	m.mu.Unlock()
	if errno != 0 {
		o.failed.Inc()
		return
	}
	o.ok.Inc()
	if op == "READ" || op == "WRITE" {
		o.bytes.Add(float64(length))
	}
	o.latency.Observe(took.Seconds())
}

// ObserveCommit records one committed log entry of volume.
func (m *Metrics) ObserveCommit(volume string, took time.Duration) {
	m.commit.WithLabelValues(volume).Observe(took.Seconds())
}

// WatchCertificate exports when the TLS certificate of role (peer, admin,
// nbd) expires, as notAfter tells at every scrape (it follows renewals).
func (m *Metrics) WatchCertificate(role string, notAfter func() time.Time) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "tandem_tls_certificate_expiry_timestamp_seconds",
		Help:        "When the TLS certificate in use expires (Unix seconds), by role: peer (the replication port), admin (the admin API), nbd (NBD over TLS).",
		ConstLabels: prometheus.Labels{"role": role},
	}, func() float64 { return float64(notAfter().Unix()) }))
}

// WatchHost exports the state of h's replicas at every scrape.
func (m *Metrics) WatchHost(h *raftlog.Host) {
	m.reg.MustRegister(&hostCollector{h: h})
}

var (
	descLeader  = prometheus.NewDesc("tandem_volume_leader", "1 if this host leads the volume.", []string{"volume"}, nil)
	descServing = prometheus.NewDesc("tandem_volume_serving", "1 if this host answers the volume's reads itself (leader holding its lease).", []string{"volume"}, nil)
	descFailed  = prometheus.NewDesc("tandem_volume_replica_failed", "1 if this host's replica failed and left the group.", []string{"volume"}, nil)
	descSize    = prometheus.NewDesc("tandem_volume_size_bytes", "Volume size.", []string{"volume"}, nil)
	descTerm    = prometheus.NewDesc("tandem_raft_term", "Current raft term of the volume's group on this host.", []string{"volume"}, nil)
	descLast    = prometheus.NewDesc("tandem_raft_last_index", "Last log index on this replica.", []string{"volume"}, nil)
	descCommit  = prometheus.NewDesc("tandem_raft_commit_index", "Commit index known to this replica.", []string{"volume"}, nil)
	descApplied = prometheus.NewDesc("tandem_raft_applied_index", "Index applied to this replica's volume file.", []string{"volume"}, nil)
	descLag     = prometheus.NewDesc("tandem_raft_apply_lag_entries", "Committed entries not yet applied on this replica.", []string{"volume"}, nil)
	descContact = prometheus.NewDesc("tandem_raft_last_contact_seconds", "Time since this follower last heard from the leader (0 on the leader).", []string{"volume"}, nil)
)

// hostCollector reads replica state from the replication layer.
type hostCollector struct{ h *raftlog.Host }

func (c *hostCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLeader, descServing, descFailed, descSize, descTerm, descLast, descCommit, descApplied, descLag, descContact} {
		ch <- d
	}
}

func (c *hostCollector) Collect(ch chan<- prometheus.Metric) {
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	for _, s := range c.h.Statuses() {
		g := func(d *prometheus.Desc, val float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, val, s.Name)
		}
		g(descLeader, b(s.State == "Leader"))
		g(descServing, b(s.Serving))
		g(descFailed, b(s.Error != ""))
		g(descSize, float64(s.Size))
		g(descTerm, float64(s.Term))
		g(descLast, float64(s.LastIndex))
		g(descCommit, float64(s.CommitIndex))
		g(descApplied, float64(s.AppliedIndex))
		g(descLag, float64(s.CommitIndex-min(s.AppliedIndex, s.CommitIndex)))
		g(descContact, s.LastContact.Seconds())
	}
}

// DiskView is what an agent reports about its data directory's disk at
// every scrape.
type DiskView struct {
	// Free is the file system's free bytes (-1: not known); Reserve the
	// bytes volume data and logs leave free (--disk-reserve).
	Free, Reserve int64
	// Short is true while the host is short of space for its replicas:
	// within raftlog.RoomMargin of the reserve, or a replica failed for
	// lack of space.
	Short bool
}

var (
	descDiskFree    = prometheus.NewDesc("tandem_disk_free_bytes", "Free bytes of the file system of the agent's data directory.", nil, nil)
	descDiskReserve = prometheus.NewDesc("tandem_disk_reserve_bytes", "Free bytes that volume data and write logs leave to the metadata (--disk-reserve): a replica that would write into them fails.", nil, nil)
	descDiskShort   = prometheus.NewDesc("tandem_disk_short", fmt.Sprintf("1 while this host is short of disk space for its replicas (within %d MiB of the reserve, or a replica failed for lack of space): writes that find no leader get ENOSPC.", raftlog.RoomMargin>>20), nil, nil)
)

// WatchDisk exports view() at every scrape.
func (m *Metrics) WatchDisk(view func() DiskView) {
	m.reg.MustRegister(diskCollector(view))
}

type diskCollector func() DiskView

func (c diskCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descDiskFree, descDiskReserve, descDiskShort} {
		ch <- d
	}
}

func (c diskCollector) Collect(ch chan<- prometheus.Metric) {
	v := c()
	if v.Free >= 0 {
		ch <- prometheus.MustNewConstMetric(descDiskFree, prometheus.GaugeValue, float64(v.Free))
	}
	ch <- prometheus.MustNewConstMetric(descDiskReserve, prometheus.GaugeValue, float64(v.Reserve))
	short := 0.0
	if v.Short {
		short = 1
	}
	ch <- prometheus.MustNewConstMetric(descDiskShort, prometheus.GaugeValue, short)
}

// ClusterView is what a cluster-mode agent reports about the cluster at
// every scrape.
type ClusterView struct {
	// Members maps every agent this one knows to its membership state
	// (alive, failed, left).
	Members map[string]string
	// ControlLeader is 1 if this agent leads the control plane;
	// ControlApplied its applied index; Volumes the catalog's volumes.
	ControlLeader  bool
	ControlApplied uint64
	// ControlFailed is true once this agent left the control plane
	// because its control write log failed.
	ControlFailed bool
	Volumes       int
	// Verified holds the last verification of each volume's replicas
	// that has one (tandem volume verify).
	Verified map[string]VerifyView
}

// VerifyView is how a volume's last verification ended.
type VerifyView struct {
	OK       bool
	Finished time.Time
}

// memberStates are the states reported by tandem_member_state.
var memberStates = []string{"alive", "failed", "left"}

var (
	descMember   = prometheus.NewDesc("tandem_member_state", "1 for the membership state this agent sees each agent in.", []string{"member", "state"}, nil)
	descCtlLead  = prometheus.NewDesc("tandem_control_leader", "1 if this agent leads the control plane.", nil, nil)
	descCtlIndex = prometheus.NewDesc("tandem_control_applied_index", "Control-plane log index applied to this agent's catalog.", nil, nil)
	descVolumes  = prometheus.NewDesc("tandem_catalog_volumes", "Volumes in this agent's catalog.", nil, nil)
	descVerifyOK = prometheus.NewDesc("tandem_volume_last_verify_ok", "1 if the volume's last verification found every replica identical to the leader's, 0 if a replica differed or could not be compared, or it was cancelled (absent: never verified).", []string{"volume"}, nil)
	descVerifyAt = prometheus.NewDesc("tandem_volume_last_verify_timestamp_seconds", "When the volume's last verification ended (Unix seconds).", []string{"volume"}, nil)
	descCtlFail  = prometheus.NewDesc("tandem_control_failed", "1 while this agent is out of the control plane because its control write log failed (until the log opens again; see --replica-retry).", nil, nil)
)

// WatchCluster exports view() at every scrape.
func (m *Metrics) WatchCluster(view func() ClusterView) {
	m.reg.MustRegister(clusterCollector(view))
}

type clusterCollector func() ClusterView

func (c clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descMember, descCtlLead, descCtlIndex, descCtlFail, descVolumes, descVerifyOK, descVerifyAt} {
		ch <- d
	}
}

func (c clusterCollector) Collect(ch chan<- prometheus.Metric) {
	v := c()
	for name, st := range v.Members {
		for _, s := range memberStates {
			val := 0.0
			if s == st {
				val = 1
			}
			ch <- prometheus.MustNewConstMetric(descMember, prometheus.GaugeValue, val, name, s)
		}
	}
	lead := 0.0
	if v.ControlLeader {
		lead = 1
	}
	ch <- prometheus.MustNewConstMetric(descCtlLead, prometheus.GaugeValue, lead)
	ch <- prometheus.MustNewConstMetric(descCtlIndex, prometheus.GaugeValue, float64(v.ControlApplied))
	failed := 0.0
	if v.ControlFailed {
		failed = 1
	}
	ch <- prometheus.MustNewConstMetric(descCtlFail, prometheus.GaugeValue, failed)
	ch <- prometheus.MustNewConstMetric(descVolumes, prometheus.GaugeValue, float64(v.Volumes))
	for name, vf := range v.Verified {
		ok := 0.0
		if vf.OK {
			ok = 1
		}
		ch <- prometheus.MustNewConstMetric(descVerifyOK, prometheus.GaugeValue, ok, name)
		ch <- prometheus.MustNewConstMetric(descVerifyAt, prometheus.GaugeValue, float64(vf.Finished.Unix()), name)
	}
}
