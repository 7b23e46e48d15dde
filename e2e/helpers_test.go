package e2e

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testbin"
)

const (
	kib = int64(1) << 10
	mib = int64(1) << 20

	// toolTimeout bounds every external client run; the longest runs in
	// this package take a few seconds.
	toolTimeout = 90 * time.Second
)

// startAgent starts "tandem agent" on a fresh temporary data directory.
func startAgent(t *testing.T, args ...string) *testbin.Agent {
	t.Helper()
	return testbin.StartAgent(t, t.TempDir(), args...)
}

// volumePath is where the agent keeps the file of volume name (see
// agent.Config.DataDir).
func volumePath(dataDir, name string) string {
	return filepath.Join(dataDir, "groups", name, "volume.img")
}

// writeVolumeFile creates the file of volume name under dataDir with
// content, grown (sparsely) to size bytes. Read-only volumes must exist
// before the agent starts.
func writeVolumeFile(t *testing.T, dataDir, name string, size int64, content []byte) {
	t.Helper()
	p := volumePath(dataDir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, content, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
}

// randomBytes returns n reproducible pseudo-random bytes.
func randomBytes(seed uint64, n int64) []byte {
	r := rand.New(rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 0xe2, 0xe}))
	b := make([]byte, n)
	for i := 0; i < len(b); i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < len(b); j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// qemuIO runs qemu-io on a raw NBD URI with one -c per command and fails the
// test if qemu-io fails or reports a pattern mismatch.
func qemuIO(t *testing.T, uri string, cmds ...string) string {
	t.Helper()
	return runQemuIO(t, []string{"-f", "raw"}, uri, cmds)
}

// qemuIOReadOnly is qemuIO opening the export read-only (qemu-io -r).
func qemuIOReadOnly(t *testing.T, uri string, cmds ...string) string {
	t.Helper()
	return runQemuIO(t, []string{"-r", "-f", "raw"}, uri, cmds)
}

func runQemuIO(t *testing.T, args []string, uri string, cmds []string) string {
	t.Helper()
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, err := testbin.RunErr(toolTimeout, "qemu-io", append(args, uri)...)
	if err != nil || strings.Contains(out, "failed") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io %s %q: %v\n%s", uri, cmds, err, out)
	}
	return out
}

// qemuIOFails runs qemu-io and expects it to fail, returning its output.
func qemuIOFails(t *testing.T, uri string, cmds ...string) string {
	t.Helper()
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, err := testbin.RunErr(toolTimeout, "qemu-io", append(args, uri)...)
	if err == nil {
		t.Fatalf("qemu-io %s %q succeeded, want a failure\n%s", uri, cmds, out)
	}
	return out
}

// extent is one entry of "nbdinfo --map --json".
type extent struct {
	Offset      int64  `json:"offset"`
	Length      int64  `json:"length"`
	Type        int    `json:"type"`
	Description string `json:"description"`
}

// Extent types of base:allocation.
const (
	typeData     = 0
	typeHoleZero = 3
)

// nbdMap returns the base:allocation map of uri as nbdinfo reports it.
func nbdMap(t *testing.T, uri string) []extent {
	t.Helper()
	out := testbin.Run(t, toolTimeout, "nbdinfo", "--map", "--json", uri)
	var m []extent
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("nbdinfo --map --json %s: %v\n%s", uri, err, out)
	}
	var pos int64
	for _, e := range m {
		if e.Offset != pos || e.Length <= 0 {
			t.Fatalf("nbdinfo --map %s: extents not contiguous at %d: %+v", uri, pos, m)
		}
		pos += e.Length
	}
	return m
}

// rangeTypes returns the distinct extent types covering [off, off+n) in m,
// failing the test if m does not cover the whole range.
func rangeTypes(t *testing.T, m []extent, off, n int64) map[int]bool {
	t.Helper()
	types := map[int]bool{}
	covered := int64(0)
	for _, e := range m {
		lo, hi := max(e.Offset, off), min(e.Offset+e.Length, off+n)
		if lo < hi {
			types[e.Type] = true
			covered += hi - lo
		}
	}
	if covered != n {
		t.Fatalf("map covers %d of the %d bytes at %d: %+v", covered, n, off, m)
	}
	return types
}

// wantRangeType fails unless every byte of [off, off+n) has extent type want.
func wantRangeType(t *testing.T, m []extent, off, n int64, want int) {
	t.Helper()
	types := rangeTypes(t, m, off, n)
	if len(types) != 1 || !types[want] {
		t.Errorf("range %d+%d: extent types %v, want only %d; map %+v", off, n, keys(types), want, m)
	}
}

func keys(m map[int]bool) []int {
	var ks []int
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// nbdsh runs a Python script in nbdsh without the implicit handle (the
// script connects itself) and returns its output. A Python exception fails
// the test.
func nbdsh(t *testing.T, script string) string {
	t.Helper()
	out, err := testbin.RunErr(toolTimeout, "nbdsh", "-n", "-c", script)
	if err != nil {
		t.Fatalf("nbdsh: %v\n%s\nscript:\n%s", err, out, script)
	}
	return out
}

// pyStr quotes s as a Python string literal.
func pyStr(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// unixURI is the NBD URI of export over a unix socket.
func unixURI(socket, export string) string {
	return fmt.Sprintf("nbd+unix:///%s?socket=%s", export, socket)
}

// readFile reads a whole file or fails the test.
func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// firstDiff returns the first offset where a and b differ, or -1.
func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

// shortDir returns a short temporary directory for unix sockets, whose
// paths are limited to 108 bytes.
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "tnd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}
