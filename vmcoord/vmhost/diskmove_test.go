package vmhost

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-project/tandem/cluster/catalog"
	"github.com/tandem-project/tandem/vmcoord/qemu"
)

// fakeQEMU is a Process with a scripted block layer: one disk device,
// nodes, and mirror jobs that become ready after readyAfter queries.
type fakeQEMU struct {
	*fakeProc
	mu         sync.Mutex
	device     string // the node disk 0's device uses
	size       int64
	jobs       map[string]*qemu.Job
	targets    map[string]string // job -> target node
	readyAfter int
	failJob    string // a job that concludes with this error once ready
	ops        []string
}

func newFakeQEMU(device string) *fakeQEMU {
	return &fakeQEMU{fakeProc: &fakeProc{done: make(chan struct{})}, device: device, size: 4 << 20,
		jobs: map[string]*qemu.Job{}, targets: map[string]string{}, readyAfter: 2}
}

func (q *fakeQEMU) op(format string, args ...any) {
	q.ops = append(q.ops, fmt.Sprintf(format, args...))
}

func (q *fakeQEMU) Disk(_ context.Context, i int) (qemu.DiskInfo, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return qemu.DiskInfo{Node: q.device, Size: q.size}, nil
}
func (q *fakeQEMU) BlockdevAdd(_ context.Context, o map[string]any) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.op("add %s", o["node-name"])
	return nil
}
func (q *fakeQEMU) BlockdevDel(_ context.Context, node string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.op("del %s", node)
	return nil
}
func (q *fakeQEMU) Mirror(_ context.Context, a qemu.MirrorArgs) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.op("mirror %s->%s", a.Source, a.Target)
	q.jobs[a.Job] = &qemu.Job{ID: a.Job, Type: "mirror", Status: qemu.JobRunning, Total: q.size}
	q.targets[a.Job] = a.Target
	q.device = a.Filter
	return nil
}
func (q *fakeQEMU) Job(_ context.Context, id string) (qemu.Job, bool, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	j := q.jobs[id]
	if j == nil {
		return qemu.Job{}, false, nil
	}
	if j.Status == qemu.JobRunning {
		if q.readyAfter--; q.readyAfter <= 0 {
			j.Status, j.Current = qemu.JobReady, j.Total
			if q.failJob != "" {
				j.Status, j.Error = qemu.JobConcluded, q.failJob
			}
		}
	}
	return *j, true, nil
}
func (q *fakeQEMU) JobComplete(_ context.Context, id string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.op("complete %s", id)
	j := q.jobs[id]
	if j == nil || j.Status != qemu.JobReady {
		return errors.New("job not ready")
	}
	j.Status, q.device = qemu.JobConcluded, q.targets[id]
	return nil
}
func (q *fakeQEMU) JobCancel(_ context.Context, id string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.op("cancel %s", id)
	if j := q.jobs[id]; j != nil {
		j.Status, j.Error = qemu.JobConcluded, "cancelled"
	}
	return nil
}
func (q *fakeQEMU) JobDismiss(_ context.Context, id string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.jobs, id)
	return nil
}

// commits records the catalog commands a Manager commits.
type commits struct {
	mu   sync.Mutex
	cmds []string
	// after, if set, runs after each commit (with its summary).
	after func(string)
}

func (c *commits) commit(_ context.Context, cmd catalog.Command) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := cmd.Kind
	if m := cmd.DiskMove; m != nil && m.Phase != "" {
		s += " " + m.Phase
	}
	if m := cmd.DiskMove; m != nil && m.Result != nil {
		s += " " + m.Result.Result
		if m.Result.Error != "" {
			s += ": " + m.Result.Error
		}
	}
	c.cmds = append(c.cmds, s)
	if c.after != nil {
		c.after(s)
	}
	return uint64(100 + len(c.cmds)), nil
}

// TestDiskMoveDriver runs the disk move driver against a scripted QEMU,
// from a fresh start and from what an agent restart can find, and checks
// what it commits and does in QEMU.
func TestDiskMoveDriver(t *testing.T) {
	const src = "raw:/v/src.img"
	srcNode, volNode := diskNode(0, src), diskNode(0, "vol")
	tests := []struct {
		name   string
		to     string
		phase  string
		size   int64 // the target volume's size
		setup  func(q *fakeQEMU)
		cancel bool // cancel the move once the mirror runs
		// exitAt makes QEMU exit after the commit it names.
		exitAt string
		// want: the commits, and operations QEMU must have seen (in
		// order, among others).
		commits []string
		ops     []string
	}{
		{name: "fresh import", to: "vol", phase: catalog.DiskMoveCopying, size: 4 << 20,
			commits: []string{"disk_move_phase pivoting", "end_disk_move completed"},
			ops:     []string{"add " + volNode, "mirror " + srcNode + "->" + volNode, "complete mv7", "del " + srcNode}},
		{name: "volume of another size", to: "vol", phase: catalog.DiskMoveCopying, size: 1 << 20,
			commits: []string{"end_disk_move failed: target volume vol is 1MiB (1048576 bytes), disk 0 is 4MiB (4194304 bytes): the sizes must match (create the volume with --size 4194304)"},
			ops:     []string{"del " + volNode}},
		{name: "the mirror fails while copying", to: "vol", phase: catalog.DiskMoveCopying, size: 4 << 20,
			setup:   func(q *fakeQEMU) { q.failJob = "Input/output error" },
			commits: []string{"end_disk_move failed: the mirror failed: Input/output error"},
			ops:     []string{"mirror " + srcNode + "->" + volNode, "del " + volNode}},
		{name: "cancelled while copying", to: "vol", phase: catalog.DiskMoveCopying, size: 4 << 20,
			setup:  func(q *fakeQEMU) { q.readyAfter = 1 << 30 },
			cancel: true,
			ops:    []string{"mirror " + srcNode + "->" + volNode, "cancel mv7", "del " + volNode}},
		{name: "QEMU exits once pivoting: the target is the disk", to: "vol", phase: catalog.DiskMoveCopying, size: 4 << 20,
			exitAt:  "disk_move_phase pivoting",
			commits: []string{"disk_move_phase pivoting", "end_disk_move completed: the VM's QEMU exited during the pivot: it starts again on the target"}},
		{name: "QEMU exits while copying: the source stays", to: "vol", phase: catalog.DiskMoveCopying, size: 4 << 20,
			setup:   func(q *fakeQEMU) { q.readyAfter = 1 << 30 },
			exitAt:  "mirror",
			commits: []string{"end_disk_move failed: the VM's QEMU exited"}},
		{name: "restart: the job is ready, the move pivoting", to: "vol", phase: catalog.DiskMovePivoting, size: 4 << 20,
			setup: func(q *fakeQEMU) {
				q.jobs["mv7"] = &qemu.Job{ID: "mv7", Status: qemu.JobReady, Total: q.size}
				q.targets["mv7"], q.device = volNode, "mvtop7"
			},
			commits: []string{"end_disk_move completed"},
			ops:     []string{"complete mv7", "del " + srcNode}},
		{name: "restart: the job runs, the move copying", to: "vol", phase: catalog.DiskMoveCopying, size: 4 << 20,
			setup: func(q *fakeQEMU) {
				q.jobs["mv7"] = &qemu.Job{ID: "mv7", Status: qemu.JobRunning, Total: q.size}
				q.targets["mv7"], q.device = volNode, "mvtop7"
			},
			commits: []string{"disk_move_phase pivoting", "end_disk_move completed"},
			ops:     []string{"complete mv7", "del " + srcNode}},
		{name: "restart: pivoted, the move pivoting", to: "vol", phase: catalog.DiskMovePivoting, size: 4 << 20,
			setup:   func(q *fakeQEMU) { q.device = volNode },
			commits: []string{"end_disk_move completed"},
			ops:     []string{"del " + srcNode}},
		{name: "restart: pivoted, the move still copying", to: "vol", phase: catalog.DiskMoveCopying, size: 4 << 20,
			setup:   func(q *fakeQEMU) { q.device = volNode },
			commits: []string{"disk_move_phase pivoting", "end_disk_move completed"},
			ops:     []string{"del " + srcNode}},
		{name: "restart: no job, on the source, the move pivoting", to: "vol", phase: catalog.DiskMovePivoting, size: 4 << 20,
			commits: []string{"end_disk_move failed: the mirror ended without a pivot: the VM runs on the source"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var cs commits
			var fenced []string
			m := New(Config{Host: "n1", NBDAddr: "127.0.0.1:10809", Commit: cs.commit,
				Fence: func(_ context.Context, vol string, gen, epoch uint64, _ string) error {
					fenced = append(fenced, fmt.Sprintf("%s@%d gen %d", vol, epoch, gen))
					return nil
				}})
			defer m.Close()
			q := newFakeQEMU(srcNode)
			if tt.setup != nil {
				tt.setup(q)
			}
			if tt.exitAt != "" {
				cs.after = func(s string) {
					if s == tt.exitAt {
						q.exit(nil)
					}
				}
			}
			r := &run{name: "vm", notify: make(chan struct{}, 1)}
			mv := catalog.DiskMove{ID: 7, Disk: 0, From: src, To: tt.to, Phase: tt.phase}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan struct{})
			go func() {
				defer close(done)
				m.moveDisk(ctx, m.cfg.Log, r, q, mv, tt.size, 5)
			}()
			if tt.cancel || tt.exitAt == "mirror" {
				for {
					q.mu.Lock()
					started := q.jobs["mv7"] != nil
					q.mu.Unlock()
					if started {
						break
					}
					time.Sleep(time.Millisecond)
				}
				if tt.cancel {
					cancel()
				} else {
					q.exit(nil)
				}
			}
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				t.Fatal("the driver did not end")
			}
			// A run that recorded the pivot relaunches the VM on the
			// target, even before its catalog shows the pivot.
			if tt.exitAt == "disk_move_phase pivoting" {
				spec := r.withPivot(Spec{Disks: []Disk{launchDisk(0, src, 5)}})
				if d := spec.Disks[0]; d.Volume != "vol" || d.Export != "vol@5" {
					t.Errorf("relaunch after the pivot opens %+v, want the target", d)
				}
			}
			if !slices.Equal(cs.cmds, tt.commits) {
				t.Errorf("commits %q, want %q", cs.cmds, tt.commits)
			}
			at := 0
			for _, op := range q.ops {
				if at < len(tt.ops) && op == tt.ops[at] {
					at++
				}
			}
			if at < len(tt.ops) {
				t.Errorf("QEMU saw %q, want %q among them, in order", q.ops, tt.ops)
			}
			if strings.Contains(strings.Join(q.ops, ","), "mirror") && tt.phase == catalog.DiskMoveCopying && len(fenced) != 1 {
				t.Errorf("fences %v, want the target's, under the VM's epoch", fenced)
			}
		})
	}
}

// TestDiskMoveFileTarget: an export creates its file, a failed one
// removes it, and an existing file is never overwritten.
func TestDiskMoveFileTarget(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, file string
		failJob    string
		exists     bool
		want       string // the end's commit
		keep       bool   // the file stays
	}{
		{name: "completed", file: "a.img", want: "end_disk_move completed", keep: true},
		{name: "failed", file: "b.img", failJob: "No space left on device", want: "end_disk_move failed: the mirror failed: No space left on device"},
		{name: "exists", file: "c.img", exists: true, want: "end_disk_move failed: target file " + filepath.Join(dir, "c.img") + " exists: give a new path (a move never overwrites a file)", keep: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.file)
			if tc.exists {
				if err := os.WriteFile(path, []byte("mine"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			var cs commits
			m := New(Config{Host: "n1", NBDAddr: "127.0.0.1:10809", Commit: cs.commit})
			defer m.Close()
			q := newFakeQEMU("d0-x")
			q.failJob = tc.failJob
			mv := catalog.DiskMove{ID: 7, From: "vol", To: "raw:" + path, Phase: catalog.DiskMoveCopying}
			m.moveDisk(context.Background(), m.cfg.Log, &run{name: "vm"}, q, mv, 0, 5)
			if len(cs.cmds) == 0 || cs.cmds[len(cs.cmds)-1] != tc.want {
				t.Fatalf("commits %q, want %q last", cs.cmds, tc.want)
			}
			st, err := os.Stat(path)
			switch {
			case tc.keep && err != nil:
				t.Fatalf("the file is gone: %v", err)
			case !tc.keep && err == nil:
				t.Fatalf("the failed move's file stays")
			case tc.exists:
				if b, _ := os.ReadFile(path); string(b) != "mine" {
					t.Fatalf("an existing file was changed: %q", b)
				}
			case tc.keep && st.Size() != 4<<20:
				t.Fatalf("the new file is %d bytes, want the disk's", st.Size())
			}
		})
	}
}
