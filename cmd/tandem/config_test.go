package main

import (
	"errors"
	iofs "io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// testFlags is a flag set with one flag of every type the agent uses.
type testFlags struct {
	fs     *pflag.FlagSet
	str    string
	on     bool
	n      int
	u      uint64
	d      time.Duration
	slice  []string
	array  []string
	hidden bool
}

func newTestFlags() *testFlags {
	t := &testFlags{fs: pflag.NewFlagSet("test", pflag.ContinueOnError)}
	t.fs.StringVar(&t.str, "name", "local", "")
	t.fs.BoolVar(&t.on, "tls-required", false, "")
	t.fs.IntVar(&t.n, "nbd-max-inflight", 128, "")
	t.fs.Uint64Var(&t.u, "checkpoint-entries", 1024, "")
	t.fs.DurationVar(&t.d, "heartbeat-timeout", 650*time.Millisecond, "")
	t.fs.StringSliceVar(&t.slice, "join", nil, "")
	t.fs.StringArrayVar(&t.array, "peer", nil, "")
	t.fs.BoolVar(&t.hidden, "fast-gossip", false, "")
	_ = t.fs.MarkHidden("fast-gossip")
	t.fs.String(configFlag, "", "")
	return t
}

// values returns the flags' values, for comparing.
func (t *testFlags) values() map[string]any {
	return map[string]any{"name": t.str, "tls-required": t.on, "nbd-max-inflight": t.n, "checkpoint-entries": t.u,
		"heartbeat-timeout": t.d, "join": t.slice, "peer": t.array, "fast-gossip": t.hidden}
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestApplyConfigFile(t *testing.T) {
	defaults := newTestFlags().values()
	with := func(kv ...any) map[string]any {
		m := map[string]any{}
		for k, v := range defaults {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	tests := []struct {
		name string
		file string
		args []string       // command line, parsed before the file is applied
		want map[string]any // flag values after; nil when an error is wanted
		set  []string       // flags the file set
		err  string         // regexp the error must match; the path is written FILE
	}{
		{name: "empty file", file: "", want: defaults},
		{name: "only comments", file: "# nothing here\n# name: n1\n", want: defaults},
		{name: "every type", file: `
name: n2
tls-required: true
nbd-max-inflight: 16
checkpoint-entries: 4096
heartbeat-timeout: 2s
join: [10.77.0.1:7946, 10.77.0.3:7946]
peer:
  - n1,raft=10.77.0.1:10810,nbd=10.77.0.1:10809
  - n2,raft=10.77.0.2:10810,nbd=10.77.0.2:10809
fast-gossip: false
`,
			want: with("name", "n2", "tls-required", true, "nbd-max-inflight", 16, "checkpoint-entries", uint64(4096),
				"heartbeat-timeout", 2*time.Second, "join", []string{"10.77.0.1:7946", "10.77.0.3:7946"},
				"peer", []string{"n1,raft=10.77.0.1:10810,nbd=10.77.0.1:10809", "n2,raft=10.77.0.2:10810,nbd=10.77.0.2:10809"},
				"fast-gossip", false),
			set: []string{"name", "tls-required", "nbd-max-inflight", "checkpoint-entries", "heartbeat-timeout", "join", "peer", "fast-gossip"}},
		{name: "list flag as a scalar is parsed like the command line", file: "join: a:1,b:2\npeer: n1,raft=x:1,nbd=x:2\n",
			want: with("join", []string{"a:1", "b:2"}, "peer", []string{"n1,raft=x:1,nbd=x:2"}), set: []string{"join", "peer"}},
		{name: "list elements keep their commas", file: "join: [\"a,b\"]\n", want: with("join", []string{"a,b"}), set: []string{"join"}},
		{name: "empty list", file: "join: []\n", want: with("join", []string{}), set: []string{"join"}},
		{name: "scalars of other YAML types are text for string flags", file: "name: 10\n", want: with("name", "10"), set: []string{"name"}},
		{name: "quoted bool and number", file: "tls-required: \"true\"\nnbd-max-inflight: \"8\"\n",
			want: with("tls-required", true, "nbd-max-inflight", 8), set: []string{"tls-required", "nbd-max-inflight"}},
		{name: "empty string", file: "name: \"\"\n", want: with("name", ""), set: []string{"name"}},
		{name: "the command line overrides the file",
			file: "name: n2\njoin: [a:1]\nheartbeat-timeout: 2s\n",
			args: []string{"--name", "n9", "--join", "b:1,c:1"},
			want: with("name", "n9", "join", []string{"b:1", "c:1"}, "heartbeat-timeout", 2*time.Second),
			set:  []string{"heartbeat-timeout"}},
		{name: "a flag set to its default on the command line still wins",
			file: "tls-required: true\n", args: []string{"--tls-required=false"}, want: defaults, set: nil},
		{name: "unknown key", file: "name: n1\n\ngossip-lisen: 10.77.0.1:7946\n",
			err: `^config FILE:3: gossip-lisen: unknown key$`},
		{name: "the first unknown key is reported", file: "name: n1\nraft_listen_x: 1\nheartbeat_timeout: 1s\n",
			err: `^config FILE:2: raft_listen_x: unknown key$`},
		{name: "underscores suggest the flag", file: "heartbeat_timeout: 1s\n",
			err: `^config FILE:1: heartbeat_timeout: unknown key \(did you mean "heartbeat-timeout"\?\)$`},
		{name: "help is not a key", file: "help: true\n", err: `^config FILE:1: help: unknown key$`},
		{name: "config is not a key", file: "config: other.yaml\n", err: `^config FILE:1: config: unknown key$`},
		{name: "key given twice", file: "name: a\njoin: []\nname: b\n", err: `^config FILE:3: name: given twice \(first on line 1\)$`},
		{name: "bad duration", file: "name: n1\nheartbeat-timeout: 5\n",
			err: `^config FILE:2: heartbeat-timeout: "5" is not a valid duration such as 650ms or 30s: .*missing unit`},
		{name: "bad bool", file: "tls-required: yes\n", err: `^config FILE:1: tls-required: "yes" is not a valid bool \(true or false\): `},
		{name: "bad int", file: "nbd-max-inflight: lots\n", err: `^config FILE:1: nbd-max-inflight: "lots" is not a valid int: `},
		{name: "negative uint", file: "checkpoint-entries: -1\n", err: `^config FILE:1: checkpoint-entries: "-1" is not a valid uint64: `},
		{name: "list for a single value", file: "name: [n1, n2]\n", err: `^config FILE:1: name: want a single string, not a list$`},
		{name: "mapping for a value", file: "heartbeat-timeout:\n  seconds: 1\n", err: `^config FILE:1: heartbeat-timeout: want a duration .*, not a mapping$`},
		{name: "mapping in a list", file: "peer:\n  - n1\n  - {raft: x}\n", err: `^config FILE:1: peer: line 3: a list element must be a single value$`},
		{name: "no value", file: "name:\n", err: `^config FILE:1: name: no value \(want a string; remove the key to keep the default\)$`},
		{name: "not a mapping", file: "- name: n1\n", err: `^config FILE: line 1: want a mapping of flag names to values`},
		{name: "a scalar document", file: "n1\n", err: `^config FILE: line 1: want a mapping`},
		{name: "YAML syntax", file: "name: n1\njoin: [a\n", err: `^config FILE: yaml: line \d+: `},
		{name: "tab indentation", file: "peer:\n\t- n1\n", err: `^config FILE: yaml: line 2: found character that cannot start any token`},
		{name: "two documents", file: "name: n1\n---\nname: n2\n", err: `^config FILE: line 2: a second YAML document; want one$`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newTestFlags()
			if err := f.fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			path := writeConfig(t, tc.file)
			set, err := applyConfigFile(f.fs, path)
			if tc.err != "" {
				if err == nil {
					t.Fatalf("no error; want %s", tc.err)
				}
				re := regexp.MustCompile(strings.ReplaceAll(tc.err, "FILE", regexp.QuoteMeta(path)))
				if !re.MatchString(err.Error()) {
					t.Fatalf("error %q\nwant match %s", err, re)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := f.values(); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("values\n got %v\nwant %v", got, tc.want)
			}
			if !slices.Equal(set, tc.set) {
				t.Errorf("set %q, want %q", set, tc.set)
			}
			for _, name := range tc.set {
				if !f.fs.Changed(name) {
					t.Errorf("%s set from the file but not marked changed", name)
				}
			}
		})
	}
}

func TestApplyConfigFileMissing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.yaml")
	_, err := applyConfigFile(newTestFlags().fs, path)
	if err == nil || !errors.Is(err, iofs.ErrNotExist) || !strings.Contains(err.Error(), "--config") || !strings.Contains(err.Error(), path) {
		t.Fatalf("error %v: want a not-exist error naming --config and %s", err, path)
	}
}

// TestAgentConfigFlag runs "tandem agent --config" through the real
// command: the file's values reach the flags before anything else runs,
// and errors in it stop the agent.
func TestAgentConfigFlag(t *testing.T) {
	run := func(args ...string) error {
		root := newRootCmd()
		root.SetArgs(args)
		root.SetOut(&strings.Builder{})
		root.SetErr(&strings.Builder{})
		return root.Execute()
	}
	// log-format, a flag of the root command, is read before the agent
	// starts: a bad value proves the file was applied first.
	bad := writeConfig(t, "name: n1\nlog-format: bogus\n")
	if err := run("agent", "--config", bad); err == nil || !strings.Contains(err.Error(), `--log-format "bogus"`) {
		t.Fatalf("agent --config with log-format bogus: %v", err)
	}
	if err := run("agent", "--config", bad, "--log-format", "bogus2"); err == nil || !strings.Contains(err.Error(), `"bogus2"`) {
		t.Fatalf("the command line did not override the file: %v", err)
	}
	unknown := writeConfig(t, "name: n1\nvoters: [n1]\n")
	if err := run("agent", "--config", unknown); err == nil || !strings.Contains(err.Error(), unknown+":2: voters: unknown key") {
		t.Fatalf("agent --config with an unknown key: %v", err)
	}
	if err := run("agent", "--config", filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("agent --config with a missing file: %v", err)
	}
}

// TestDeployConfigs checks that the example configs of deploy/config are
// complete and consistent: each sets every key of a cluster-mode host,
// with its own addresses, and every host lists the same voters.
func TestDeployConfigs(t *testing.T) {
	paths, err := filepath.Glob("../../deploy/config/n*.yaml")
	if err != nil || len(paths) != 3 {
		t.Fatalf("deploy/config: %v %v, want n1.yaml, n2.yaml, n3.yaml", paths, err)
	}
	for i, p := range paths {
		cmd, _, err := newRootCmd().Find([]string{"agent"})
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.ParseFlags(nil); err != nil { // adds the root's flags (log-format)
			t.Fatal(err)
		}
		fs := cmd.Flags()
		set, err := applyConfigFile(fs, p)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"name", "data", "raft-listen", "nbd-listen", "admin-listen", "gossip-listen",
			"join", "control-voters", "gossip-key-file", "admin-token-file"} {
			if !slices.Contains(set, k) {
				t.Errorf("%s does not set %s", p, k)
			}
		}
		get := func(name string) string { return fs.Lookup(name).Value.String() }
		ip := "10.77.0." + string(rune('1'+i))
		if name := get("name"); name != "n"+string(rune('1'+i)) {
			t.Errorf("%s: name %s", p, name)
		}
		for _, k := range []string{"raft-listen", "nbd-listen", "admin-listen", "gossip-listen"} {
			if v := get(k); !strings.HasPrefix(v, ip+":") {
				t.Errorf("%s: %s %s is not on %s", p, k, v, ip)
			}
		}
		if v := get("control-voters"); v != "[n1,n2,n3]" {
			t.Errorf("%s: control-voters %s", p, v)
		}
		if v := get("join"); strings.Contains(v, ip+":") || strings.Count(v, ":7946") != 2 {
			t.Errorf("%s: join %s should list the two other hosts", p, v)
		}
	}
}
