// Package raftlog replicates Tandem's volumes: every volume is a
// hashicorp/raft group whose replicas live on distinct hosts (3 by
// default, 1 to 5), and the raft log is the volume's write log.
//
// A Host is the replication layer of one agent: its metadata database
// (raftlog/meta), its mux port shared by every group and by forwarded I/O
// (raftlog/mux, raftlog/transport), its disk reserve, and the groups of
// the volumes it holds a replica of. OpenVolume starts a replica and
// returns its Volume, a volume.Backend that any host's NBD server can
// serve:
//
//   - writes, zeroes and trims become log entries (coalesced by a batcher
//     into entries of up to Config.MaxEntryBytes, a few in flight) and are
//     answered once committed, that is durable in the write logs
//     (raftlog/wal) of a majority of the replicas: FLUSH and FUA hold by
//     construction;
//   - the FSM applies committed entries to the replica's volume file
//     (volume/blockfile) through the page cache; raft snapshots are
//     checkpoints that sync that file and record the index it covers, so
//     a restart replays only the log after it, and a follower too far
//     behind gets the volume streamed from another replica, then the log;
//   - the leader answers reads from its own file while it holds a lease
//     (Config.LeaseFraction of the heartbeat timeout, within which no
//     follower votes for another leader), after a barrier that applied
//     every earlier entry, so no client reads older data than a write it
//     saw answered;
//   - a host that does not lead forwards the request to the leader over
//     the mux port and sends it again, with the same op id, to the next
//     leader when the leader changes, so the client's connection stays up.
//
// A Proxy serves a volume on a host without a replica of it. Membership
// changes (adding, removing and moving replicas) and the integrity checks
// after a copy are in membership.go; a replica whose file or log fails
// leaves its group and is reported failed, for the agent to open again.
//
// docs/replication.md explains the design and its arguments: the write
// path, the read lease, failover, checkpoints, catch-up and replica
// failure.
package raftlog
