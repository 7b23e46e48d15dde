package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"os/exec"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/tandem-project/tandem/internal/testbin"
)

// nbdinfoExport is one export in "nbdinfo --json" output.
type nbdinfoExport struct {
	Name          string   `json:"export-name"`
	Description   string   `json:"description"`
	Size          int64    `json:"export-size"`
	Contexts      []string `json:"contexts"`
	ReadOnly      bool     `json:"is_read_only"`
	CanFlush      bool     `json:"can_flush"`
	CanFUA        bool     `json:"can_fua"`
	CanTrim       bool     `json:"can_trim"`
	CanZero       bool     `json:"can_zero"`
	CanFastZero   bool     `json:"can_fast_zero"`
	CanCache      bool     `json:"can_cache"`
	CanDF         bool     `json:"can_df"`
	CanMultiConn  bool     `json:"can_multi_conn"`
	MinBlockSize  int64    `json:"block_size_minimum"`
	PrefBlockSize int64    `json:"block_size_preferred"`
	MaxBlockSize  int64    `json:"block_size_maximum"`
}

type nbdinfoOutput struct {
	Protocol   string          `json:"protocol"`
	TLS        bool            `json:"TLS"`
	Structured bool            `json:"structured"`
	Exports    []nbdinfoExport `json:"exports"`
}

func nbdinfoJSON(t *testing.T, args ...string) nbdinfoOutput {
	t.Helper()
	out := testbin.Run(t, toolTimeout, "nbdinfo", append([]string{"--json"}, args...)...)
	var o nbdinfoOutput
	if err := json.Unmarshal([]byte(out), &o); err != nil {
		t.Fatalf("nbdinfo --json %v: %v\n%s", args, err, out)
	}
	return o
}

// exitCode runs a command and returns its exit code (-1 if it did not run
// to an exit) and combined output.
func exitCode(t *testing.T, name string, args ...string) (int, string) {
	t.Helper()
	out, err := testbin.RunErr(toolTimeout, name, args...)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out
	case errors.As(err, &ee):
		return ee.ExitCode(), out
	}
	t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	return -1, out
}

// TestNBDInfo checks what nbdinfo learns from the handshake: flags, sizes,
// the export list, description, block sizes and metadata contexts.
func TestNBDInfo(t *testing.T) {
	t.Parallel()
	testbin.Require(t, "nbdinfo", "qemu-io")
	dir := t.TempDir()
	roContent := bytes.Repeat([]byte{0x77}, int(64*kib))
	writeVolumeFile(t, dir, "ro1", 1*mib, roContent)
	a := testbin.StartAgent(t, dir,
		"--volume", "vol0=64M",
		"--volume", "odd=1000001",
		"--volume", "ro1=1M,ro",
	)
	sizes := map[string]int64{"vol0": 64 * mib, "odd": 1000001, "ro1": 1 * mib}
	names := []string{"vol0", "odd", "ro1"}

	// nbdinfo --can/--is exit 0 for true and 2 for false.
	const yes, no = 0, 2
	for _, c := range []struct {
		query  string // "--can X" or "--is X"
		rw, ro int
	}{
		{"--can connect", yes, yes},
		{"--can read", yes, yes},
		{"--can write", yes, no},
		{"--can flush", yes, yes},
		{"--can fua", yes, no},
		{"--can trim", yes, no},
		{"--can zero", yes, no},
		{"--can fast-zero", yes, no},
		{"--can cache", yes, yes},
		{"--can df", yes, yes},
		{"--can multi-conn", yes, yes},
		{"--can structured-reply", yes, yes},
		{"--is read-only", no, yes},
		{"--is rotational", no, no},
		{"--is tls", no, no},
	} {
		for _, exp := range []struct {
			name string
			want int
		}{{"vol0", c.rw}, {"odd", c.rw}, {"ro1", c.ro}} {
			t.Run("nbdinfo "+c.query+"/"+exp.name, func(t *testing.T) {
				args := append(strings.Fields(c.query), a.URI(exp.name))
				got, out := exitCode(t, "nbdinfo", args...)
				if got != exp.want {
					t.Errorf("nbdinfo %s: exit %d, want %d\n%s", strings.Join(args, " "), got, exp.want, out)
				}
			})
		}
	}

	t.Run("size", func(t *testing.T) {
		for _, name := range names {
			out := strings.TrimSpace(testbin.Run(t, toolTimeout, "nbdinfo", "--size", a.URI(name)))
			if got, err := strconv.ParseInt(out, 10, 64); err != nil || got != sizes[name] {
				t.Errorf("nbdinfo --size %s = %q, want %d", name, out, sizes[name])
			}
		}
	})

	t.Run("list", func(t *testing.T) {
		o := nbdinfoJSON(t, "--list", "nbd://"+a.NBDAddr)
		var got []string
		for _, e := range o.Exports {
			got = append(got, e.Name)
			if e.Size != sizes[e.Name] || e.ReadOnly != (e.Name == "ro1") {
				t.Errorf("--list export %s: size %d read-only %v, want %d %v", e.Name, e.Size, e.ReadOnly, sizes[e.Name], e.Name == "ro1")
			}
		}
		if !slices.Equal(got, names) {
			t.Errorf("nbdinfo --list exports %q, want %q", got, names)
		}
		// The plain-text listing too.
		out := testbin.Run(t, toolTimeout, "nbdinfo", "--list", "nbd://"+a.NBDAddr)
		for _, n := range names {
			if !strings.Contains(out, `export="`+n+`":`) {
				t.Errorf("nbdinfo --list does not show export %s:\n%s", n, out)
			}
		}
	})

	for _, name := range names {
		t.Run("json/"+name, func(t *testing.T) {
			o := nbdinfoJSON(t, a.URI(name))
			if o.Protocol != "newstyle-fixed" || !o.Structured || o.TLS {
				t.Errorf("protocol %q structured %v TLS %v, want newstyle-fixed, structured, no TLS", o.Protocol, o.Structured, o.TLS)
			}
			if len(o.Exports) != 1 {
				t.Fatalf("%d exports in the output, want 1: %+v", len(o.Exports), o)
			}
			e := o.Exports[0]
			ro := name == "ro1"
			want := nbdinfoExport{
				Name:          name,
				Description:   "tandem volume " + name,
				Size:          sizes[name],
				Contexts:      []string{"base:allocation"},
				ReadOnly:      ro,
				CanFlush:      true,
				CanFUA:        !ro,
				CanTrim:       !ro,
				CanZero:       !ro,
				CanFastZero:   !ro,
				CanCache:      true,
				CanDF:         true,
				CanMultiConn:  true,
				MinBlockSize:  1,
				PrefBlockSize: 4096,
				MaxBlockSize:  33554432,
			}
			if !slices.Equal(e.Contexts, want.Contexts) {
				t.Errorf("contexts %q, want %q", e.Contexts, want.Contexts)
			}
			e.Contexts, want.Contexts = nil, nil
			if !reflect.DeepEqual(e, want) {
				wantJ, _ := json.MarshalIndent(want, "", " ")
				gotJ, _ := json.MarshalIndent(e, "", " ")
				t.Errorf("nbdinfo --json %s:\n%s\nwant:\n%s", name, gotJ, wantJ)
			}
		})
	}

	t.Run("read-only content and map", func(t *testing.T) {
		qemuIOReadOnly(t, a.URI("ro1"), "read -P 0x77 0 64k", "read -P 0 64k 960k")
		m := nbdMap(t, a.URI("ro1"))
		wantRangeType(t, m, 0, 64*kib, typeData)
		wantRangeType(t, m, 64*kib, 1*mib-64*kib, typeHoleZero)
	})
}
