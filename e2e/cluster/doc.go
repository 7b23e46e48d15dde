// Package cluster holds Tandem's multi-process fault tests of replicated
// volumes. Every test runs three "tandem agent" processes (built from this
// checkout by internal/testbin) with their own data directories on their
// own addresses (127.A.B.1-3 on loopback, or 10.99.0.1-3 in network
// namespaces), drives them with nbdclient connections and injects faults:
//
//   - writes through a follower's agent, forwarded to the leader, read back
//     identically through every agent and found in every replica file
//     (TestWriteThroughFollower);
//   - kill -9 of the leader under a stream of writes sent to a follower's
//     agent: no write fails, every acknowledged write is there, and the
//     longest pause between two completed writes is measured
//     (TestLeaderKillDuringWrites);
//   - kill -9 of a follower and its return, caught up from the log after a
//     short outage and from a streamed volume once the log was trimmed; its
//     replica file is compared with what was acknowledged
//     (TestFollowerCatchUp);
//   - SIGTERM and kill -9 of all three hosts (TestRestartAll);
//   - a partition of the leader made with network namespaces: the majority
//     goes on, nothing acknowledged is lost, the isolated agent never
//     serves stale data, and the hosts converge after healing
//     (TestLeaderPartition);
//   - a linearizability check with porcupine of concurrent block reads and
//     writes from clients on every agent while the leader is killed, a
//     follower restarted and the leader partitioned (TestLinearizable);
//   - kill -9 at random moments during writes, 20 times, with every
//     acknowledged write read back after each restart (TestCrashLoop).
//
// Every random choice comes from a seed the test logs; set TANDEM_SEED to
// replay one (timing still differs from run to run). When a test fails,
// the agents print their goroutines (SIGQUIT) and their logs are saved to
// files named in the test log; TANDEM_KEEP_LOGS=1 keeps them for passing
// tests too. A failed linearizability check also saves porcupine's
// visualization and the history, and names the operations that prove the
// violation.
//
// The partition test needs root and the ip command: it skips otherwise,
// and fails instead with TANDEM_REQUIRE_TOOLS=1 (see testbin.Require); the
// linearizability test then runs without its partition. Every namespace a
// test creates (tdm<random>-br, -n1, -n2, -n3) is removed when it ends.
//
// The package has no non-test code besides this comment.
package cluster
