package qemu

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testbin"
	"github.com/tandem-project/tandem/internal/testguest"
)

// volumeSize is the size of the tandem volume the tests boot from.
const volumeSize = 4 << 20

// testCtx returns a context for one step of a test.
func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// testLog collects a Process's log records and copies them to the test's
// log.
type testLog struct {
	t  *testing.T
	mu sync.Mutex
	b  strings.Builder
}

func newTestLog(t *testing.T) (*testLog, *slog.Logger) {
	l := &testLog{t: t}
	return l, slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Write(p)
	l.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func (l *testLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// tandemDisk starts a tandem agent with one volume holding the test
// guest's image for c.
func tandemDisk(t *testing.T, c testguest.Config) (*testbin.Agent, Disk) {
	t.Helper()
	testbin.Require(t, "qemu-system-x86_64", "nbdcopy")
	dir := t.TempDir()
	agent := testbin.StartAgent(t, filepath.Join(dir, "data"), "--volume", fmt.Sprintf("vol0=%d", volumeSize))
	img, err := testguest.Image(c)
	if err != nil {
		t.Fatal(err)
	}
	imgPath := filepath.Join(dir, "guest.img")
	if err := os.WriteFile(imgPath, img, 0o600); err != nil {
		t.Fatal(err)
	}
	testbin.Run(t, 30*time.Second, "nbdcopy", imgPath, agent.URI("vol0"))
	return agent, Disk{Server: agent.NBDAddr, Export: "vol0"}
}

// restartAgent starts a killed agent again on its data directory and NBD
// address.
func restartAgent(t *testing.T, a *testbin.Agent) *testbin.Agent {
	t.Helper()
	return testbin.StartAgent(t, a.DataDir, "--volume", fmt.Sprintf("vol0=%d", volumeSize), "--nbd-listen", a.NBDAddr)
}

// guestSpec is the spec of a test guest VM booting from disk.
func guestSpec(name string, disk Disk) Spec {
	return Spec{Name: name, MemoryMiB: 32, Disks: []Disk{disk}, ExtraArgs: []string{"-no-reboot"}}
}

// start starts a VM in a new directory under the test's temporary
// directory; the test's end kills it.
func start(t *testing.T, spec Spec, opts Options) *Process {
	t.Helper()
	if opts.Logger == nil {
		_, opts.Logger = newTestLog(t)
	}
	if opts.Env == nil {
		opts.Env = testbin.CleanEnv()
	}
	p, err := Start(testCtx(t, 60*time.Second), spec, t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	return p
}

// guestLog parses the serial output of the given VMs, concatenated: a
// migrated guest's output starts on the source and goes on on the
// destination.
func guestLog(t *testing.T, vms ...*Process) (testguest.Log, []byte) {
	t.Helper()
	var all []byte
	for _, p := range vms {
		b, err := os.ReadFile(p.SerialLog())
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	l, err := testguest.ParseLog(all)
	if err != nil {
		t.Fatalf("guest serial log: %v\n%s", err, all)
	}
	return l, all
}

// waitLog polls the guest's serial log (of vms concatenated) until done
// holds. It fails if the last VM exits or the guest makes no progress for
// stall: under TCG on a loaded host the guest's speed varies a lot, its
// progress does not stop.
func waitLog(t *testing.T, stall time.Duration, done func(testguest.Log) bool, vms ...*Process) testguest.Log {
	t.Helper()
	var last testguest.Log
	progress := time.Now()
	for {
		l, all := guestLog(t, vms...)
		if done(l) {
			return l
		}
		if l.Err != nil {
			t.Fatalf("guest reports %v\n%s", l.Err, all)
		}
		if l.Boots != last.Boots || l.LastSeq != last.LastSeq {
			last, progress = l, time.Now()
		}
		select {
		case <-vms[len(vms)-1].Done():
			t.Fatalf("QEMU exited: %v\n%s", vms[len(vms)-1].Wait(), all)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Since(progress) > stall {
			t.Fatalf("guest made no progress for %v: %+v\n%s", stall, l, all)
		}
	}
}

// mem dumps size bytes of the guest's memory from addr (QMP pmemsave).
func mem(t *testing.T, p *Process, addr, size int) []byte {
	t.Helper()
	path := filepath.Join(p.Dir(), "pmem.bin")
	if err := p.QMP().Execute(testCtx(t, 10*time.Second), "pmemsave",
		map[string]any{"val": addr, "size": size, "filename": path}, nil); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// counterRegion dumps the guest's RAM counter pages.
func counterRegion(t *testing.T, p *Process, c testguest.Config) []byte {
	return mem(t, p, testguest.CounterBase, c.CounterPages*testguest.CounterPageSize)
}

// counters dumps and checks the guest's RAM counters.
func counters(t *testing.T, p *Process, c testguest.Config) testguest.Counters {
	t.Helper()
	got, err := testguest.CheckCounters(counterRegion(t, p, c), c)
	if err != nil {
		t.Fatalf("counters of %s: %v", p.Spec().Name, err)
	}
	return got
}

// seqInRAM returns the guest's current seq: the write in progress or the
// last one made.
func seqInRAM(t *testing.T, p *Process) uint64 {
	return binary.LittleEndian.Uint64(mem(t, p, testguest.SeqAddr, 8))
}

// checkDisk copies the export to a file and checks the guest's ring on it.
func checkDisk(t *testing.T, disk Disk, c testguest.Config) testguest.Result {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.raw")
	testbin.Run(t, 30*time.Second, "nbdcopy", "nbd://"+disk.Server+"/"+disk.Export, path)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, _ := testguest.Image(c)
	head := make([]byte, len(img))
	if _, err := f.ReadAt(head, 0); err != nil || !bytes.Equal(head, img) {
		t.Fatalf("the guest image on the export changed (%v)", err)
	}
	res, err := testguest.Check(f, c)
	if err != nil {
		t.Fatalf("Check: %v (%+v)", err, res)
	}
	return res
}

// wantStatus fails unless the VM's run state is want.
func wantStatus(t *testing.T, p *Process, want RunState) {
	t.Helper()
	st, err := p.Status(testCtx(t, 10*time.Second))
	if err != nil || st != want {
		t.Fatalf("%s: status %q, %v; want %q", p.Spec().Name, st, err, want)
	}
}

// waitStatus polls the VM's run state until it is want.
func waitStatus(t *testing.T, p *Process, want RunState, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st, err := p.Status(testCtx(t, 10*time.Second))
		if err != nil {
			t.Fatalf("%s: status: %v", p.Spec().Name, err)
		}
		if st == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: status %q after %v, want %q", p.Spec().Name, st, timeout, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
