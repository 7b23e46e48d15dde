package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/tandem-project/tandem/cluster/catalog"
)

// fakeCluster is a Cluster that leads the control plane and records the
// VM calls it gets; the volume methods answer from vols.
type fakeCluster struct {
	mu    sync.Mutex
	calls []string
	local []LocalVM
	vols  []Volume
	// err, if set, is returned by every changing method.
	err error
	// controlErr, if set, is ControlError's: this agent left the control
	// plane, and knows no leader.
	controlErr error
}

func (f *fakeCluster) record(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
}

func (f *fakeCluster) Leader() (string, bool, bool) {
	if f.controlErr != nil {
		return "", false, false
	}
	return "self", true, true
}
func (f *fakeCluster) ControlError() error                           { return f.controlErr }
func (f *fakeCluster) Status(context.Context) (ClusterStatus, error) { return ClusterStatus{}, nil }
func (f *fakeCluster) Hosts(context.Context) ([]Host, error)         { return nil, nil }
func (f *fakeCluster) Volumes(context.Context) ([]Volume, error)     { return f.vols, nil }
func (f *fakeCluster) Volume(_ context.Context, name string) (Volume, error) {
	for _, v := range f.vols {
		if v.Name == name {
			return v, nil
		}
	}
	return Volume{}, Errorf(http.StatusNotFound, "no volume named %q", name)
}
func (f *fakeCluster) CreateVolume(_ context.Context, req CreateVolume) (Volume, error) {
	return Volume{Name: req.Name}, f.err
}
func (f *fakeCluster) ResizeVolume(_ context.Context, name string, _ int64) (Volume, error) {
	return Volume{Name: name}, f.err
}
func (f *fakeCluster) DeleteVolume(_ context.Context, name string, force bool) error {
	f.record("delete volume %s force=%v", name, force)
	return f.err
}
func (f *fakeCluster) VolumeWriters(context.Context) (map[string]VolumeWriter, error) {
	return map[string]VolumeWriter{"d1": {VM: "web", WriterEpoch: 12, WriterGen: 12}, "d2": {WriterGen: 9}}, nil
}
func (f *fakeCluster) Local() []LocalVolume { return nil }
func (f *fakeCluster) VMs(context.Context) ([]VM, error) {
	f.record("list")
	return nil, nil
}
func (f *fakeCluster) VM(_ context.Context, name string) (VM, error) {
	f.record("get %s", name)
	if name != "web" {
		return VM{}, Errorf(http.StatusNotFound, "no VM named %q", name)
	}
	return VM{Name: name, State: VMStopped}, nil
}
func (f *fakeCluster) CreateVM(_ context.Context, req CreateVM) (VM, error) {
	b, _ := json.Marshal(req)
	f.record("create %s", b)
	return VM{Name: req.Name}, f.err
}
func (f *fakeCluster) StartVM(_ context.Context, name string, req StartVM) (VM, error) {
	f.record("start %s host=%q", name, req.Host)
	return VM{Name: name, State: VMRunning}, f.err
}
func (f *fakeCluster) StopVM(_ context.Context, name string) (VM, error) {
	f.record("stop %s", name)
	return VM{Name: name, State: VMStopped}, f.err
}
func (f *fakeCluster) DeleteVM(_ context.Context, name string) error {
	f.record("delete %s", name)
	return f.err
}
func (f *fakeCluster) MigrateVM(_ context.Context, name string, req MigrateVM) (VM, error) {
	f.record("migrate %s to %s", name, req.To)
	return VM{Name: name, State: VMRunning, Migration: &Migration{To: req.To, Phase: "preparing"}}, f.err
}
func (f *fakeCluster) CancelMigration(_ context.Context, name string) (VM, error) {
	f.record("cancel migration of %s", name)
	return VM{Name: name, State: VMRunning}, f.err
}
func (f *fakeCluster) MoveDisk(_ context.Context, name string, n int, req MoveDisk) (VM, error) {
	f.record("move disk %d of %s to %s", n, name, req.To)
	return VM{Name: name, State: VMRunning, DiskMove: &DiskMove{Disk: n, To: req.To, Phase: "copying"}}, f.err
}
func (f *fakeCluster) CancelDiskMove(_ context.Context, name string, n int) (VM, error) {
	f.record("cancel move of disk %d of %s", n, name)
	return VM{Name: name, State: VMRunning}, f.err
}
func (f *fakeCluster) DrainHost(_ context.Context, name string, drained bool) (Host, error) {
	f.record("drain %s %v", name, drained)
	return Host{Name: name, Drained: drained}, f.err
}
func (f *fakeCluster) MigrationStep(_ context.Context, st MigrationStep) (uint64, error) {
	f.record("migration step %s of %s", st.Kind, st.VM)
	return 7, f.err
}
func (f *fakeCluster) FenceLocal(_ context.Context, name string, req Fence) error {
	f.record("fence %s gen %d epoch %d", name, req.Gen, req.Epoch)
	return f.err
}
func (f *fakeCluster) LocalVMs(context.Context, uint64) ([]LocalVM, error) { return f.local, nil }

func (f *fakeCluster) takeCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

func send(t *testing.T, method, url, token, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set(TokenHeader, "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestVMRoutes(t *testing.T) {
	f := &fakeCluster{}
	srv := httptest.NewServer(Handler(Config{Cluster: f, Token: "tok", Self: "n1"}))
	t.Cleanup(srv.Close)
	tests := []struct {
		name, method, path, token, body string
		code                            int
		want                            string   // a substring of the body
		calls                           []string // the Cluster calls made
	}{
		{name: "list", method: "GET", path: "/v1/vms", code: 200, want: "[]", calls: []string{"list"}},
		{name: "get", method: "GET", path: "/v1/vms/web", code: 200, want: `"name": "web"`, calls: []string{"get web"}},
		{name: "get unknown", method: "GET", path: "/v1/vms/nope", code: 404, want: `"error": "no VM named \"nope\""`, calls: []string{"get nope"}},
		{name: "create", method: "POST", path: "/v1/vms", token: "tok", body: `{"name":"web","vcpus":2,"memory":"1G","disks":["d1"],"boot":{"kind":"kernel","kernel":"/k"}}`, code: 201,
			calls: []string{`create {"name":"web","vcpus":2,"memory":1073741824,"disks":["d1"],"boot":{"kind":"kernel","kernel":"/k"}}`}},
		{name: "create, memory in bytes", method: "POST", path: "/v1/vms", token: "tok", body: `{"name":"web","memory":268435456,"disks":["d1"]}`, code: 201,
			calls: []string{`create {"name":"web","memory":268435456,"disks":["d1"]}`}},
		{name: "create, bad memory", method: "POST", path: "/v1/vms", token: "tok", body: `{"name":"web","memory":"lots","disks":["d1"]}`, code: 400, want: `invalid size \"lots\"`},
		{name: "create, unknown field", method: "POST", path: "/v1/vms", token: "tok", body: `{"name":"web","disks":["d1"],"cpus":2}`, code: 400, want: `unknown field \"cpus\"`},
		{name: "create, empty body", method: "POST", path: "/v1/vms", token: "tok", code: 400, want: "empty body"},
		{name: "create without token", method: "POST", path: "/v1/vms", body: `{"name":"web","disks":["d1"]}`, code: 401},
		{name: "create, wrong token", method: "POST", path: "/v1/vms", token: "nope", body: `{"name":"web","disks":["d1"]}`, code: 401},
		{name: "start, no body", method: "POST", path: "/v1/vms/web/start", token: "tok", code: 200, want: `"state": "running"`, calls: []string{`start web host=""`}},
		{name: "start, empty object", method: "POST", path: "/v1/vms/web/start", token: "tok", body: "{}", code: 200, calls: []string{`start web host=""`}},
		{name: "start on a host", method: "POST", path: "/v1/vms/web/start", token: "tok", body: ` {"host": "n2"} `, code: 200, calls: []string{`start web host="n2"`}},
		{name: "start, bad body", method: "POST", path: "/v1/vms/web/start", token: "tok", body: `{"host": 2}`, code: 400},
		{name: "start, unknown field", method: "POST", path: "/v1/vms/web/start", token: "tok", body: `{"node": "n2"}`, code: 400},
		{name: "start without token", method: "POST", path: "/v1/vms/web/start", code: 401},
		{name: "stop", method: "POST", path: "/v1/vms/web/stop", token: "tok", code: 200, want: `"state": "stopped"`, calls: []string{"stop web"}},
		{name: "stop without token", method: "POST", path: "/v1/vms/web/stop", code: 401},
		{name: "delete", method: "DELETE", path: "/v1/vms/web", token: "tok", code: 200, want: `"deleted": "web"`, calls: []string{"delete web"}},
		{name: "delete without token", method: "DELETE", path: "/v1/vms/web", code: 401},
		{name: "GET start", method: "GET", path: "/v1/vms/web/start", code: 404, want: "no such endpoint"},
		{name: "volumes carry their writers", method: "GET", path: "/v1/volumes", code: 200, want: `"vm": "web",
    "writer_epoch": 12,
    "writer_gen": 12`},
		{name: "volume carries its writer", method: "GET", path: "/v1/volumes/d2", code: 200, want: `"writer_epoch": 0,
  "writer_gen": 9`},
	}
	f.vols = []Volume{{Name: "d1"}, {Name: "d2"}, {Name: "d3"}}
	for _, tt := range tests {
		code, body := send(t, tt.method, srv.URL+tt.path, tt.token, tt.body)
		if code != tt.code || !strings.Contains(body, tt.want) {
			t.Errorf("%s: %d %s\nwant %d containing %s", tt.name, code, body, tt.code, tt.want)
		}
		if calls := f.takeCalls(); !reflect.DeepEqual(calls, tt.calls) {
			t.Errorf("%s: calls %q, want %q", tt.name, calls, tt.calls)
		}
	}
	if code, body := send(t, "GET", srv.URL+"/v1/volumes/d3", "", ""); code != 200 || strings.Contains(body, `"vm"`) {
		t.Errorf("a volume of no VM: %d %s", code, body)
	}
}

func TestLocalVMsRoute(t *testing.T) {
	f := &fakeCluster{}
	srv := httptest.NewServer(Handler(Config{Cluster: f, Token: "tok"}))
	t.Cleanup(srv.Close)
	if code, body := send(t, "GET", srv.URL+"/v1/local/vms", "", ""); code != 200 || strings.TrimSpace(body) != "[]" {
		t.Errorf("no runtime: %d %s", code, body)
	}
	f.local = []LocalVM{{Name: "web", State: "paused", PID: 7, Epoch: 3}}
	code, body := send(t, "GET", srv.URL+"/v1/local/vms", "", "")
	var got []LocalVM
	if err := json.Unmarshal([]byte(body), &got); code != 200 || err != nil || !reflect.DeepEqual(got, f.local) {
		t.Errorf("%d %s %v", code, body, err)
	}
	if strings.Contains(body, "started") {
		t.Errorf("a zero start time is reported: %s", body)
	}
}

// TestCatalogErrors checks that refused catalog commands get their status
// and lose the package prefix.
func TestCatalogErrors(t *testing.T) {
	f := &fakeCluster{}
	srv := httptest.NewServer(Handler(Config{Cluster: f, Token: "tok"}))
	t.Cleanup(srv.Close)
	tests := []struct {
		err  error
		code int
	}{
		{fmt.Errorf("catalog: volume %q: %w as a disk of VM %q (delete the VM first)", "d1", catalog.ErrInUse, "web"), 409},
		{fmt.Errorf("catalog: VM %q: %w on n2 (stop it first)", "web", catalog.ErrRunning), 409},
		{fmt.Errorf("catalog: VM %q: already %w", "web", catalog.ErrStopped), 409},
		{fmt.Errorf("catalog: VM %q: %w", "web", catalog.ErrExists), 409},
		{fmt.Errorf("catalog: VM %q: %w", "web", catalog.ErrNotFound), 404},
		{fmt.Errorf("catalog: %w: bad", catalog.ErrInvalid), 400},
		{fmt.Errorf("disk on fire"), 500},
	}
	for _, tt := range tests {
		f.err = tt.err
		code, body := send(t, "DELETE", srv.URL+"/v1/volumes/d1", "tok", "")
		var e Error
		json.Unmarshal([]byte(body), &e)
		if code != tt.code || e.Error != strings.TrimPrefix(tt.err.Error(), "catalog: ") {
			t.Errorf("%v: %d %q, want %d", tt.err, code, e.Error, tt.code)
		}
	}
}
