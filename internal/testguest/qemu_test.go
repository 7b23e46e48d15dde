package testguest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testbin"
)

// TestBootFromTandem boots the guest in QEMU from a tandem export, over
// virtio-blk and IDE, lets it make its writes, kills QEMU and checks the
// export through NBD.
func TestBootFromTandem(t *testing.T) {
	testbin.Require(t, "qemu-system-x86_64", "nbdcopy")
	for i, iface := range []string{"virtio", "ide"} {
		t.Run(iface, func(t *testing.T) {
			c := Config{
				RunID:        0x7E570000 + uint32(i),
				Base:         8,
				Ring:         400, // wraps: every slot is written 2-3 times
				Writes:       1000,
				ReportEvery:  100,
				CounterPages: 16,
			}
			bootAndCheck(t, iface, c)
		})
	}
}

// volumeSize is the size of the tandem volume the tests boot from.
const volumeSize = 4 << 20

// bootGuest starts a tandem agent with one volume, writes the image of c
// on it and boots QEMU from it over the disk interface iface. It returns
// QEMU once the guest printed its START line, and the export's URI.
func bootGuest(t *testing.T, iface string, c Config) (*qemu, string) {
	t.Helper()
	dir := t.TempDir()
	agent := testbin.StartAgent(t, filepath.Join(dir, "data"), "--volume", fmt.Sprintf("vol0=%d", volumeSize))
	uri := agent.URI("vol0")
	img, err := Image(c)
	if err != nil {
		t.Fatal(err)
	}
	imgPath := filepath.Join(dir, "guest.img")
	if err := os.WriteFile(imgPath, img, 0o600); err != nil {
		t.Fatal(err)
	}
	testbin.Run(t, 30*time.Second, "nbdcopy", imgPath, uri)
	vm := startQEMU(t, dir, "file="+uri+",format=raw,if="+iface+",cache=none")
	vm.waitLog(t, 30*time.Second, func(l Log) bool { return l.Boots > 0 })
	return vm, uri
}

// readExport copies the export at uri to a file in the test's temporary
// directory and opens it.
func readExport(t *testing.T, uri string) *os.File {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.raw")
	testbin.Run(t, 30*time.Second, "nbdcopy", uri, path)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func bootAndCheck(t *testing.T, iface string, c Config) {
	vm, uri := bootGuest(t, iface, c)
	started := time.Now()
	start := started.Sub(vm.started).Round(time.Millisecond)

	// A snapshot of the counters while the guest runs (if it still does):
	// they count the writes done, at least those reported before.
	if l := vm.waitLog(t, 20*time.Second, func(l Log) bool { return l.LastSeq > 0 }); !l.Halted() {
		got, err := vm.counters(t, c)
		if err != nil {
			t.Fatalf("counters of the running guest: %v", err)
		}
		if got.Last < uint32(l.LastSeq) || got.First > uint32(c.Writes) {
			t.Fatalf("counters of the running guest %+v, after it reported seq %d", got, l.LastSeq)
		}
		t.Logf("counters while running: %+v (reported seq %d)", got, l.LastSeq)
	}

	l := vm.waitLog(t, 20*time.Second, Log.Halted)
	elapsed := time.Since(started)
	if l.Err != nil || !l.Done || l.LastSeq != c.Writes || l.Boots != 1 {
		t.Fatalf("guest log: %+v (error %v)\n%s", l, l.Err, vm.serial())
	}
	t.Logf("%s: %d writes in %v after START (%.0f writes/s); START %v after QEMU started",
		iface, c.Writes, elapsed.Round(time.Millisecond), float64(c.Writes)/elapsed.Seconds(), start)

	got, err := vm.counters(t, c)
	if err != nil {
		t.Fatalf("counters after DONE: %v", err)
	}
	if want := uint32(c.Writes); got.First != want || got.Last != want {
		t.Fatalf("counters after DONE = %+v, want all %d", got, want)
	}
	if seq := binary.LittleEndian.Uint64(vm.mem(t, SeqAddr, 8)); seq != c.Writes {
		t.Fatalf("seq in guest memory = %d, want %d", seq, c.Writes)
	}
	vm.kill()

	// Read the export back through NBD.
	f := readExport(t, uri)
	img, _ := Image(c)
	head := make([]byte, len(img))
	if _, err := f.ReadAt(head, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(head, img) {
		t.Fatal("the image on the export changed")
	}
	if onDisk, err := ImageConfig(head); err != nil || onDisk != c {
		t.Fatalf("ImageConfig of the export = %+v, %v; want %+v", onDisk, err, c)
	}
	res, err := Check(f, c)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	if want := (Result{Written: c.Ring, MinSeq: c.Writes - c.Ring + 1, MaxSeq: c.Writes}); res != want {
		t.Fatalf("Check = %+v, want %+v", res, want)
	}
}

// TestGuestReportsDiskError boots a guest whose ring runs past the end of
// the disk: the BIOS fails its second write, which the guest must report.
func TestGuestReportsDiskError(t *testing.T) {
	testbin.Require(t, "qemu-system-x86_64", "nbdcopy")
	const lastLBA = volumeSize/SectorSize - 1
	c := Config{RunID: 0xE0, Base: lastLBA - 1, Ring: 3, Writes: 100, ReportEvery: 1}
	vm, uri := bootGuest(t, "virtio", c)
	l := vm.waitLog(t, 20*time.Second, Log.Halted)
	if l.Err == nil || l.Err.Seq != 2 || l.Err.Status == 0 || l.LastSeq != 1 || l.Done {
		t.Fatalf("guest log %+v (error %v), want an error at seq 2 after seq 1\n%s", l, l.Err, vm.serial())
	}
	t.Logf("guest error: %v", l.Err)
	vm.kill()
	sector := make([]byte, SectorSize)
	if _, err := readExport(t, uri).ReadAt(sector, lastLBA*SectorSize); err != nil {
		t.Fatal(err)
	}
	if s, valid, err := ParseSector(sector); !valid || s != (Sector{Seq: 1, LBA: lastLBA, RunID: c.RunID}) {
		t.Fatalf("last sector: %+v, %v, %v; want seq 1", s, valid, err)
	}
}

// qemu is a QEMU process running the guest.
type qemu struct {
	cmd       *exec.Cmd
	logPath   string
	qmpPath   string
	dumpPath  string // pmemsave's file
	started   time.Time
	exited    chan struct{}
	waitErr   error
	stderrBuf *bytes.Buffer
}

func startQEMU(t *testing.T, dir, drive string) *qemu {
	t.Helper()
	vm := &qemu{
		logPath:   filepath.Join(dir, "serial.log"),
		qmpPath:   filepath.Join(dir, "qmp.sock"),
		dumpPath:  filepath.Join(dir, "counters.bin"),
		exited:    make(chan struct{}),
		stderrBuf: new(bytes.Buffer),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	vm.cmd = exec.CommandContext(ctx, "qemu-system-x86_64",
		"-machine", "accel=tcg", "-m", "32", "-nodefaults", "-nic", "none", "-display", "none",
		"-no-reboot", "-serial", "file:"+vm.logPath,
		"-qmp", "unix:"+vm.qmpPath+",server=on,wait=off",
		"-drive", drive)
	vm.cmd.Env = testbin.CleanEnv()
	vm.cmd.Stdout = vm.stderrBuf
	vm.cmd.Stderr = vm.stderrBuf
	if err := vm.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("starting QEMU: %v", err)
	}
	vm.started = time.Now()
	go func() {
		vm.waitErr = vm.cmd.Wait()
		close(vm.exited)
	}()
	t.Cleanup(func() {
		vm.kill()
		cancel()
	})
	return vm
}

// kill stops QEMU with SIGKILL and waits for it.
func (vm *qemu) kill() {
	select {
	case <-vm.exited:
	default:
		_ = vm.cmd.Process.Kill()
		<-vm.exited
	}
}

func (vm *qemu) serial() string {
	b, _ := os.ReadFile(vm.logPath)
	return string(b)
}

func (vm *qemu) log() (Log, error) {
	b, err := os.ReadFile(vm.logPath)
	if err != nil && !os.IsNotExist(err) {
		return Log{}, err
	}
	return ParseLog(b)
}

// waitLog polls the serial log until done(log) and returns the log. It
// fails the test if QEMU exits first or the guest makes no progress (no new
// line) for stall: under TCG on a loaded host the guest's speed varies by
// an order of magnitude, its progress does not stop.
func (vm *qemu) waitLog(t *testing.T, stall time.Duration, done func(Log) bool) Log {
	t.Helper()
	var last Log
	progress := time.Now()
	for {
		l, err := vm.log()
		if err != nil {
			t.Fatalf("serial log: %v\n%s", err, vm.serial())
		}
		if done(l) {
			return l
		}
		if l.Boots != last.Boots || l.LastSeq != last.LastSeq {
			last, progress = l, time.Now()
		}
		select {
		case <-vm.exited:
			t.Fatalf("QEMU exited: %v\n%s\nserial:\n%s", vm.waitErr, vm.stderrBuf, vm.serial())
		case <-time.After(5 * time.Millisecond):
		}
		if time.Since(progress) > stall {
			t.Fatalf("guest made no progress for %v: %+v\n%s", stall, l, vm.serial())
		}
	}
}

// mem dumps size bytes of guest memory from addr with QMP pmemsave.
func (vm *qemu) mem(t *testing.T, addr, size int) []byte {
	t.Helper()
	if err := vm.qmp("pmemsave", map[string]any{"val": addr, "size": size, "filename": vm.dumpPath}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(vm.dumpPath)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// counters dumps the guest's counter region and checks it. pmemsave copies
// memory while the vCPU runs, so a dump of a running guest can hold a later
// page counted ahead of an earlier one: the vCPU is stopped for the dump
// and resumed after it.
func (vm *qemu) counters(t *testing.T, c Config) (Counters, error) {
	t.Helper()
	if err := vm.qmp("stop", nil); err != nil {
		t.Fatal(err)
	}
	region := vm.mem(t, CounterBase, c.CounterPages*CounterPageSize)
	if err := vm.qmp("cont", nil); err != nil {
		t.Fatal(err)
	}
	return CheckCounters(region, c)
}

// qmp runs one QMP command on a new connection.
func (vm *qemu) qmp(command string, args map[string]any) error {
	conn, err := net.DialTimeout("unix", vm.qmpPath, 5*time.Second)
	if err != nil {
		return fmt.Errorf("QMP: %w", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	if _, err := r.ReadBytes('\n'); err != nil { // greeting
		return fmt.Errorf("QMP greeting: %w", err)
	}
	run := map[string]any{"execute": command}
	if args != nil {
		run["arguments"] = args
	}
	for _, cmd := range []map[string]any{{"execute": "qmp_capabilities"}, run} {
		b, _ := json.Marshal(cmd)
		if _, err := conn.Write(append(b, '\n')); err != nil {
			return fmt.Errorf("QMP %s: %w", cmd["execute"], err)
		}
		for { // skip events until the reply
			line, err := r.ReadBytes('\n')
			if err != nil {
				return fmt.Errorf("QMP %s: %w", cmd["execute"], err)
			}
			var reply struct {
				Return json.RawMessage
				Error  *struct{ Class, Desc string }
			}
			if err := json.Unmarshal(line, &reply); err != nil {
				return fmt.Errorf("QMP %s: %w: %s", cmd["execute"], err, line)
			}
			if reply.Error != nil {
				return fmt.Errorf("QMP %s: %s: %s", cmd["execute"], reply.Error.Class, reply.Error.Desc)
			}
			if reply.Return != nil {
				break
			}
			if !strings.Contains(string(line), `"event"`) {
				return fmt.Errorf("QMP %s: unexpected %s", cmd["execute"], line)
			}
		}
	}
	return nil
}
