package admin

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/tandem-project/tandem/volume"
)

// The JSON bodies of the cluster API (/v1/), shared by the agents' handler
// and the CLI's client. docs/admin-api.yaml describes them as OpenAPI.

// TokenHeader is the header that carries the admin token, as
// "Authorization: Bearer TOKEN".
const TokenHeader = "Authorization"

// ClusterStatus is the body of GET /v1/cluster.
type ClusterStatus struct {
	// Host is the agent that answered (the control leader, when the
	// request was forwarded); Via is the agent that received it.
	Host    string `json:"host"`
	Via     string `json:"via,omitempty"`
	Version string `json:"version"`
	// ControlLeader is the host leading the control-plane Raft group;
	// ControlVoters its voting members; ControlTerm and ControlIndex its
	// term and last applied index.
	ControlLeader string   `json:"control_leader"`
	ControlVoters []string `json:"control_voters"`
	ControlTerm   uint64   `json:"control_term"`
	ControlIndex  uint64   `json:"control_index"`
	// Hosts counts the hosts in the catalog, HostsAlive those that
	// membership sees alive.
	Hosts      int `json:"hosts"`
	HostsAlive int `json:"hosts_alive"`
	Volumes    int `json:"volumes"`
}

// Host states, as membership reports them.
const (
	HostAlive  = "alive"
	HostFailed = "failed"
	HostLeft   = "left"
)

// Host is one element of GET /v1/hosts.
type Host struct {
	Name string `json:"name"`
	// State is alive, failed or left.
	State     string `json:"state"`
	RaftAddr  string `json:"raft_addr"`
	NBDAddr   string `json:"nbd_addr"`
	AdminAddr string `json:"admin_addr"`
	// Capacity is the bytes the host offers for volume replicas; Allocated
	// the bytes of the replicas placed on it; DiskFree the free bytes of
	// its data directory's filesystem as it last reported.
	Capacity  int64 `json:"capacity"`
	Allocated int64 `json:"allocated"`
	DiskFree  int64 `json:"disk_free"`
	// Replicas counts the volume replicas the host holds; Leads the
	// volumes it is the preferred leader of.
	Replicas int `json:"replicas"`
	Leads    int `json:"leads"`
	// Control is the host's role in the control-plane group: leader,
	// voter or nonvoter ("" if not a member yet).
	Control string    `json:"control"`
	Joined  time.Time `json:"joined"`
}

// Volume states.
const (
	VolumeReady = "ready"
	// VolumeDegraded: a replica is unreachable or failed, the volume still
	// has a quorum.
	VolumeDegraded = "degraded"
	// VolumeUnavailable: no replica reports a leader.
	VolumeUnavailable = "unavailable"
)

// Volume is one element of GET /v1/volumes and the body of
// GET /v1/volumes/{name} and of a successful create or resize.
type Volume struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
	// Hosts are the replicas' hosts in placement order.
	Hosts           []string `json:"hosts"`
	PreferredLeader string   `json:"preferred_leader"`
	// Leader is the replica host that leads the volume now ("" if none
	// is known).
	Leader string `json:"leader"`
	// State is ready, degraded or unavailable.
	State string `json:"state"`
	// Attached counts the NBD connections to the volume on every agent.
	Attached int `json:"attached"`
	// URI is an NBD URI of the volume on its leader's agent (any agent
	// serves it).
	URI     string    `json:"uri"`
	Created time.Time `json:"created"`
	// Replicas is each replica's status.
	Replicas []Replica `json:"replicas"`
}

// Replica is one replica's status, as its host reports it.
type Replica struct {
	Host string `json:"host"`
	// State is the replica's raft state (Leader, Follower, Candidate,
	// Shutdown), Failed, or Unreachable when its host did not answer.
	State        string `json:"state"`
	Term         uint64 `json:"term"`
	LastIndex    uint64 `json:"last_index"`
	CommitIndex  uint64 `json:"commit_index"`
	AppliedIndex uint64 `json:"applied_index"`
	// Lag is how many entries this replica has applied fewer than the
	// leader has committed.
	Lag uint64 `json:"lag"`
	// LastContact is how long ago a follower last heard from its leader.
	LastContact time.Duration `json:"last_contact_ns"`
	Error       string        `json:"error,omitempty"`
}

// CreateVolume is the body of POST /v1/volumes.
type CreateVolume struct {
	Name string `json:"name"`
	// Size is the volume size: a number of bytes or a string such as
	// "1G", "512MiB".
	Size Size `json:"size"`
	// Replicas is the replica count, 1 to 5 (0: 3, or every host if
	// fewer).
	Replicas int `json:"replicas,omitempty"`
}

// ResizeVolume is the body of PATCH /v1/volumes/{name} (grow only).
type ResizeVolume struct {
	Size Size `json:"size"`
}

// Size is a byte count that decodes from a JSON number or a size string
// ("1G", "512MiB", see volume.ParseSize) and encodes as a number.
type Size int64

// UnmarshalJSON implements json.Unmarshaler.
func (s *Size) UnmarshalJSON(b []byte) error {
	var n int64
	if err := json.Unmarshal(b, &n); err == nil {
		*s = Size(n)
		return nil
	}
	var str string
	if err := json.Unmarshal(b, &str); err != nil {
		return fmt.Errorf("size: want a number of bytes or a string such as \"1G\", got %s", b)
	}
	n, err := volume.ParseSize(str)
	if err != nil {
		return err
	}
	*s = Size(n)
	return nil
}
