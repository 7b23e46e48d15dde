package qemu

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testbin"
	"github.com/tandem-project/tandem/internal/testguest"
)

func TestDiskOf(t *testing.T) {
	const reply = `[
	 {"device":"","qdev":"/machine/peripheral/vdisk0/virtio-backend","inserted":{"node-name":"d0-1","image":{"virtual-size":4194304}}},
	 {"device":"","qdev":"/machine/peripheral/vdisk1/virtio-backend","inserted":{"node-name":"#block123","image":{"virtual-size":8}}},
	 {"device":"","qdev":"/machine/peripheral/vdisk2/virtio-backend"}]`
	var blocks []blockInfo
	if err := json.Unmarshal([]byte(reply), &blocks); err != nil {
		t.Fatal(err)
	}
	if d, err := diskOf(blocks, 0); err != nil || d != (DiskInfo{Node: "d0-1", Size: 4 << 20}) {
		t.Fatalf("disk 0: %+v, %v", d, err)
	}
	if d, err := diskOf(blocks, 1); err != nil || d.Node != "#block123" {
		t.Fatalf("disk 1: %+v, %v", d, err)
	}
	if _, err := diskOf(blocks, 2); err == nil || !strings.Contains(err.Error(), "no medium") {
		t.Fatalf("disk 2: %v", err)
	}
	if _, err := diskOf(blocks, 10); err == nil || !strings.Contains(err.Error(), "vdisk10") {
		t.Fatalf("disk 10: %v", err)
	}
}

func TestMirrorBuf(t *testing.T) {
	for _, tc := range []struct{ speed, want int64 }{
		{1, 64 << 10}, {256 << 10, 64 << 10}, {10 << 20, 1 << 20}, {1 << 30, 16 << 20},
	} {
		if got := mirrorBuf(tc.speed); got != tc.want {
			t.Errorf("mirrorBuf(%d) = %d, want %d", tc.speed, got, tc.want)
		}
	}
}

func TestBlockdevOptions(t *testing.T) {
	for _, tc := range []struct {
		disk Disk
		want string
	}{
		{Disk{File: "/v/a.img"}, `{"driver":"file","filename":"/v/a.img","node-name":"n"}`},
		{Disk{File: "/v/a.qcow2", Format: FormatQcow2}, `{"driver":"qcow2","file":{"driver":"file","filename":"/v/a.qcow2"},"node-name":"n"}`},
		{Disk{Server: "127.0.0.1:1", Export: "v@3"}, `{"driver":"nbd","export":"v@3","node-name":"n","reconnect-delay":2,"server":{"host":"127.0.0.1","port":"1","type":"inet"}}`},
	} {
		o, err := tc.disk.BlockdevOptions("n", 1500*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := json.Marshal(o); string(b) != tc.want {
			t.Errorf("%+v: %s, want %s", tc.disk, b, tc.want)
		}
	}
	for _, d := range []Disk{{File: "rel.img"}, {File: "/a", Format: "vmdk"}, {Server: "x"}, {File: "/a", Node: "9x"}} {
		if _, err := d.BlockdevOptions("n", 0); err == nil {
			t.Errorf("%+v: no error", d)
		}
	}
}

// TestMirrorPivot moves the disk of a running test guest from one raw
// file to another (blockdev-mirror, write-blocking, job-complete) while
// it writes, then checks that the new file holds every write the guest
// reported.
func TestMirrorPivot(t *testing.T) {
	testbin.Require(t, "qemu-system-x86_64")
	c := migrationGuest
	img, err := testguest.Image(c)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src.img"), filepath.Join(dir, "dst.img")
	if err := os.WriteFile(src, img, 0o600); err != nil {
		t.Fatal(err)
	}
	const size = 4 << 20
	if err := os.Truncate(src, size); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(dst, size); err != nil {
		t.Fatal(err)
	}
	p := start(t, guestSpec("mirror", Disk{File: src, Node: "src"}), Options{})
	waitLog(t, 20*time.Second, func(l testguest.Log) bool { return l.LastSeq > 20 }, p)
	ctx := testCtx(t, 60*time.Second)
	opts, err := Disk{File: dst}.BlockdevOptions("dst", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.BlockdevAdd(ctx, opts); err != nil {
		t.Fatal(err)
	}
	if d, err := p.Disk(ctx, 0); err != nil || d != (DiskInfo{Node: "src", Size: size}) {
		t.Fatalf("disk before: %+v, %v", d, err)
	}
	if err := p.Mirror(ctx, MirrorArgs{Job: "mv", Source: "src", Target: "dst", Filter: "mvtop"}); err != nil {
		t.Fatal(err)
	}
	waitJob := func(status string) Job {
		for {
			j, ok, err := p.Job(ctx, "mv")
			if err != nil || !ok {
				t.Fatalf("job: %+v %v %v", j, ok, err)
			}
			if j.Status == status {
				return j
			}
			if j.Error != "" || j.Status == JobConcluded {
				t.Fatalf("job %+v, want %s", j, status)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	j := waitJob(JobReady)
	if d, err := p.Disk(ctx, 0); err != nil || d.Node != "mvtop" {
		t.Fatalf("disk while mirroring: %+v, %v", d, err)
	}
	if err := p.JobComplete(ctx, "mv"); err != nil {
		t.Fatal(err)
	}
	waitJob(JobConcluded)
	if err := p.JobDismiss(ctx, "mv"); err != nil {
		t.Fatal(err)
	}
	if d, err := p.Disk(ctx, 0); err != nil || d.Node != "dst" {
		t.Fatalf("disk after the pivot: %+v, %v", d, err)
	}
	if err := p.BlockdevDel(ctx, "src"); err != nil {
		t.Fatal(err)
	}
	before, _ := guestLog(t, p)
	l := waitLog(t, 20*time.Second, func(l testguest.Log) bool { return l.LastSeq > before.LastSeq+20 }, p)
	if err := p.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := testguest.Check(f, c)
	if err != nil {
		t.Fatalf("the new file: %v", err)
	}
	if res.MaxSeq < l.LastSeq {
		t.Fatalf("LOST WRITES: newest seq on the new file %d, the guest reported %d", res.MaxSeq, l.LastSeq)
	}
	t.Logf("mirrored %d bytes; the guest wrote on to seq %d, the new file holds %+v", j.Total, l.LastSeq, res)
}
