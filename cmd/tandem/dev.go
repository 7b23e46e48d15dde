package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/agent"
	"github.com/tandem-project/tandem/vmcoord/pidfile"
	"github.com/tandem-project/tandem/volume"
)

// devHosts is the dev cluster: three hosts on loopback addresses, each
// with NBD on port 10809 and replication on port 10810.
var devHosts = []struct{ name, ip string }{
	{"n1", "127.0.0.1"}, {"n2", "127.0.0.2"}, {"n3", "127.0.0.3"},
}

func newDevCmd(g *globalFlags) *cobra.Command {
	var (
		dataDir   string
		size      string
		listen    string
		rPort     int
		adminPort int
		gPort     int
	)
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a local 3-host Tandem cluster with volume vol0 for trying it out",
		Long: `Run three Tandem agents in this process, on 127.0.0.1, 127.0.0.2 and
127.0.0.3, built like a real cluster: they find each other by gossip, keep
the catalog in the control plane (all three vote), and the control leader
creates volume vol0 on the first start, replicated on all three. n1 leads
it and serves it at nbd://127.0.0.1:10809/vol0; the other two serve it too
(forwarding to the leader). The admin API is at http://127.0.0.1:7480;
the admin token is generated on the first start and kept in
<data>/admin-token (the gossip key in <data>/gossip-key). Data lives under
--data (one directory per host) and survives restarts. Ctrl-C stops it
cleanly. Unless GOMAXPROCS is set, it runs with two Go scheduler Ps per
CPU, since three agents share this process.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := stderrLogger(g)
			if err != nil {
				return err
			}
			if procs, set := devProcs(os.Getenv("GOMAXPROCS"), runtime.GOMAXPROCS(0)); set {
				runtime.GOMAXPROCS(procs)
				log.Debug("dev: three agents share this process's scheduler", "GOMAXPROCS", procs)
			}
			if dataDir == "" {
				cache, err := os.UserCacheDir()
				if err != nil {
					return fmt.Errorf("no --data given and no user cache directory: %w", err)
				}
				dataDir = filepath.Join(cache, "tandem", "dev")
			}
			n, err := volume.ParseSize(size)
			if err != nil {
				return fmt.Errorf("--size: %w", err)
			}
			ip1, port, err := net.SplitHostPort(listen)
			if err != nil {
				return fmt.Errorf("--nbd-listen %q: %w", listen, err)
			}
			for _, h := range devHosts {
				hd := filepath.Join(dataDir, h.name)
				if _, err := os.Stat(filepath.Join(hd, "groups")); err == nil {
					if _, err := os.Stat(filepath.Join(hd, "control")); errors.Is(err, os.ErrNotExist) {
						return fmt.Errorf("%s holds data of an older tandem dev (a fixed configuration, no cluster catalog): remove %s or use another --data", hd, dataDir)
					}
				}
			}
			token, err := devSecret(filepath.Join(dataDir, "admin-token"), 16, hex.EncodeToString)
			if err != nil {
				return err
			}
			gkey, err := devSecret(filepath.Join(dataDir, "gossip-key"), 32, base64.StdEncoding.EncodeToString)
			if err != nil {
				return err
			}
			key, err := base64.StdEncoding.DecodeString(gkey)
			if err != nil {
				return fmt.Errorf("%s: %w", filepath.Join(dataDir, "gossip-key"), err)
			}
			var peers []agent.Peer
			var gossip, admins []string
			for i, h := range devHosts {
				ip := h.ip
				if i == 0 {
					ip = ip1
				}
				nbdAddr, err := devAddr(ip, port)
				if err != nil {
					return fmt.Errorf("--nbd-listen: %w", err)
				}
				raftAddr, err := devAddr(ip, fmt.Sprint(rPort))
				if err != nil {
					return fmt.Errorf("--raft-port: %w", err)
				}
				peers = append(peers, agent.Peer{ID: h.name, Raft: raftAddr, NBD: nbdAddr})
				ga, err := devAddr(h.ip, fmt.Sprint(gPort))
				if err != nil {
					return fmt.Errorf("--gossip-port: %w", err)
				}
				aa, err := devAddr(h.ip, fmt.Sprint(adminPort))
				if err != nil {
					return fmt.Errorf("--admin-port: %w", err)
				}
				gossip, admins = append(gossip, ga), append(admins, aa)
			}
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			var (
				wg     sync.WaitGroup
				mu     sync.Mutex
				errs   []error
				ready  sync.WaitGroup
				listen = make([]agent.Listening, len(devHosts))
			)
			ready.Add(len(devHosts))
			for i, h := range devHosts {
				cfg := agent.DefaultConfig()
				cfg.Name = h.name
				cfg.DataDir = filepath.Join(dataDir, h.name)
				cfg.RaftAddr = peers[i].Raft
				cfg.NBDAddr = peers[i].NBD
				cfg.Version = versionString()
				cfg.AdminAddr = admins[i]
				cfg.Cluster = &agent.ClusterConfig{
					GossipAddr:     gossip[i],
					Join:           gossip,
					GossipKey:      key,
					FastGossip:     true,
					ControlVoters:  []string{"n1", "n2", "n3"},
					AdminToken:     token,
					InitialVolumes: []agent.InitialVolume{{Name: "vol0", Size: n, Replicas: 3, PreferredLeader: "n1"}},
				}
				cfg.DefaultExport = "vol0"
				cfg.Logger = log.With("host", h.name)
				cfg.Ready = func(l agent.Listening) {
					listen[i] = l
					ready.Done()
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := agent.Run(ctx, cfg); err != nil {
						mu.Lock()
						errs = append(errs, fmt.Errorf("%s: %w", h.name, err))
						mu.Unlock()
						cancel()
					}
				}()
			}
			go func() {
				ready.Wait()
				if err := waitDevVolume(ctx, admins, "vol0"); err != nil {
					if ctx.Err() == nil {
						log.Error("vol0 is not served yet; see the log above", "err", err)
					}
					return
				}
				uri := fmt.Sprintf("nbd://%s/vol0", listen[0].NBDAddr)
				fmt.Fprintf(cmd.OutOrStdout(), `
Tandem dev is running: 3 hosts on loopback (data in %s).
Volume vol0 (%s) is replicated on n1, n2 and n3; n1 leads it:

    %s

Every host serves it (the others forward to the leader):
    nbd://%s/vol0   nbd://%s/vol0
%s
Try it:
    qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' %s
    qemu-system-x86_64 -m 512 -drive file=%s,format=raw,if=virtio,cache=none,aio=threads,werror=stop,rerror=stop ...

The admin token is in %s:
    export TANDEM_ADMIN=%s TANDEM_ADMIN_TOKEN=%s
    tandem cluster status; tandem volume create vol1 --size 10G; tandem volume list

Press Ctrl-C to stop.
`, dataDir, volume.FormatSize(n), uri, listen[1].NBDAddr, listen[2].NBDAddr, adminLine(listen[0]), uri, uri,
					filepath.Join(dataDir, "admin-token"), listen[0].AdminAddr, token)
			}()
			wg.Wait()
			// The dev cluster's VMs stop with it (agents leave their VMs
			// running when they stop).
			for _, h := range devHosts {
				if err := pidfile.KillLeftovers(filepath.Join(dataDir, h.name, "vms"), log.With("host", h.name)); err != nil {
					errs = append(errs, err)
				}
			}
			return errors.Join(errs...)
		},
	}
	f := cmd.Flags()
	f.StringVar(&dataDir, "data", "", "data directory (default: tandem/dev under the user cache directory)")
	f.StringVar(&size, "size", "1GiB", "size of vol0")
	f.StringVar(&listen, "nbd-listen", "127.0.0.1:10809", "NBD address of n1; n2 and n3 use the same port on 127.0.0.2 and 127.0.0.3 (port 0: free ports)")
	f.IntVar(&rPort, "raft-port", 10810, "replication port of each host (0: free ports, which a restart cannot reuse: raft groups record their members' addresses)")
	f.IntVar(&adminPort, "admin-port", 7480, "admin HTTP port of each host (0: free ports)")
	f.IntVar(&gPort, "gossip-port", 7946, "gossip port of each host (0: free ports)")
	return cmd
}

// devProcs returns the GOMAXPROCS for the dev cluster, and whether to set
// it: twice the default procs, unless the user set GOMAXPROCS. The three
// agents share this process's Go scheduler, where three hosts would each
// have their own. Each replica's log sync blocks a thread in fdatasync, and
// the runtime hands that thread's P on only once its monitor notices: with
// one P per CPU the other agents' network and raft goroutines wait for a P
// more often. Two Ps per CPU gave 11.4k–13.6k durable 4 KiB writes per
// second at QD32 against 10.3k–10.9k with one, in alternating runs of
// tandem bench on the 2-CPU development machine; three per CPU did no
// better (docs/benchmarks.md).
func devProcs(env string, procs int) (int, bool) {
	if env != "" {
		return procs, false
	}
	return 2 * procs, true
}

// devAddr returns ip:port, picking a free port when port is "0" (the dev
// cluster needs every address before any host starts).
func devAddr(ip, port string) (string, error) {
	if port != "0" {
		return net.JoinHostPort(ip, port), nil
	}
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// devSecret returns the secret kept in path, creating it (n random bytes,
// encoded) on the first start.
func devSecret(path string, n int, encode func([]byte) string) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		if s := strings.TrimSpace(string(b)); s != "" {
			return s, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	raw := make([]byte, n)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	s := encode(raw)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	if err := os.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
		return "", err
	}
	return s, nil
}

// waitDevVolume waits until every agent reports a leader for the volume.
func waitDevVolume(ctx context.Context, admins []string, name string) error {
	c := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ok := 0
		for _, a := range admins {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a+"/v1/local/volumes", nil)
			resp, err := c.Do(req)
			if err != nil {
				continue
			}
			var lv []admin.LocalVolume
			if json.NewDecoder(resp.Body).Decode(&lv) == nil {
				for _, v := range lv {
					if v.Name == name && v.Leader != "" {
						ok++
					}
				}
			}
			resp.Body.Close()
		}
		if ok == len(admins) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("volume %s has no leader on every host after 2 minutes", name)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// adminLine tells where n1's admin API is, if it has one.
func adminLine(l agent.Listening) string {
	if l.AdminAddr == nil {
		return ""
	}
	return fmt.Sprintf("\nAdmin API and metrics: http://%s/v1/volumes  http://%s/metrics\n", l.AdminAddr, l.AdminAddr)
}
