package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tandem-project/tandem/internal/testbin"
)

// TestQemuIO drives one export with qemu-io, step by step, each step
// verified by reading back with qemu-io's pattern check; the allocation left
// by discard and write-zeroes is then checked with nbdinfo --map.
func TestQemuIO(t *testing.T) {
	t.Parallel()
	testbin.Require(t, "qemu-io", "nbdinfo")
	a := startAgent(t, "--volume", "vol0=16M")
	uri := a.URI("vol0")

	steps := []struct {
		name string
		cmds []string
	}{
		{"pattern write and read", []string{
			"write -P 0xab 0 4M",
			"read -P 0xab 0 4M",
		}},
		{"FUA write", []string{
			"write -f -P 0xcd 4M 1M",
			"read -P 0xcd 4M 1M",
			"read -P 0xab 0 4M",
		}},
		{"byte-granular write", []string{
			fmt.Sprintf("write -P 0x5a %d 3", 8*mib+1),
			fmt.Sprintf("read -P 0 %d 1", 8*mib),
			fmt.Sprintf("read -P 0x5a %d 3", 8*mib+1),
			fmt.Sprintf("read -P 0 %d 4092", 8*mib+4),
		}},
		{"queued aio writes then aio_flush", func() []string {
			var c []string
			for i := range 8 {
				c = append(c, fmt.Sprintf("aio_write -P 0x%02x %d 64k", 0x10+i, 9*mib+int64(i)*64*kib))
			}
			c = append(c, "aio_flush")
			for i := range 8 {
				c = append(c, fmt.Sprintf("read -P 0x%02x %d 64k", 0x10+i, 9*mib+int64(i)*64*kib))
			}
			return c
		}()},
		{"discard punches a hole", []string{
			"discard 1M 1M",
			"read -P 0 1M 1M",
			"read -P 0xab 0 1M",
			"read -P 0xab 2M 2M",
		}},
		{"write -z -u (may unmap)", []string{
			"write -z -u 2M 1M",
			"read -P 0 2M 1M",
			"read -P 0xab 0 1M",
			"read -P 0xab 3M 1M",
		}},
		{"write -z (NO_HOLE)", []string{
			"write -z 3M 1M",
			"read -P 0 3M 1M",
			"read -P 0xcd 4M 1M",
		}},
		{"unaligned write -z -u inside data", []string{
			fmt.Sprintf("write -z -u %d 1000", 4*mib+512),
			"read -P 0xcd 4M 512",
			fmt.Sprintf("read -P 0 %d 1000", 4*mib+512),
			fmt.Sprintf("read -P 0xcd %d %d", 4*mib+1512, mib-1512),
		}},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) { qemuIO(t, uri, s.cmds...) })
	}

	m := nbdMap(t, uri)
	for _, c := range []struct {
		name    string
		off, n  int64
		want    int
		notHole bool
	}{
		{name: "data before the discard", off: 0, n: 1 * mib, want: typeData},
		{name: "discard", off: 1 * mib, n: 1 * mib, want: typeHoleZero},
		{name: "write -z -u", off: 2 * mib, n: 1 * mib, want: typeHoleZero},
		{name: "write -z (NO_HOLE) stays allocated", off: 3 * mib, n: 1 * mib, notHole: true},
		{name: "FUA write", off: 4 * mib, n: 512, want: typeData},
		{name: "never written", off: 10 * mib, n: 6 * mib, want: typeHoleZero},
	} {
		t.Run("map/"+c.name, func(t *testing.T) {
			if c.notHole {
				for typ := range rangeTypes(t, m, c.off, c.n) {
					if typ&1 != 0 {
						t.Errorf("range %d+%d written with NO_HOLE is reported as a hole (type %d): %+v", c.off, c.n, typ, m)
					}
				}
				return
			}
			wantRangeType(t, m, c.off, c.n, c.want)
		})
	}
}

// qemuImgExtent is one entry of "qemu-img map --output=json".
type qemuImgExtent struct {
	Start   int64 `json:"start"`
	Length  int64 `json:"length"`
	Present bool  `json:"present"`
	Zero    bool  `json:"zero"`
	Data    bool  `json:"data"`
}

// TestQemuImg copies a sparse 64 MiB image into an export with qemu-img
// convert -n, compares it, maps it, and copies it back out.
func TestQemuImg(t *testing.T) {
	t.Parallel()
	testbin.Require(t, "qemu-img", "qemu-io")
	const size = 64 * mib
	a := startAgent(t, "--volume", "vol0=64M")
	uri := a.URI("vol0")
	dir := t.TempDir()

	// The source: random data with holes of several sizes, one range of
	// explicitly written (allocated) zeroes.
	type span struct{ off, n int64 }
	data := []span{
		{0, 3 * mib},
		{3*mib + 64*kib, 5*mib - 64*kib},
		{20 * mib, 8 * mib},
		{40 * mib, 4 * kib},
		{48 * mib, 2 * mib},
		{51 * mib, 5 * mib},
		{63 * mib, 1 * mib},
	}
	holes := []span{
		{3 * mib, 64 * kib},
		{8 * mib, 12 * mib},
		{28 * mib, 12 * mib},
		{40*mib + 4*kib, 8*mib - 4*kib},
		{56 * mib, 7 * mib},
	}
	writtenZero := span{50 * mib, 1 * mib}

	src := filepath.Join(dir, "src.raw")
	want := make([]byte, size)
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range data {
		b := randomBytes(uint64(i), d.n)
		copy(want[d.off:], b)
		if _, err := f.WriteAt(b, d.off); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.WriteAt(make([]byte, writtenZero.n), writtenZero.off); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	// Fill the export first so that every hole must be made by the copy.
	qemuIO(t, uri, "write -P 0x55 0 64M")

	testbin.Run(t, toolTimeout, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, uri)

	t.Run("compare export with source", func(t *testing.T) {
		out, err := testbin.RunErr(toolTimeout, "qemu-img", "compare", "-f", "raw", "-F", "raw", uri, src)
		if err != nil || !strings.Contains(out, "Images are identical") {
			t.Fatalf("qemu-img compare: %v\n%s", err, out)
		}
	})

	t.Run("map shows the holes", func(t *testing.T) {
		out := testbin.Run(t, toolTimeout, "qemu-img", "map", "--output=json", "-f", "raw", uri)
		var m []qemuImgExtent
		if err := json.Unmarshal([]byte(out), &m); err != nil {
			t.Fatalf("qemu-img map: %v\n%s", err, out)
		}
		// check checks every map entry overlapping s.
		check := func(what string, s span, wantData, wantZero bool) {
			t.Helper()
			covered := int64(0)
			for _, e := range m {
				lo, hi := max(e.Start, s.off), min(e.Start+e.Length, s.off+s.n)
				if lo >= hi {
					continue
				}
				covered += hi - lo
				if e.Data != wantData || e.Zero != wantZero || !e.Present {
					t.Errorf("%s %d+%d: map entry %+v, want data=%v zero=%v", what, s.off, s.n, e, wantData, wantZero)
				}
			}
			if covered != s.n {
				t.Errorf("%s %d+%d: map covers only %d bytes", what, s.off, s.n, covered)
			}
		}
		for _, d := range data {
			check("data", d, true, false)
		}
		for _, h := range holes {
			check("hole", h, false, true)
		}
		check("written zeroes", writtenZero, false, true)
		if t.Failed() {
			t.Logf("qemu-img map:\n%s", out)
		}
	})

	t.Run("convert back out", func(t *testing.T) {
		out := filepath.Join(dir, "out.raw")
		testbin.Run(t, toolTimeout, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri, out)
		got := readFile(t, out)
		if i := firstDiff(got, want); i >= 0 {
			t.Fatalf("copied-out image differs from the source at offset %d (len %d, want %d)", i, len(got), len(want))
		}
		if o, err := testbin.RunErr(toolTimeout, "qemu-img", "compare", "-f", "raw", "-F", "raw", out, src); err != nil {
			t.Fatalf("qemu-img compare out src: %v\n%s", err, o)
		}
	})

	t.Run("compare detects a one-byte change", func(t *testing.T) {
		// qemu-img compare reports mismatches by 512-byte sector.
		off := 33*mib + 1536
		qemuIO(t, uri, fmt.Sprintf("write -P 0x01 %d 1", off))
		out, err := testbin.RunErr(toolTimeout, "qemu-img", "compare", "-f", "raw", "-F", "raw", uri, src)
		if err == nil || !strings.Contains(out, fmt.Sprintf("Content mismatch at offset %d", off)) {
			t.Fatalf("qemu-img compare after changing byte %d: err %v, want a mismatch at %d\n%s", off, err, off, out)
		}
	})
}
