// Copyright (c) HashiCorp, Inc.
// SPDX-License-Identifier: MPL-2.0

// This file is Tandem's addition to its copy of hashicorp/raft (see
// third_party/README.md in the Tandem repository).

package raft

import (
	"testing"
	"time"
)

func TestSilenceWait(t *testing.T) {
	const hb = 650 * time.Millisecond
	tests := []struct {
		name  string
		since time.Duration
		r     int64
		want  time.Duration
	}{
		{"contact just now, no jitter", 0, 0, hb},
		{"contact just now, most jitter", 0, int64(hb - 1), 2*hb - 1},
		{"contact long ago, no jitter", hb - time.Millisecond, 0, time.Millisecond},
		{"jitter wraps at hb", 100 * time.Millisecond, int64(hb + 50*time.Millisecond), hb - 50*time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := silenceWait(hb, tt.since, tt.r)
			if got != tt.want {
				t.Fatalf("silenceWait(%v, %v, %d) = %v, want %v", hb, tt.since, tt.r, got, tt.want)
			}
			// The check fires between one and two heartbeat timeouts
			// after the contact.
			if at := tt.since + got; at < hb || at >= 2*hb {
				t.Fatalf("fires %v after the contact, want within [%v, %v)", at, hb, 2*hb)
			}
		})
	}
}

// TestCampaignOnRefusingBehindCandidate checks hintCampaign: a follower
// that has not heard its leader within the heartbeat timeout and turns down
// a pre-vote or vote request from a candidate whose log is behind its own
// stands for election at once, not when its own timer fires. The timeouts
// of both followers are raised to a minute first, so that only the hint
// can start an election within the test's wait.
func TestCampaignOnRefusingBehindCandidate(t *testing.T) {
	for _, kind := range []string{"pre-vote", "vote"} {
		t.Run(kind, func(t *testing.T) {
			conf := inmemConfig(t)
			conf.HeartbeatTimeout = 200 * time.Millisecond
			conf.ElectionTimeout = 200 * time.Millisecond
			conf.LeaderLeaseTimeout = 100 * time.Millisecond
			c := MakeCluster(3, t, conf)
			defer c.Close()
			leader := c.Leader()
			var followers []*Raft
			for limit := time.Now().Add(c.longstopTimeout); time.Now().Before(limit) && len(followers) != 2; {
				c.WaitEvent(nil, c.conf.CommitTimeout)
				followers = c.GetInState(Follower)
			}
			if len(followers) != 2 {
				t.Fatalf("expected two followers: %v", followers)
			}
			f, other := followers[0], followers[1]
			const long = time.Minute
			for _, r := range followers {
				rc := r.ReloadableConfig()
				rc.HeartbeatTimeout, rc.ElectionTimeout = long, long
				if err := r.ReloadConfig(rc); err != nil {
					t.Fatal(err)
				}
			}
			// Each follower's timer armed with the old timeout fires
			// within two of them and is rearmed with the new one.
			time.Sleep(2*conf.HeartbeatTimeout + 100*time.Millisecond)

			// The leader falls silent and f last heard from it longer ago
			// than its heartbeat timeout.
			c.Disconnect(leader.localAddr)
			f.lastContactLock.Lock()
			f.lastContact = time.Now().Add(-long - time.Millisecond)
			f.lastContactLock.Unlock()

			// other asks with a log one entry behind f's.
			idx, term := f.getLastEntry()
			otherT := c.trans[c.IndexOf(other)]
			var granted bool
			var err error
			switch kind {
			case "pre-vote":
				req := RequestPreVoteRequest{RPCHeader: other.getRPCHeader(), Term: f.getCurrentTerm() + 1, LastLogIndex: idx - 1, LastLogTerm: term}
				var resp RequestPreVoteResponse
				err = otherT.RequestPreVote(f.localID, f.localAddr, &req, &resp)
				granted = resp.Granted
			case "vote":
				req := RequestVoteRequest{RPCHeader: other.getRPCHeader(), Term: f.getCurrentTerm() + 1, LastLogIndex: idx - 1, LastLogTerm: term}
				var resp RequestVoteResponse
				err = otherT.RequestVote(f.localID, f.localAddr, &req, &resp)
				granted = resp.Granted
			}
			if err != nil || granted {
				t.Fatalf("%s for a shorter log: granted %v, %v", kind, granted, err)
			}

			// f stands (it stays a candidate: other still hears from
			// the leader within its minute and turns it down).
			limit := time.Now().Add(10 * time.Second)
			for f.getState() == Follower {
				if time.Now().After(limit) {
					t.Fatalf("f did not stand for election after turning down a candidate behind it")
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}
