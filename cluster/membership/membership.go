// Package membership is the agents' gossip layer (hashicorp/memberlist):
// who is in the cluster, where each agent serves, how much room it has,
// and which agents failed. Gossip is encrypted with a shared key. Changes
// arrive as events; Members gives the current view.
package membership

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Meta is what every agent tells the others about itself (at most 512
// bytes encoded).
type Meta struct {
	Raft     string `json:"r"`
	NBD      string `json:"n"`
	Admin    string `json:"a,omitempty"`
	Capacity int64  `json:"c"`
	Free     int64  `json:"f"`
	Version  string `json:"v,omitempty"`
	// Leaving is set by an agent about to leave on purpose, so that the
	// others record it as left rather than failed.
	Leaving bool `json:"l,omitempty"`
	// Failed counts the agent's replicas out of service after a failure
	// of their disk (the control leader asks which, to heal them).
	Failed int `json:"x,omitempty"`
	// Short is set while the agent's disk is short of space: within
	// raftlog.RoomMargin of its reserve, or under a replica that failed
	// for lack of space. Writes that find no leader elsewhere then end
	// with ENOSPC once such hosts leave the others no quorum.
	Short bool `json:"s,omitempty"`
}

// State is a member's state.
type State string

// Member states.
const (
	Alive  State = "alive"
	Failed State = "failed" // declared dead by the failure detector
	Left   State = "left"   // left the cluster on purpose
)

// Member is one agent as this agent sees it.
type Member struct {
	Name   string `json:"name"`
	Gossip string `json:"gossip_addr"`
	State  State  `json:"state"`
	Meta   Meta   `json:"meta"`
}

// Event reports a change of one member.
type Event struct {
	Member Member
}

// Config configures membership.
type Config struct {
	// Name is this agent's name; unique in the cluster.
	Name string
	// Bind is the gossip address (TCP and UDP), host:port.
	Bind string
	// Advertise is the address others reach this agent at (default Bind).
	Advertise string
	// Join lists gossip addresses of agents to join at start (may be empty
	// for the first agent, or include this one).
	Join []string
	// Key encrypts gossip (AES, 16, 24 or 32 bytes). Required unless
	// Insecure is set.
	Key []byte
	// Insecure allows unencrypted gossip (tests, loopback-only dev).
	Insecure bool
	// Meta returns this agent's current meta data.
	Meta func() Meta
	// Fast shortens failure detection (probe every 200 ms) for tests and
	// the dev cluster on loopback.
	Fast bool
	// Logger receives memberlist's logs.
	Logger *slog.Logger
}

// Membership is a running gossip member.
type Membership struct {
	cfg    Config
	ml     *memberlist.Memberlist
	events chan Event

	mu      sync.Mutex
	members map[string]*Member
	leaving bool
}

// Start joins the gossip. Joining fails only if Join names agents and none
// of them answers.
func Start(cfg Config) (*Membership, error) {
	if cfg.Name == "" || cfg.Bind == "" || cfg.Meta == nil {
		return nil, errors.New("membership: Name, Bind and Meta are required")
	}
	if len(cfg.Key) == 0 && !cfg.Insecure {
		return nil, errors.New("membership: a gossip key is required (or Insecure)")
	}
	if l := len(cfg.Key); l != 0 && l != 16 && l != 24 && l != 32 {
		return nil, fmt.Errorf("membership: the gossip key has %d bytes, want 16, 24 or 32", l)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Membership{cfg: cfg, events: make(chan Event, 256), members: map[string]*Member{}}
	mc := memberlist.DefaultLANConfig()
	if cfg.Fast {
		mc = memberlist.DefaultLocalConfig()
		mc.ProbeInterval = 200 * time.Millisecond
		mc.ProbeTimeout = 100 * time.Millisecond
		mc.GossipInterval = 50 * time.Millisecond
		mc.SuspicionMult = 3
	}
	mc.Name = cfg.Name
	host, port, err := splitHostPort(cfg.Bind)
	if err != nil {
		return nil, fmt.Errorf("membership: bind address: %w", err)
	}
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertiseAddr, mc.AdvertisePort = host, port
	if cfg.Advertise != "" {
		if mc.AdvertiseAddr, mc.AdvertisePort, err = splitHostPort(cfg.Advertise); err != nil {
			return nil, fmt.Errorf("membership: advertise address: %w", err)
		}
	}
	mc.SecretKey = cfg.Key
	mc.Delegate = delegate{m}
	mc.Events = events{m}
	mc.Logger = slog.NewLogLogger(log.With("component", "memberlist").Handler(), slog.LevelDebug)
	mc.LogOutput = nil
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("membership: %w", err)
	}
	m.ml = ml
	if len(cfg.Join) > 0 {
		if _, err := ml.Join(cfg.Join); err != nil {
			ml.Shutdown()
			return nil, fmt.Errorf("membership: joining %v: %w", cfg.Join, err)
		}
	}
	return m, nil
}

func splitHostPort(s string) (string, int, error) {
	h, p, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, err
	}
	return h, n, nil
}

// Join contacts more agents.
func (m *Membership) Join(addrs []string) error {
	_, err := m.ml.Join(addrs)
	return err
}

// Addr returns this agent's gossip address.
func (m *Membership) Addr() string {
	n := m.ml.LocalNode()
	return net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
}

// Events delivers member changes. Read it promptly; if nobody does,
// events beyond a buffer are dropped (Members stays exact).
func (m *Membership) Events() <-chan Event { return m.events }

// Members returns every agent seen, failed and departed ones included,
// sorted by name.
func (m *Membership) Members() []Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Member, 0, len(m.members))
	for _, mb := range m.members {
		out = append(out, *mb)
	}
	slices.SortFunc(out, func(a, b Member) int {
		if a.Name < b.Name {
			return -1
		}
		return 1
	})
	return out
}

// Member returns one member by name.
func (m *Membership) Member(name string) (Member, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	mb, ok := m.members[name]
	if !ok {
		return Member{}, false
	}
	return *mb, true
}

// UpdateMeta gossips this agent's current meta data.
func (m *Membership) UpdateMeta() error { return m.ml.UpdateNode(5 * time.Second) }

// Leave tells the others this agent leaves, then stops gossiping.
func (m *Membership) Leave(timeout time.Duration) error {
	m.mu.Lock()
	m.leaving = true
	m.mu.Unlock()
	_ = m.ml.UpdateNode(timeout)
	m.pushState(timeout)
	err := m.ml.Leave(timeout)
	if serr := m.ml.Shutdown(); err == nil {
		err = serr
	}
	return err
}

// pushState sends this agent's state to every live member over TCP (a
// push/pull sync), waiting at most timeout. A gossiped update is spent
// after a few transmissions, and those may all piggyback on probes of dead
// members; the push makes sure the live ones know this agent is leaving,
// so they record it as left even if the leave broadcast is lost too.
func (m *Membership) pushState(timeout time.Duration) {
	var addrs []string
	for _, n := range m.ml.Members() {
		if n.Name != m.cfg.Name {
			addrs = append(addrs, n.Address())
		}
	}
	if len(addrs) == 0 {
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = m.ml.Join(addrs)
	}()
	select {
	case <-done:
	case <-time.After(timeout):
	}
}

// Shutdown stops gossiping without telling anyone (the others will see
// this agent fail).
func (m *Membership) Shutdown() error { return m.ml.Shutdown() }

// record updates the view from a memberlist node and emits an event. gone
// is set for NotifyLeave (memberlist does not update the Node's own State
// field): the member left if it announced it was leaving, else it failed.
func (m *Membership) record(n *memberlist.Node, gone bool) {
	var meta Meta
	_ = json.Unmarshal(n.Meta, &meta)
	st := Alive
	if gone {
		st = Failed
		if meta.Leaving {
			st = Left
		}
	}
	m.mu.Lock()
	mb := Member{Name: n.Name, Gossip: net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port))), State: st, Meta: meta}
	m.members[n.Name] = &mb
	m.mu.Unlock()
	select {
	case m.events <- Event{Member: mb}:
	default:
	}
}

// delegate serves this agent's meta data.
type delegate struct{ m *Membership }

func (d delegate) NodeMeta(limit int) []byte {
	meta := d.m.cfg.Meta()
	d.m.mu.Lock()
	meta.Leaving = d.m.leaving
	d.m.mu.Unlock()
	b, _ := json.Marshal(meta)
	if len(b) > limit {
		return nil
	}
	return b
}
func (delegate) NotifyMsg([]byte)                {}
func (delegate) GetBroadcasts(int, int) [][]byte { return nil }
func (delegate) LocalState(bool) []byte          { return nil }
func (delegate) MergeRemoteState([]byte, bool)   {}

// events feeds memberlist's callbacks into the view.
type events struct{ m *Membership }

func (e events) NotifyJoin(n *memberlist.Node)   { e.m.record(n, false) }
func (e events) NotifyLeave(n *memberlist.Node)  { e.m.record(n, true) }
func (e events) NotifyUpdate(n *memberlist.Node) { e.m.record(n, false) }
