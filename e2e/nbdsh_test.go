package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testbin"
)

// TestNBDShInflight puts 64 writes of distinct random data in flight at once
// on one libnbd connection, then 64 reads (issued in reverse order), polls
// until all complete and verifies every buffer.
func TestNBDShInflight(t *testing.T) {
	t.Parallel()
	testbin.Require(t, "nbdsh")
	a := startAgent(t, "--volume", "vol0=16M")
	for _, bs := range []int{4096, 64 << 10, 200_001} {
		t.Run(fmt.Sprintf("bs=%d", bs), func(t *testing.T) {
			script := fmt.Sprintf(`
import nbd, os
N, BS = 64, %d
h = nbd.NBD()
h.connect_uri(%s)
want = [os.urandom(BS) for _ in range(N)]
done_order = []
def cb(i):
    def f(err):
        done_order.append(i)
        return 0
    return f
wc = [h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(want[i])), i*BS, completion=cb(i)) for i in range(N)]
print("writes in flight", h.aio_in_flight())
while h.aio_in_flight() > 0:
    h.poll(-1)
assert all(h.aio_command_completed(c) for c in wc), "write not completed"
assert sorted(done_order) == list(range(N)), done_order
bufs = [(i, nbd.Buffer(BS)) for i in reversed(range(N))]
rc = [h.aio_pread(b, i*BS) for i, b in bufs]
print("reads in flight", h.aio_in_flight())
while h.aio_in_flight() > 0:
    h.poll(-1)
assert all(h.aio_command_completed(c) for c in rc), "read not completed"
bad = [i for i, b in bufs if bytes(b.to_bytearray()) != want[i]]
assert not bad, "buffers with wrong data: %%r" %% bad
print("verified", N)
h.shutdown()
`, bs, pyStr(a.URI("vol0")))
			out := nbdsh(t, script)
			for _, want := range []string{"writes in flight 64\n", "reads in flight 64\n", "verified 64\n"} {
				if !strings.Contains(out, want) {
					t.Errorf("nbdsh output lacks %q:\n%s", want, out)
				}
			}
		})
	}
}

// TestNBDShMultiConn checks the multi-conn promise: once a FUA write or a
// FLUSH returned on one connection, another connection to the same export
// reads the new data.
func TestNBDShMultiConn(t *testing.T) {
	t.Parallel()
	testbin.Require(t, "nbdsh")
	a := startAgent(t, "--volume", "vol0=16M")
	script := fmt.Sprintf(`
import nbd, os, random
def conn():
    h = nbd.NBD()
    h.connect_uri(%s)
    assert h.can_multi_conn(), "multi-conn not advertised"
    return h
h1, h2 = conn(), conn()
size = h1.get_size()
rnd = random.Random(7)
for i in range(200):
    n = rnd.choice([1, 512, 4096, 65536, 1 << 20])
    off = rnd.randrange(0, size - n)
    data = os.urandom(n)
    if i %% 2 == 0:
        h1.pwrite(data, off, nbd.CMD_FLAG_FUA)
        how = "FUA write on h1"
    else:
        h1.pwrite(data, off)
        h1.flush()
        how = "write+flush on h1"
    got = h2.pread(n, off)
    assert got == data, "%%s at %%d+%%d not seen by h2" %% (how, off, n)
    # And the other way round, with write-zeroes and trim.
    h2.zero(n, off, nbd.CMD_FLAG_FUA)
    assert h1.pread(n, off) == bytes(n), "FUA zero on h2 at %%d+%%d not seen by h1" %% (off, n)
print("multi-conn ok")
h1.shutdown(); h2.shutdown()
`, pyStr(a.URI("vol0")))
	if out := nbdsh(t, script); !strings.Contains(out, "multi-conn ok") {
		t.Fatalf("unexpected nbdsh output:\n%s", out)
	}
}

// TestNBDShErrors sends invalid requests with libnbd's strict mode off and
// checks the errno the server returns for each, with structured replies and
// with simple replies, then checks that the connection still works.
func TestNBDShErrors(t *testing.T) {
	t.Parallel()
	testbin.Require(t, "nbdsh")
	dir := t.TempDir()
	writeVolumeFile(t, dir, "ro1", 1*mib, []byte("read-only volume"))
	a := testbin.StartAgent(t, dir, "--volume", "vol0=64M", "--volume", "ro1=1M,ro")

	// Each case is a Python expression on h (vol0, 64 MiB, meta context
	// base:allocation requested), ro (ro1) or nometa (vol0 without a meta
	// context); S is the size of vol0.
	cases := []struct {
		name string
		expr string
		want string // errno name or "OK"
		only string // "structured" or "simple": run only with that kind of replies
	}{
		{"write past the end", `h.pwrite(b"x"*4096, S-1024)`, "ENOSPC", ""},
		{"write starting at the end", `h.pwrite(b"x", S)`, "ENOSPC", ""},
		{"write at offset 2^64-4096", `h.pwrite(b"x"*4096, 2**64-4096)`, "ENOSPC", ""},
		{"write-zeroes past the end", `h.zero(8192, S-4096)`, "ENOSPC", ""},
		{"read past the end", `h.pread(4096, S-1024)`, "EINVAL", ""},
		{"read at offset 2^64-4096", `h.pread(4096, 2**64-4096)`, "EINVAL", ""},
		{"trim past the end", `h.trim(8192, S-4096)`, "EINVAL", ""}, // proto.md: "EINVAL if it receives a read or trim request ... beyond the size"
		{"cache past the end", `h.cache(8192, S-4096)`, "EINVAL", ""},
		{"block status past the end", `h.block_status(8192, S+4096, lambda *a: 0)`, "EINVAL", "structured"},
		{"block status of zero length", `h.block_status(0, 0, lambda *a: 0)`, "EINVAL", "structured"},
		{"block status without a meta context", `nometa.block_status(4096, 0, lambda *a: 0)`, "EINVAL", "structured"},
		{"read larger than 32 MiB", `h.pread(32*2**20+1, 0)`, "EINVAL", ""},
		{"write larger than 32 MiB", `h.pwrite(bytes(32*2**20+1), 0)`, "EINVAL", ""},
		{"write with unknown flag 0x80", `h.pwrite(b"x", 0, 0x80)`, "EINVAL", ""},
		{"write with NO_HOLE", `h.pwrite(b"x", 0, nbd.CMD_FLAG_NO_HOLE)`, "EINVAL", ""},
		{"read with REQ_ONE", `h.pread(512, 0, nbd.CMD_FLAG_REQ_ONE)`, "EINVAL", ""},
		{"read with FAST_ZERO", `h.pread(512, 0, nbd.CMD_FLAG_FAST_ZERO)`, "EINVAL", ""},
		{"trim with FAST_ZERO", `h.trim(4096, 0, nbd.CMD_FLAG_FAST_ZERO)`, "EINVAL", ""},
		{"write to read-only export", `ro.pwrite(b"x", 0)`, "EPERM", ""},
		{"FUA write to read-only export", `ro.pwrite(b"x", 0, nbd.CMD_FLAG_FUA)`, "EPERM", ""},
		{"trim on read-only export", `ro.trim(4096, 0)`, "EPERM", ""},
		{"write-zeroes on read-only export", `ro.zero(4096, 0)`, "EPERM", ""},
		{"fast zero on read-only export", `ro.zero(4096, 0, nbd.CMD_FLAG_FAST_ZERO)`, "EPERM", ""},
		{"read from read-only export", `check(ro.pread(16, 0) == b"read-only volume")`, "OK", ""},
		{"flush on read-only export", `ro.flush()`, "OK", ""},
		{"cache on read-only export", `ro.cache(4096, 0)`, "OK", ""},
		{"fast zero", `h.pwrite(b"\xff"*8192, 4096); h.zero(8192, 4096, nbd.CMD_FLAG_FAST_ZERO); check(h.pread(8192, 4096) == bytes(8192))`, "OK", ""},
		{"fast zero with NO_HOLE", `h.pwrite(b"\xff"*8192, 4096); h.zero(8192, 4096, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE); check(h.pread(8192, 4096) == bytes(8192))`, "OK", ""},
		{"unaligned fast zero", `h.pwrite(b"\xff"*8192, 4096); h.zero(100, 4196, nbd.CMD_FLAG_FAST_ZERO); check(h.pread(8192, 4096) == b"\xff"*100 + bytes(100) + b"\xff"*7992)`, "OK", ""},
		{"flush with FUA", `h.flush(nbd.CMD_FLAG_FUA)`, "OK", ""},
		{"trim with FUA", `h.trim(4096, 0, nbd.CMD_FLAG_FUA)`, "OK", ""},
		{"read with DF", `h.pread(4096, 0, nbd.CMD_FLAG_DF)`, "OK", "structured"},
		{"read with DF without structured replies", `h.pread(4096, 0, nbd.CMD_FLAG_DF)`, "EINVAL", "simple"},
		{"write of the last byte", `h.pwrite(b"z", S-1); check(h.pread(1, S-1) == b"z")`, "OK", ""},
		{"write of 32 MiB exactly", `h.pwrite(b"\x01"*(32*2**20), 0); check(h.pread(32*2**20, 0) == b"\x01"*(32*2**20))`, "OK", ""},
		{"block status with REQ_ONE", `check_one_extent()`, "OK", "structured"},
	}

	for _, structured := range []bool{true, false} {
		mode := "simple"
		if structured {
			mode = "structured"
		}
		t.Run(mode+" replies", func(t *testing.T) {
			var py strings.Builder
			fmt.Fprintf(&py, `
import nbd, errno, json
def conn(uri, meta):
    c = nbd.NBD()
    c.set_strict_mode(0)
    c.set_request_structured_replies(%s)
    if meta:
        c.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    c.connect_uri(uri)
    return c
h = conn(%s, True)
nometa = conn(%s, False)
ro = conn(%s, False)
assert h.get_structured_replies_negotiated() == %s
S = h.get_size()
def check(ok):
    if not ok:
        raise AssertionError("data check failed")
def check_one_extent():
    got = []
    h.block_status(S, 0, lambda ctx, off, ents, err: got.append(ents) or 0, nbd.CMD_FLAG_REQ_ONE)
    check(len(got) == 1 and len(got[0]) == 2)
results = {}
def run(name, f):
    try:
        f()
        results[name] = "OK"
    except nbd.Error as e:
        results[name] = errno.errorcode.get(e.errnum, str(e.errnum)) + ": " + e.string
    except AssertionError as e:
        results[name] = "WRONG DATA: " + str(e)
`, pyBool(structured), pyStr(a.URI("vol0")), pyStr(a.URI("vol0")), pyStr(a.URI("ro1")), pyBool(structured))
			for _, c := range cases {
				if c.only != "" && c.only != mode {
					continue
				}
				fmt.Fprintf(&py, "run(%s, lambda: (%s))\n", pyStr(c.name), strings.ReplaceAll(c.expr, "; ", ", "))
			}
			// After all the errors, every connection still works.
			py.WriteString(`
h.pwrite(b"alive", 1000); check(h.pread(5, 1000) == b"alive")
check(ro.pread(16, 0) == b"read-only volume")
nometa.flush()
print("RESULTS " + json.dumps(results))
`)
			out := nbdsh(t, py.String())
			i := strings.LastIndex(out, "RESULTS ")
			if i < 0 {
				t.Fatalf("no results from nbdsh:\n%s", out)
			}
			var results map[string]string
			if err := json.Unmarshal([]byte(strings.TrimSpace(out[i+len("RESULTS "):])), &results); err != nil {
				t.Fatalf("parsing nbdsh results: %v\n%s", err, out)
			}
			for _, c := range cases {
				if c.only != "" && c.only != mode {
					continue
				}
				t.Run(c.name, func(t *testing.T) {
					got, ok := results[c.name]
					if !ok {
						t.Fatalf("no result")
					}
					if code, _, _ := strings.Cut(got, ":"); code != c.want {
						t.Errorf("%s: got %s, want %s", c.expr, got, c.want)
					}
				})
			}
		})
	}
}

func pyBool(b bool) string {
	if b {
		return "True"
	}
	return "False"
}

// TestNBDShFastZeroWholeExport zeroes a whole 256 MiB export with
// FAST_ZERO: on a sparse file this is a hole punch, so the server must do it
// (not answer ENOTSUP), the data must read back as zeroes and the whole
// export must then be one hole (no zeroes were written).
func TestNBDShFastZeroWholeExport(t *testing.T) {
	t.Parallel()
	testbin.Require(t, "nbdsh")
	a := startAgent(t, "--volume", "vol0=256M")
	script := fmt.Sprintf(`
import nbd
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(%s)
assert h.can_fast_zero()
S = h.get_size()
for off in range(0, S, 32 << 20):
    h.pwrite(b"\xaa" * 4096, off)
h.pwrite(b"\xaa" * (1 << 20), S - (1 << 20))
h.zero(S, 0, nbd.CMD_FLAG_FAST_ZERO)
assert h.pread(1 << 20, S - (1 << 20)) == bytes(1 << 20), "data left after fast zero"
ext = []
h.block_status(S, 0, lambda ctx, off, e, err: ext.extend(e) or 0)
print("extents", ext)
`, pyStr(a.URI("vol0")))
	out := nbdsh(t, script)
	if want := fmt.Sprintf("extents [%d, 3]\n", 256*mib); !strings.Contains(out, want) {
		t.Errorf("after FAST_ZERO of the whole export, want one hole,zero extent %q, got:\n%s", want, out)
	}
}

// TestAgentStopsWithIdleClient connects a libnbd client, leaves it idle,
// and checks that SIGTERM stops the agent within a few seconds and that the
// client then sees its connection gone.
func TestAgentStopsWithIdleClient(t *testing.T) {
	t.Parallel()
	testbin.Require(t, "nbdsh")
	a := startAgent(t, "--volume", "vol0=16M")
	script := fmt.Sprintf(`
import nbd, sys
h = nbd.NBD()
h.connect_uri(%s)
h.pwrite(b"hello", 0)
print("ready", flush=True)
sys.stdin.readline()
try:
    h.pread(5, 0)
    print("still connected")
except nbd.Error as e:
    print("disconnected:", e.string)
`, pyStr(a.URI("vol0")))
	cmd := exec.Command("nbdsh", "-n", "-c", script)
	cmd.Env = testbin.CleanEnv()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() || lines.Text() != "ready" {
		t.Fatalf("client did not connect: %q %v\n%s", lines.Text(), lines.Err(), stderr.String())
	}

	start := time.Now()
	a.Stop(5 * time.Second)
	if !a.Exited() {
		t.Fatal("agent still running after Stop")
	}
	t.Logf("agent exited %v after SIGTERM with an idle client", time.Since(start).Round(time.Millisecond))

	stdin.Write([]byte("\n"))
	if !lines.Scan() {
		t.Fatalf("no answer from the client: %v\n%s", lines.Err(), stderr.String())
	}
	if got := lines.Text(); !strings.HasPrefix(got, "disconnected:") {
		t.Errorf("client after the agent stopped: %q, want a disconnection", got)
	}
}

// TestNBDShHandshake drives the option haggling step by step with libnbd's
// opt mode: NBD_OPT_LIST, NBD_OPT_INFO for a known and an unknown export,
// NBD_OPT_LIST_META_CONTEXT, then NBD_OPT_GO with base:allocation.
func TestNBDShHandshake(t *testing.T) {
	t.Parallel()
	testbin.Require(t, "nbdsh")
	a := startAgent(t, "--volume", "vol0=8M", "--volume", "vol1=4M")
	script := fmt.Sprintf(`
import nbd, errno
h = nbd.NBD()
h.set_opt_mode(True)
h.set_full_info(True)
h.connect_uri(%s)
names = []
h.opt_list(lambda name, desc: names.append(name) or 0)
print("list", sorted(names))
h.set_export_name("nope")
try:
    h.opt_info()
    print("info nope: OK")
except nbd.Error as e:
    print("info nope:", errno.errorcode.get(e.errnum))
h.set_export_name("vol1")
h.opt_info()
print("info vol1:", h.get_size(), h.get_canonical_export_name(), h.get_export_description(), h.get_block_size(nbd.SIZE_MINIMUM), h.get_block_size(nbd.SIZE_PREFERRED), h.get_block_size(nbd.SIZE_MAXIMUM))
ctx = []
h.opt_list_meta_context(lambda name: ctx.append(name) or 0)
print("meta contexts", ctx)
h.add_meta_context("base:allocation")
h.add_meta_context("qemu:dirty-bitmap:none")
h.set_export_name("vol0")
h.opt_go()
print("go", h.get_size(), h.can_meta_context("base:allocation"), h.can_meta_context("qemu:dirty-bitmap:none"))
h.pwrite(b"\x01" * 4096, 1 << 20)
ext = []
h.block_status(h.get_size(), 0, lambda ctx, off, e, err: ext.append((ctx, off, list(e))) or 0)
print("extents", ext)
`, pyStr(a.URI("vol0")))
	out := nbdsh(t, script)
	for _, want := range []string{
		"list ['vol0', 'vol1']\n",
		"info nope: ENOENT\n",
		"info vol1: 4194304 vol1 tandem volume vol1 1 4096 33554432\n",
		"meta contexts ['base:allocation']\n",
		"go 8388608 True False\n",
		// A hole, the 4 KiB written, a hole to the end.
		"extents [('base:allocation', 0, [1048576, 3, 4096, 0, 7335936, 3])]\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("nbdsh output lacks %q:\n%s", want, out)
		}
	}
}
