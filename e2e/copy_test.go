package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testbin"
)

// connectionsSeen counts the NBD connections the agent has logged as
// entering transmission (it must run with --log-level debug).
func connectionsSeen(a *testbin.Agent) int {
	return strings.Count(a.Log(), `msg="nbd: transmission started"`)
}

// waitConnections waits until the agent has logged at least n connections
// (its log is read asynchronously) and returns the count.
func waitConnections(a *testbin.Agent, n int) int {
	deadline := time.Now().Add(3 * time.Second)
	for {
		c := connectionsSeen(a)
		if c >= n || time.Now().After(deadline) {
			return c
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestNBDCopy copies a 32 MiB random file into an export and back out with
// nbdcopy, over one connection and over four (multi-conn), and checks the
// copies are identical to the source.
func TestNBDCopy(t *testing.T) {
	t.Parallel()
	testbin.Require(t, "nbdcopy", "nbdkit")
	const size = 32 * mib
	a := startAgent(t, "--log-level", "debug", "--volume", "a=32M", "--volume", "b=32M")
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	want := randomBytes(42, size)
	// A hole in the middle, to exercise nbdcopy's zeroing path.
	clear(want[10*mib : 12*mib])
	if err := os.WriteFile(src, want, 0o600); err != nil {
		t.Fatal(err)
	}

	for i, c := range []struct {
		export string
		conns  int
	}{{"a", 1}, {"b", 4}} {
		t.Run(fmt.Sprintf("connections=%d", c.conns), func(t *testing.T) {
			uri := a.URI(c.export)
			before := connectionsSeen(a)
			// nbdcopy uses at most one connection per thread.
			par := []string{fmt.Sprintf("--connections=%d", c.conns), fmt.Sprintf("--threads=%d", c.conns)}
			testbin.Run(t, toolTimeout, "nbdcopy", append(par, "--flush", src, uri)...)
			out := filepath.Join(dir, fmt.Sprintf("out%d.raw", i))
			testbin.Run(t, toolTimeout, "nbdcopy", append(par, uri, out)...)
			got := readFile(t, out)
			if d := firstDiff(got, want); d >= 0 {
				t.Fatalf("round trip through export %s: copy differs from the source at offset %d (len %d, want %d)", c.export, d, len(got), len(want))
			}
			// nbdcopy opens the requested number of connections for each
			// copy when the server advertises multi-conn.
			if n := waitConnections(a, before+2*c.conns) - before; n < 2*c.conns {
				t.Errorf("the agent saw %d connections for two copies with --connections=%d, want at least %d", n, c.conns, 2*c.conns)
			}
		})
	}
	t.Run("export to export", func(t *testing.T) {
		// Overwrite b with other data first, so that the copy must
		// replace it.
		testbin.Run(t, toolTimeout, "nbdcopy", "--", "[", "nbdkit", "pattern", "32M", "]", a.URI("b"))
		testbin.Run(t, toolTimeout, "nbdcopy", "--connections=4", "--threads=4", a.URI("a"), a.URI("b"))
		out := filepath.Join(dir, "b.raw")
		testbin.Run(t, toolTimeout, "nbdcopy", a.URI("b"), out)
		if d := firstDiff(readFile(t, out), want); d >= 0 {
			t.Fatalf("export b after copying a onto it differs from the source at %d", d)
		}
	})
}

// fioResult is the part of fio's JSON output the tests check.
type fioResult struct {
	Jobs []struct {
		Name  string `json:"jobname"`
		Error int    `json:"error"`
		Read  struct {
			IOBytes int64 `json:"io_bytes"`
		} `json:"read"`
		Write struct {
			IOBytes int64 `json:"io_bytes"`
		} `json:"write"`
	} `json:"jobs"`
}

// TestFio runs fio's nbd engine against a replicated and a local volume:
// 4 KiB random writes at queue depth 32 and 1 MiB sequential writes, each
// verified with crc32c by reading everything back.
func TestFio(t *testing.T) {
	t.Parallel()
	testbin.Require(t, "fio")
	a := startAgent(t, "--volume", "vol0=64M", "--volume", "scratch=64M,local")
	for _, export := range []string{"vol0", "scratch"} {
		t.Run(export, func(t *testing.T) { runFio(t, a.URI(export)) })
	}
}

// runFio runs TestFio's jobs against uri.
func runFio(t *testing.T, uri string) {
	for _, c := range []struct {
		name string
		args []string
	}{
		{"randwrite-4k-qd32", []string{"--rw=randwrite", "--bs=4k", "--iodepth=32"}},
		{"write-1m-qd8", []string{"--rw=write", "--bs=1M", "--iodepth=8"}},
		{"randrw-mixed-sizes", []string{"--rw=randwrite", "--bsrange=512-256k", "--iodepth=16", "--verify_backlog=64"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "fio.json")
			args := append([]string{
				"--name=" + c.name, "--ioengine=nbd", "--uri=" + uri,
				"--size=64M", "--verify=crc32c", "--do_verify=1",
				"--output-format=json", "--output=" + out,
				// No verify state files in the working directory.
				"--verify_state_save=0",
			}, c.args...)
			log := testbin.Run(t, 3*toolTimeout, "fio", args...)
			var r fioResult
			if err := json.Unmarshal(readFile(t, out), &r); err != nil {
				t.Fatalf("fio JSON: %v\n%s", err, log)
			}
			if len(r.Jobs) != 1 {
				t.Fatalf("fio reported %d jobs, want 1", len(r.Jobs))
			}
			j := r.Jobs[0]
			if j.Error != 0 {
				t.Errorf("fio job error %d\n%s", j.Error, log)
			}
			if j.Write.IOBytes < 64*mib {
				t.Errorf("fio wrote %d bytes, want at least %d", j.Write.IOBytes, 64*mib)
			}
			// The verify phase reads back every block written.
			if j.Read.IOBytes < 64*mib {
				t.Errorf("fio verified %d bytes, want at least %d", j.Read.IOBytes, 64*mib)
			}
			if strings.Contains(log, "verify") && strings.Contains(log, "bad") {
				t.Errorf("fio reported verify failures:\n%s", log)
			}
		})
	}
}
