package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/internal/testpki"
	"github.com/tandem-project/tandem/volume"
)

const testToken = "s3cret"

// seen is a request the fake API received; Body is decoded JSON (nil for
// none).
type seen struct {
	Method, Path, Query, Auth string
	Body                      any
}

// fakeAPI is an in-memory admin API that follows the contract of
// docs/admin-api.yaml closely enough for the CLI.
type fakeAPI struct {
	mu         sync.Mutex
	vols       []admin.Volume
	vms        []admin.VM
	reqs       []seen
	leaderless bool   // every /v1/ request answers 503
	slow       bool   // every request waits for the client to give up
	authHint   string // appended to the 401 message
	inUse      string // a VM that has every volume as a disk
}

func newFakeAPI(t *testing.T) (*fakeAPI, *httptest.Server) {
	f := &fakeAPI{vols: []admin.Volume{testVolume, testDegraded}}
	for _, vm := range []admin.VM{testVM, testVMNew} {
		vm.Disks = slices.Clone(vm.Disks) // the fake changes them
		f.vms = append(f.vms, vm)
	}
	mux := http.NewServeMux()
	f.routeVMs(mux)
	mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) { reply(w, 200, testCluster) })
	mux.HandleFunc("GET /v1/hosts", func(w http.ResponseWriter, r *http.Request) { reply(w, 200, testHosts) })
	mux.HandleFunc("GET /v1/volumes", func(w http.ResponseWriter, r *http.Request) { reply(w, 200, f.vols) })
	mux.HandleFunc("GET /v1/volumes/{name}", func(w http.ResponseWriter, r *http.Request) {
		if i := f.find(r.PathValue("name")); i >= 0 {
			reply(w, 200, f.vols[i])
			return
		}
		replyError(w, 404, fmt.Sprintf("no volume named %q", r.PathValue("name")))
	})
	mux.HandleFunc("POST /v1/volumes", func(w http.ResponseWriter, r *http.Request) {
		var req admin.CreateVolume
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			replyError(w, 400, err.Error())
			return
		}
		if err := volume.ValidateName(req.Name); err != nil {
			replyError(w, 400, err.Error())
			return
		}
		if f.find(req.Name) >= 0 {
			replyError(w, 409, fmt.Sprintf("volume %q already exists", req.Name))
			return
		}
		if req.Replicas == 0 {
			req.Replicas = 3
		}
		if req.Replicas > 3 {
			replyError(w, 409, fmt.Sprintf("%d replicas wanted, only 3 hosts alive", req.Replicas))
			return
		}
		v := admin.Volume{Name: req.Name, Size: int64(req.Size), Hosts: []string{"n1", "n2", "n3"}[:req.Replicas],
			PreferredLeader: "n1", Leader: "n1", State: admin.VolumeReady, URI: "nbd://10.0.0.1:10809/" + req.Name, Created: testCreated}
		f.vols = append(f.vols, v)
		reply(w, 201, v)
	})
	mux.HandleFunc("PATCH /v1/volumes/{name}", func(w http.ResponseWriter, r *http.Request) {
		i := f.find(r.PathValue("name"))
		if i < 0 {
			replyError(w, 404, fmt.Sprintf("no volume named %q", r.PathValue("name")))
			return
		}
		var req admin.ResizeVolume
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			replyError(w, 400, err.Error())
			return
		}
		if int64(req.Size) < f.vols[i].Size {
			replyError(w, 400, "volumes only grow")
			return
		}
		f.vols[i].Size = int64(req.Size)
		reply(w, 200, f.vols[i])
	})
	mux.HandleFunc("DELETE /v1/volumes/{name}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		i := f.find(name)
		if i < 0 {
			replyError(w, 404, fmt.Sprintf("no volume named %q", name))
			return
		}
		if f.inUse != "" {
			replyError(w, 409, fmt.Sprintf("volume %q: in use as a disk of VM %q (delete the VM first)", name, f.inUse))
			return
		}
		if f.vols[i].Attached > 0 && r.URL.Query().Get("force") != "true" {
			replyError(w, 409, fmt.Sprintf("volume %q has %d NBD clients attached", name, f.vols[i].Attached))
			return
		}
		f.vols = append(f.vols[:i], f.vols[i+1:]...)
		reply(w, 200, map[string]string{"deleted": name})
	})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		s := seen{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Auth: r.Header.Get(admin.TokenHeader)}
		if len(b) > 0 {
			if err := json.Unmarshal(b, &s.Body); err != nil {
				s.Body = "not JSON: " + string(b)
			}
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
		f.mu.Lock()
		defer f.mu.Unlock()
		f.reqs = append(f.reqs, s)
		switch {
		case f.slow:
			f.mu.Unlock()
			<-r.Context().Done()
			f.mu.Lock()
			return
		case f.leaderless:
			replyError(w, 503, "the cluster has no control leader")
			return
		case r.Method != http.MethodGet && s.Auth != "Bearer "+testToken:
			replyError(w, 401, "missing or wrong admin token"+f.authHint)
			return
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return f, srv
}

// routeVMs adds the VM API to the fake.
func (f *fakeAPI) routeVMs(mux *http.ServeMux) {
	vm := func(w http.ResponseWriter, r *http.Request) int {
		for i, vm := range f.vms {
			if vm.Name == r.PathValue("name") {
				return i
			}
		}
		replyError(w, 404, fmt.Sprintf("no VM named %q", r.PathValue("name")))
		return -1
	}
	mux.HandleFunc("GET /v1/vms", func(w http.ResponseWriter, r *http.Request) { reply(w, 200, f.vms) })
	mux.HandleFunc("GET /v1/vms/{name}", func(w http.ResponseWriter, r *http.Request) {
		if i := vm(w, r); i >= 0 {
			reply(w, 200, f.vms[i])
		}
	})
	mux.HandleFunc("POST /v1/vms", func(w http.ResponseWriter, r *http.Request) {
		var req admin.CreateVM
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			replyError(w, 400, err.Error())
			return
		}
		var disks []admin.VMDisk
		for _, d := range req.Disks {
			for _, other := range f.vms {
				if slices.Contains(vmDiskNames(other), d) {
					replyError(w, 409, fmt.Sprintf("VM %q: disk %q: in use as a disk of VM %q", req.Name, d, other.Name))
					return
				}
			}
			if f.find(d) < 0 {
				replyError(w, 400, fmt.Sprintf("VM %q: disk %q: not found: no such volume", req.Name, d))
				return
			}
			disks = append(disks, admin.VMDisk{Volume: d})
		}
		vm := admin.VM{Name: req.Name, ID: 1500, VCPUs: max(req.VCPUs, 1), MemoryMiB: int(req.Memory >> 20), Disks: disks,
			Boot: req.Boot, State: admin.VMStopped, Created: testCreated, Changed: 1500, Runtime: admin.LocalVM{Name: req.Name, State: admin.VMAbsent}}
		if vm.Boot.Kind == "" {
			vm.Boot.Kind = admin.BootDisk
		}
		f.vms = append(f.vms, vm)
		reply(w, 201, vm)
	})
	mux.HandleFunc("POST /v1/vms/{name}/start", func(w http.ResponseWriter, r *http.Request) {
		var req admin.StartVM
		if b, _ := io.ReadAll(r.Body); len(b) > 0 {
			if err := json.Unmarshal(b, &req); err != nil {
				replyError(w, 400, err.Error())
				return
			}
		}
		i := vm(w, r)
		if i < 0 {
			return
		}
		vm := &f.vms[i]
		if vm.State == admin.VMRunning {
			replyError(w, 409, fmt.Sprintf("VM %q is already running on %s (epoch %d)", vm.Name, vm.Host, vm.Epoch))
			return
		}
		vm.Host = cmp.Or(req.Host, vm.Host, "n1")
		vm.State, vm.Epoch = admin.VMRunning, 1600
		for j := range vm.Disks {
			vm.Disks[j].WriterEpoch, vm.Disks[j].WriterGen = 1600, 1600
		}
		reply(w, 200, vm)
	})
	mux.HandleFunc("POST /v1/vms/{name}/stop", func(w http.ResponseWriter, r *http.Request) {
		i := vm(w, r)
		if i < 0 {
			return
		}
		vm := &f.vms[i]
		if vm.State != admin.VMRunning {
			replyError(w, 409, fmt.Sprintf("VM %q: already stopped", vm.Name))
			return
		}
		vm.State, vm.Epoch = admin.VMStopped, 0
		for j := range vm.Disks {
			vm.Disks[j].WriterEpoch, vm.Disks[j].WriterGen = 0, 1700
		}
		reply(w, 200, vm)
	})
	mux.HandleFunc("DELETE /v1/vms/{name}", func(w http.ResponseWriter, r *http.Request) {
		i := vm(w, r)
		if i < 0 {
			return
		}
		if f.vms[i].State == admin.VMRunning {
			replyError(w, 409, fmt.Sprintf("VM %q: running on %s (stop it first)", f.vms[i].Name, f.vms[i].Host))
			return
		}
		name := f.vms[i].Name
		f.vms = append(f.vms[:i], f.vms[i+1:]...)
		reply(w, 200, map[string]string{"deleted": name})
	})
}

func (f *fakeAPI) find(name string) int {
	for i, v := range f.vols {
		if v.Name == name {
			return i
		}
	}
	return -1
}

func (f *fakeAPI) requests() []seen {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seen(nil), f.reqs...)
}

func reply(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func replyError(w http.ResponseWriter, code int, msg string) {
	reply(w, code, map[string]string{"error": msg})
}

// runCLI runs the tandem command line with args and returns its standard
// output and error.
func runCLI(args ...string) (string, error) {
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

// deadAddr returns a loopback address nothing listens on. The port stays
// bound (to a socket that never listens, so connections are refused)
// until the test ends: no server started later in the test can get it.
func deadAddr(t *testing.T) string {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}

func TestCLI(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "admin-token")
	if err := os.WriteFile(tokenFile, []byte(testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	emptyFile := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(emptyFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	dead := deadAddr(t)
	auth := "Bearer " + testToken

	tests := []struct {
		name string
		args []string // ADMIN is replaced by the fake's URL, HOSTPORT by its host:port
		env  map[string]string
		fake func(*fakeAPI)
		// wantOut are substrings of the standard output; wantErr of the
		// error ("" for none), NUL marking its end.
		wantOut []string
		wantErr string
		// wantReqs are the requests the fake must have received, exactly.
		wantReqs []seen
		// polls: requests after the first are polls (GET), as many as time allows.
		polls bool
	}{
		{
			name:     "volume list",
			args:     []string{"volume", "list", "--admin", "ADMIN"},
			wantOut:  []string{"NAME       SIZE    REPLICAS", "vm1        20GiB   n1,n2,n3"},
			wantReqs: []seen{{Method: "GET", Path: "/v1/volumes"}},
		},
		{
			name:     "admin from env",
			args:     []string{"volume", "ls"},
			env:      map[string]string{envAdmin: "HOSTPORT"},
			wantOut:  []string{"db.data_2"},
			wantReqs: []seen{{Method: "GET", Path: "/v1/volumes"}},
		},
		{
			name:     "admin flag beats env, flag before the subcommand",
			args:     []string{"volume", "--admin", "ADMIN", "list"},
			env:      map[string]string{envAdmin: dead},
			wantOut:  []string{"vm1"},
			wantReqs: []seen{{Method: "GET", Path: "/v1/volumes"}},
		},
		{
			name:     "reads send the token when there is one",
			args:     []string{"volume", "list", "--admin", "ADMIN"},
			env:      map[string]string{envToken: testToken},
			wantReqs: []seen{{Method: "GET", Path: "/v1/volumes", Auth: auth}},
		},
		{
			name:     "volume show",
			args:     []string{"volume", "show", "vm1", "--admin", "ADMIN"},
			wantOut:  []string{"Name:              vm1\n", "URI:               nbd://10.0.0.1:10809/vm1\n", "n2    Follower  3     48213   48211    2    12ms"},
			wantReqs: []seen{{Method: "GET", Path: "/v1/volumes/vm1"}},
		},
		{
			name:     "volume show json",
			args:     []string{"volume", "show", "vm1", "--admin", "ADMIN", "-o", "json"},
			wantOut:  []string{"{\n  \"name\": \"vm1\",\n", `"last_contact_ns": 12345678`},
			wantReqs: []seen{{Method: "GET", Path: "/v1/volumes/vm1"}},
		},
		{
			name:     "volume show unknown",
			args:     []string{"volume", "show", "nope", "--admin", "ADMIN"},
			wantErr:  `volume "nope": 404 Not Found: no volume named "nope"`,
			wantReqs: []seen{{Method: "GET", Path: "/v1/volumes/nope"}},
		},
		{
			name:    "volume show without a name",
			args:    []string{"volume", "show", "--admin", "ADMIN"},
			wantErr: "tandem volume show: want one volume NAME, got 0 arguments",
		},
		{
			name:    "volume show bad name",
			args:    []string{"volume", "show", "VM1", "--admin", "ADMIN"},
			wantErr: `invalid volume name "VM1"`,
		},
		{
			name:    "volume create",
			args:    []string{"volume", "create", "vm2", "--size", "2G", "--replicas", "2", "--admin", "ADMIN", "--token", testToken},
			wantOut: []string{"Created volume vm2 (2GiB on n1 and n2).\n\nName:              vm2\n"},
			wantReqs: []seen{{Method: "POST", Path: "/v1/volumes", Auth: auth,
				Body: map[string]any{"name": "vm2", "size": float64(2 << 30), "replicas": float64(2)}}},
		},
		{
			name:    "volume create default replicas, token from env",
			args:    []string{"volume", "create", "vm2", "--size", "512MiB", "--admin", "ADMIN", "-o", "json"},
			env:     map[string]string{envToken: testToken},
			wantOut: []string{`"hosts": [`, `"size": 536870912,`},
			wantReqs: []seen{{Method: "POST", Path: "/v1/volumes", Auth: auth,
				Body: map[string]any{"name": "vm2", "size": float64(512 << 20)}}},
		},
		{
			name:    "volume create, token from file",
			args:    []string{"volume", "create", "vm2", "--size", "1G", "--admin", "ADMIN", "--token-file", tokenFile},
			env:     map[string]string{envToken: "wrong"},
			wantOut: []string{"Created volume vm2"},
			wantReqs: []seen{{Method: "POST", Path: "/v1/volumes", Auth: auth,
				Body: map[string]any{"name": "vm2", "size": float64(1 << 30)}}},
		},
		{
			name:    "volume create without token",
			args:    []string{"volume", "create", "vm2", "--size", "1G", "--admin", "ADMIN"},
			wantErr: `create volume "vm2": 401 Unauthorized: missing or wrong admin token (no admin token given: use --token, --token-file or $TANDEM_ADMIN_TOKEN)`,
			wantReqs: []seen{{Method: "POST", Path: "/v1/volumes",
				Body: map[string]any{"name": "vm2", "size": float64(1 << 30)}}},
		},
		{
			name:    "volume create wrong token",
			args:    []string{"volume", "create", "vm2", "--size", "1G", "--admin", "ADMIN", "--token", "nope"},
			wantErr: `401 Unauthorized: missing or wrong admin token (check --token, --token-file or $TANDEM_ADMIN_TOKEN)`,
			wantReqs: []seen{{Method: "POST", Path: "/v1/volumes", Auth: "Bearer nope",
				Body: map[string]any{"name": "vm2", "size": float64(1 << 30)}}},
		},
		{
			name:    "server's token hint not repeated",
			args:    []string{"volume", "create", "vm2", "--size", "1G", "--admin", "ADMIN", "--token", "nope"},
			fake:    func(f *fakeAPI) { f.authHint = " (tandem CLI: --token, --token-file or TANDEM_ADMIN_TOKEN)" },
			wantErr: `401 Unauthorized: missing or wrong admin token (tandem CLI: --token, --token-file or TANDEM_ADMIN_TOKEN)` + "\x00",
			wantReqs: []seen{{Method: "POST", Path: "/v1/volumes", Auth: "Bearer nope",
				Body: map[string]any{"name": "vm2", "size": float64(1 << 30)}}},
		},
		{
			name:    "server's token hint, no token",
			args:    []string{"volume", "create", "vm2", "--size", "1G", "--admin", "ADMIN"},
			fake:    func(f *fakeAPI) { f.authHint = " (tandem CLI: --token, --token-file or TANDEM_ADMIN_TOKEN)" },
			wantErr: `401 Unauthorized: missing or wrong admin token (tandem CLI: --token, --token-file or TANDEM_ADMIN_TOKEN) (no admin token was given)` + "\x00",
			wantReqs: []seen{{Method: "POST", Path: "/v1/volumes",
				Body: map[string]any{"name": "vm2", "size": float64(1 << 30)}}},
		},
		{
			name:    "volume create exists",
			args:    []string{"volume", "create", "vm1", "--size", "1G", "--admin", "ADMIN", "--token", testToken},
			wantErr: `create volume "vm1": 409 Conflict: volume "vm1" already exists`,
			wantReqs: []seen{{Method: "POST", Path: "/v1/volumes", Auth: auth,
				Body: map[string]any{"name": "vm1", "size": float64(1 << 30)}}},
		},
		{
			name:    "volume create too many replicas for the cluster",
			args:    []string{"volume", "create", "vm2", "--size", "1G", "--replicas", "5", "--admin", "ADMIN", "--token", testToken},
			wantErr: `409 Conflict: 5 replicas wanted, only 3 hosts alive`,
			wantReqs: []seen{{Method: "POST", Path: "/v1/volumes", Auth: auth,
				Body: map[string]any{"name": "vm2", "size": float64(1 << 30), "replicas": float64(5)}}},
		},
		{
			name:    "volume create bad name",
			args:    []string{"volume", "create", "My_VM", "--size", "1G", "--admin", "ADMIN", "--token", testToken},
			wantErr: `invalid volume name "My_VM"`,
		},
		{
			name:    "volume create bad size",
			args:    []string{"volume", "create", "vm2", "--size", "12X", "--admin", "ADMIN", "--token", testToken},
			wantErr: `--size: invalid size "12X"`,
		},
		{
			name:    "volume create zero size",
			args:    []string{"volume", "create", "vm2", "--size", "0", "--admin", "ADMIN", "--token", testToken},
			wantErr: `--size "0": want a positive size`,
		},
		{
			name:    "volume create without size",
			args:    []string{"volume", "create", "vm2", "--admin", "ADMIN", "--token", testToken},
			wantErr: "--size is required",
		},
		{
			name:    "volume create replicas out of range",
			args:    []string{"volume", "create", "vm2", "--size", "1G", "--replicas", "6", "--admin", "ADMIN", "--token", testToken},
			wantErr: "--replicas 6: want 1 to 5",
		},
		{
			name:    "volume create zero replicas",
			args:    []string{"volume", "create", "vm2", "--size", "1G", "--replicas", "0", "--admin", "ADMIN", "--token", testToken},
			wantErr: "--replicas 0: want 1 to 5",
		},
		{
			name:    "bad output format",
			args:    []string{"volume", "create", "vm2", "--size", "1G", "-o", "yaml", "--admin", "ADMIN", "--token", testToken},
			wantErr: `--output "yaml": want table or json`,
		},
		{
			name:    "bad output format on a read",
			args:    []string{"host", "list", "-o", "yaml", "--admin", "ADMIN"},
			wantErr: `--output "yaml": want table or json`,
		},
		{
			name:    "token and token file",
			args:    []string{"volume", "delete", "vm1", "--admin", "ADMIN", "--token", testToken, "--token-file", tokenFile},
			wantErr: "give --token or --token-file, not both",
		},
		{
			name:    "missing token file",
			args:    []string{"volume", "delete", "vm1", "--admin", "ADMIN", "--token-file", filepath.Join(t.TempDir(), "none")},
			wantErr: "--token-file: open ",
		},
		{
			name:    "empty token file",
			args:    []string{"volume", "delete", "vm1", "--admin", "ADMIN", "--token-file", emptyFile},
			wantErr: "the file is empty",
		},
		{
			name:    "bad admin address",
			args:    []string{"volume", "list", "--admin", "ftp://x:1"},
			wantErr: `--admin: admin API address "ftp://x:1"`,
		},
		{
			name:    "bad timeout",
			args:    []string{"volume", "list", "--admin", "ADMIN", "--timeout", "0s"},
			wantErr: "--timeout 0s: want a positive duration",
		},
		{
			name:    "volume resize",
			args:    []string{"volume", "resize", "vm1", "--size", "40G", "--admin", "ADMIN", "--token", testToken},
			wantOut: []string{"Resized volume vm1 to 40GiB.\n\nName:              vm1\n"},
			wantReqs: []seen{{Method: "PATCH", Path: "/v1/volumes/vm1", Auth: auth,
				Body: map[string]any{"size": float64(40 << 30)}}},
		},
		{
			name:    "volume resize shrink",
			args:    []string{"volume", "resize", "vm1", "--size", "1G", "--admin", "ADMIN", "--token", testToken},
			wantErr: `resize volume "vm1": 400 Bad Request: volumes only grow`,
			wantReqs: []seen{{Method: "PATCH", Path: "/v1/volumes/vm1", Auth: auth,
				Body: map[string]any{"size": float64(1 << 30)}}},
		},
		{
			name:    "volume resize unknown",
			args:    []string{"volume", "resize", "nope", "--size", "1G", "--admin", "ADMIN", "--token", testToken},
			wantErr: `resize volume "nope": 404 Not Found`,
			wantReqs: []seen{{Method: "PATCH", Path: "/v1/volumes/nope", Auth: auth,
				Body: map[string]any{"size": float64(1 << 30)}}},
		},
		{
			name:    "volume resize without size",
			args:    []string{"volume", "resize", "vm1", "--admin", "ADMIN", "--token", testToken},
			wantErr: "--size is required",
		},
		{
			name:     "volume delete",
			args:     []string{"volume", "rm", "db.data_2", "--admin", "ADMIN", "--token", testToken},
			wantOut:  []string{"Deleted volume db.data_2.\n"},
			wantReqs: []seen{{Method: "DELETE", Path: "/v1/volumes/db.data_2", Auth: auth}},
		},
		{
			name:     "volume delete attached",
			args:     []string{"volume", "delete", "vm1", "--admin", "ADMIN", "--token", testToken},
			wantErr:  `delete volume "vm1": 409 Conflict: volume "vm1" has 1 NBD clients attached (--force deletes it anyway)`,
			wantReqs: []seen{{Method: "DELETE", Path: "/v1/volumes/vm1", Auth: auth}},
		},
		{
			name:     "volume delete of a VM's disk: no --force hint",
			args:     []string{"volume", "delete", "vm1", "--admin", "ADMIN", "--token", testToken},
			fake:     func(f *fakeAPI) { f.inUse = "web" },
			wantErr:  `delete volume "vm1": 409 Conflict: volume "vm1": in use as a disk of VM "web" (delete the VM first)` + "\x00",
			wantReqs: []seen{{Method: "DELETE", Path: "/v1/volumes/vm1", Auth: auth}},
		},
		{
			name:     "volume delete forced",
			args:     []string{"volume", "delete", "vm1", "--force", "--admin", "ADMIN", "--token-file", tokenFile, "-o", "json"},
			wantOut:  []string{"{\n  \"deleted\": \"vm1\"\n}\n"},
			wantReqs: []seen{{Method: "DELETE", Path: "/v1/volumes/vm1", Query: "force=true", Auth: auth}},
		},
		{
			name:     "volume delete unknown",
			args:     []string{"volume", "delete", "nope", "--admin", "ADMIN", "--token", testToken},
			wantErr:  `delete volume "nope": 404 Not Found: no volume named "nope"`,
			wantReqs: []seen{{Method: "DELETE", Path: "/v1/volumes/nope", Auth: auth}},
		},
		{
			name:     "vm list",
			args:     []string{"vm", "list", "--admin", "ADMIN"},
			wantOut:  []string{"NAME  STATE    HOST  EPOCH  VCPUS  MEMORY  DISKS              RUNTIME\n", "web   running  n2    1301   2      1GiB    web-root,web-data  running\n"},
			wantReqs: []seen{{Method: "GET", Path: "/v1/vms"}},
		},
		{
			name:     "vm list json",
			args:     []string{"vm", "ls", "--admin", "ADMIN", "-o", "json"},
			wantOut:  []string{`"memory_mib": 1024,`, `"writer_gen": 1301`},
			wantReqs: []seen{{Method: "GET", Path: "/v1/vms"}},
		},
		{
			name:     "vm show",
			args:     []string{"vm", "show", "web", "--admin", "ADMIN"},
			wantOut:  []string{"Epoch:       1301\n", "Runtime:     running (pid 4242, epoch 1301, ", "web-data  1301          1301\n"},
			wantReqs: []seen{{Method: "GET", Path: "/v1/vms/web"}},
		},
		{
			name:     "vm show json",
			args:     []string{"vm", "get", "web", "--admin", "ADMIN", "-o", "json"},
			wantOut:  []string{"{\n  \"name\": \"web\",\n", `"epoch": 1301,`},
			wantReqs: []seen{{Method: "GET", Path: "/v1/vms/web"}},
		},
		{
			name:     "vm show unknown",
			args:     []string{"vm", "show", "nope", "--admin", "ADMIN"},
			wantErr:  `VM "nope": 404 Not Found: no VM named "nope"`,
			wantReqs: []seen{{Method: "GET", Path: "/v1/vms/nope"}},
		},
		{
			name:    "vm show bad name",
			args:    []string{"vm", "show", "Web", "--admin", "ADMIN"},
			wantErr: `invalid VM name "Web"`,
		},
		{
			name:    "vm show without a name",
			args:    []string{"vm", "show", "--admin", "ADMIN"},
			wantErr: "tandem vm show: want one VM NAME, got 0 arguments",
		},
		{
			name:    "vm create",
			args:    []string{"vm", "create", "app", "--disk", "vm1", "--disk", "db.data_2", "--vcpus", "2", "--memory", "1G", "--admin", "ADMIN", "--token", testToken},
			wantOut: []string{"Created VM app (stopped; start it with: tandem vm start app).\n\nName:     app\n", "Memory:   1GiB\n", "Boot:     disk vm1\n", "db.data_2  -             -\n"},
			wantReqs: []seen{{Method: "POST", Path: "/v1/vms", Auth: auth,
				Body: map[string]any{"name": "app", "vcpus": float64(2), "memory": float64(1 << 30), "disks": []any{"vm1", "db.data_2"}}}},
		},
		{
			name:    "vm create, defaults left to the API, disks with a comma",
			args:    []string{"vm", "create", "app", "--disk", "vm1,db.data_2", "--admin", "ADMIN", "--token", testToken, "-o", "json"},
			wantOut: []string{`"vcpus": 1,`, `"kind": "disk"`},
			wantReqs: []seen{{Method: "POST", Path: "/v1/vms", Auth: auth,
				Body: map[string]any{"name": "app", "disks": []any{"vm1", "db.data_2"}}}},
		},
		{
			name: "vm create, kernel boot",
			args: []string{"vm", "create", "app", "--disk", "vm1", "--memory", "128MiB", "--kernel", "/srv/vmlinuz", "--initrd", "/srv/initrd",
				"--cmdline", "console=ttyS0 quiet", "--admin", "ADMIN", "--token", testToken},
			wantOut: []string{"Boot:     kernel /srv/vmlinuz\n", "Initrd:   /srv/initrd\n", "Cmdline:  \"console=ttyS0 quiet\"\n"},
			wantReqs: []seen{{Method: "POST", Path: "/v1/vms", Auth: auth,
				Body: map[string]any{"name": "app", "memory": float64(128 << 20), "disks": []any{"vm1"},
					"boot": map[string]any{"kind": "kernel", "kernel": "/srv/vmlinuz", "initrd": "/srv/initrd", "cmdline": "console=ttyS0 quiet"}}}},
		},
		{
			name:    "vm create, disk of another VM",
			args:    []string{"vm", "create", "app", "--disk", "web-data", "--admin", "ADMIN", "--token", testToken},
			wantErr: `create VM "app": 409 Conflict: VM "app": disk "web-data": in use as a disk of VM "web"`,
			wantReqs: []seen{{Method: "POST", Path: "/v1/vms", Auth: auth,
				Body: map[string]any{"name": "app", "disks": []any{"web-data"}}}},
		},
		{
			name:    "vm create, unknown disk",
			args:    []string{"vm", "create", "app", "--disk", "nope", "--admin", "ADMIN", "--token", testToken},
			wantErr: `create VM "app": 400 Bad Request: VM "app": disk "nope": not found: no such volume`,
			wantReqs: []seen{{Method: "POST", Path: "/v1/vms", Auth: auth,
				Body: map[string]any{"name": "app", "disks": []any{"nope"}}}},
		},
		{
			name:    "vm create without token",
			args:    []string{"vm", "create", "app", "--disk", "vm1", "--admin", "ADMIN"},
			wantErr: `create VM "app": 401 Unauthorized: missing or wrong admin token (no admin token given: use --token, --token-file or $TANDEM_ADMIN_TOKEN)`,
			wantReqs: []seen{{Method: "POST", Path: "/v1/vms",
				Body: map[string]any{"name": "app", "disks": []any{"vm1"}}}},
		},
		{
			name:    "vm create without disk",
			args:    []string{"vm", "create", "app", "--admin", "ADMIN", "--token", testToken},
			wantErr: "--disk is required",
		},
		{
			name:    "vm create, bad disk name",
			args:    []string{"vm", "create", "app", "--disk", "Root", "--admin", "ADMIN", "--token", testToken},
			wantErr: `--disk: disk "Root": not a volume name`,
		},
		{
			name:    "vm create, relative file disk",
			args:    []string{"vm", "create", "app", "--disk", "raw:disk.img", "--admin", "ADMIN", "--token", testToken},
			wantErr: `--disk: disk "raw:disk.img": "disk.img" is not a clean absolute path`,
		},
		{
			name:    "vm move-disk, no target",
			args:    []string{"vm", "move-disk", "app", "0", "--admin", "ADMIN", "--token", testToken},
			wantErr: `give one target: --to-volume VOL, --to-file PATH or --to-nbd URI (or --cancel)`,
		},
		{
			name:    "vm move-disk, two targets",
			args:    []string{"vm", "move-disk", "app", "0", "--to-volume", "v", "--to-file", "/x.img", "--admin", "ADMIN", "--token", testToken},
			wantErr: `give one target`,
		},
		{
			name:    "vm move-disk, relative file",
			args:    []string{"vm", "move-disk", "app", "0", "--to-file", "x.img", "--admin", "ADMIN", "--token", testToken},
			wantErr: `--to-file "x.img": want an absolute path`,
		},
		{
			name:    "vm move-disk, bad format",
			args:    []string{"vm", "move-disk", "app", "0", "--to-file", "/x.img", "--format", "vmdk", "--admin", "ADMIN", "--token", testToken},
			wantErr: `--format "vmdk": want raw or qcow2`,
		},
		{
			name:    "vm move-disk, format without a file",
			args:    []string{"vm", "move-disk", "app", "0", "--to-volume", "v", "--format", "raw", "--admin", "ADMIN", "--token", testToken},
			wantErr: `--format goes with --to-file`,
		},
		{
			name:    "vm move-disk, bad nbd URI",
			args:    []string{"vm", "move-disk", "app", "0", "--to-nbd", "host:10809", "--admin", "ADMIN", "--token", testToken},
			wantErr: `--to-nbd "host:10809": want nbd://host[:port]/export`,
		},
		{
			name:    "vm move-disk, cancel with a target",
			args:    []string{"vm", "move-disk", "app", "0", "--cancel", "--to-volume", "v", "--admin", "ADMIN", "--token", testToken},
			wantErr: `--cancel takes no target`,
		},
		{
			name:    "vm create, bad name",
			args:    []string{"vm", "create", "App", "--disk", "vm1", "--admin", "ADMIN", "--token", testToken},
			wantErr: `invalid VM name "App"`,
		},
		{
			name:    "vm create, 17 vcpus",
			args:    []string{"vm", "create", "app", "--disk", "vm1", "--vcpus", "17", "--admin", "ADMIN", "--token", testToken},
			wantErr: "--vcpus 17: want 1 to 16",
		},
		{
			name:    "vm create, too little memory",
			args:    []string{"vm", "create", "app", "--disk", "vm1", "--memory", "8M", "--admin", "ADMIN", "--token", testToken},
			wantErr: "--memory 8M: want whole MiB from 16MiB to 64GiB",
		},
		{
			name:    "vm create, memory not in MiB",
			args:    []string{"vm", "create", "app", "--disk", "vm1", "--memory", "1000K", "--admin", "ADMIN", "--token", testToken},
			wantErr: "--memory 1000K: want whole MiB",
		},
		{
			name:    "vm create, bad memory",
			args:    []string{"vm", "create", "app", "--disk", "vm1", "--memory", "lots", "--admin", "ADMIN", "--token", testToken},
			wantErr: `--memory: invalid size "lots"`,
		},
		{
			name:    "vm create, initrd without kernel",
			args:    []string{"vm", "create", "app", "--disk", "vm1", "--initrd", "/i", "--admin", "ADMIN", "--token", testToken},
			wantErr: "--initrd and --cmdline go with --kernel",
		},
		{
			name:    "vm create, relative kernel",
			args:    []string{"vm", "create", "app", "--disk", "vm1", "--kernel", "vmlinuz", "--admin", "ADMIN", "--token", testToken},
			wantErr: "--kernel vmlinuz: want an absolute path",
		},
		{
			name:     "vm start",
			args:     []string{"vm", "start", "new", "--admin", "ADMIN", "--token", testToken},
			wantOut:  []string{"Started VM new on n1 (epoch 1600).\n\nName:     new\n", "new-root  1600          1600\n"},
			wantReqs: []seen{{Method: "POST", Path: "/v1/vms/new/start", Auth: auth}},
		},
		{
			name:     "vm start on a host",
			args:     []string{"vm", "start", "new", "--host", "n3", "--admin", "ADMIN", "--token", testToken, "-o", "json"},
			wantOut:  []string{`"host": "n3",`, `"epoch": 1600,`},
			wantReqs: []seen{{Method: "POST", Path: "/v1/vms/new/start", Auth: auth, Body: map[string]any{"host": "n3"}}},
		},
		{
			name:     "vm start running",
			args:     []string{"vm", "start", "web", "--admin", "ADMIN", "--token", testToken},
			wantErr:  `start VM "web": 409 Conflict: VM "web" is already running on n2 (epoch 1301)`,
			wantReqs: []seen{{Method: "POST", Path: "/v1/vms/web/start", Auth: auth}},
		},
		{
			name:     "vm stop",
			args:     []string{"vm", "stop", "web", "--admin", "ADMIN", "--token-file", tokenFile, "--no-wait"},
			wantOut:  []string{"Stopped VM web.\n\nName:        web\n", "State:       stopped\n", "web-root  -             1700\n"},
			wantReqs: []seen{{Method: "POST", Path: "/v1/vms/web/stop", Auth: auth}},
		},
		{
			// The fake's VM keeps its QEMU running: the wait times out.
			name:     "vm stop waits for QEMU",
			args:     []string{"vm", "stop", "web", "--admin", "ADMIN", "--token-file", tokenFile, "--wait-timeout", "250ms"},
			wantErr:  `VM web is recorded stopped but QEMU still runs on n2 (state running) after 250ms: see tandem vm show web`,
			wantReqs: []seen{{Method: "POST", Path: "/v1/vms/web/stop", Auth: auth}},
			polls:    true,
		},
		{
			name:     "vm stop stopped",
			args:     []string{"vm", "stop", "new", "--admin", "ADMIN", "--token", testToken},
			wantErr:  `stop VM "new": 409 Conflict: VM "new": already stopped`,
			wantReqs: []seen{{Method: "POST", Path: "/v1/vms/new/stop", Auth: auth}},
		},
		{
			name:     "vm stop unknown",
			args:     []string{"vm", "stop", "nope", "--admin", "ADMIN", "--token", testToken},
			wantErr:  `stop VM "nope": 404 Not Found`,
			wantReqs: []seen{{Method: "POST", Path: "/v1/vms/nope/stop", Auth: auth}},
		},
		{
			name:     "vm delete",
			args:     []string{"vm", "rm", "new", "--admin", "ADMIN", "--token", testToken},
			wantOut:  []string{"Deleted VM new (its disks stay).\n"},
			wantReqs: []seen{{Method: "DELETE", Path: "/v1/vms/new", Auth: auth}},
		},
		{
			name:     "vm delete json",
			args:     []string{"vm", "delete", "new", "--admin", "ADMIN", "--token", testToken, "-o", "json"},
			wantOut:  []string{"{\n  \"deleted\": \"new\"\n}\n"},
			wantReqs: []seen{{Method: "DELETE", Path: "/v1/vms/new", Auth: auth}},
		},
		{
			name:     "vm delete running",
			args:     []string{"vm", "delete", "web", "--admin", "ADMIN", "--token", testToken},
			wantErr:  `delete VM "web": 409 Conflict: VM "web": running on n2 (stop it first)`,
			wantReqs: []seen{{Method: "DELETE", Path: "/v1/vms/web", Auth: auth}},
		},
		{
			name:     "vm without leader",
			args:     []string{"vm", "list", "--admin", "ADMIN"},
			fake:     func(f *fakeAPI) { f.leaderless = true },
			wantErr:  "list VMs: 503 Service Unavailable: the cluster has no control leader",
			wantReqs: []seen{{Method: "GET", Path: "/v1/vms"}},
		},
		{
			name:     "cluster status",
			args:     []string{"cluster", "status", "--admin", "ADMIN"},
			wantOut:  []string{"Control leader:  n1\n", "Hosts:           4 (3 alive)\n"},
			wantReqs: []seen{{Method: "GET", Path: "/v1/cluster"}},
		},
		{
			name:     "cluster status json",
			args:     []string{"cluster", "status", "--admin", "ADMIN", "-o", "json"},
			wantOut:  []string{`"control_voters": [`, `"hosts_alive": 3,`},
			wantReqs: []seen{{Method: "GET", Path: "/v1/cluster"}},
		},
		{
			name:     "cluster without leader",
			args:     []string{"cluster", "status", "--admin", "ADMIN"},
			fake:     func(f *fakeAPI) { f.leaderless = true },
			wantErr:  "cluster status: 503 Service Unavailable: the cluster has no control leader",
			wantReqs: []seen{{Method: "GET", Path: "/v1/cluster"}},
		},
		{
			name:     "host list",
			args:     []string{"host", "list", "--admin", "ADMIN"},
			wantOut:  []string{"NAME                 STATE   CONTROL", "n3                   failed  voter"},
			wantReqs: []seen{{Method: "GET", Path: "/v1/hosts"}},
		},
		{
			name:     "host list json",
			args:     []string{"host", "list", "--admin", "ADMIN", "-o", "json"},
			wantOut:  []string{`"disk_free": 812345678901,`},
			wantReqs: []seen{{Method: "GET", Path: "/v1/hosts"}},
		},
		{
			name:    "unreachable",
			args:    []string{"host", "list"},
			env:     map[string]string{envAdmin: dead},
			wantErr: "list hosts: cannot reach the admin API at " + dead + ": ",
		},
		{
			name:     "timeout",
			args:     []string{"volume", "list", "--admin", "ADMIN", "--timeout", "100ms"},
			fake:     func(f *fakeAPI) { f.slow = true },
			wantErr:  "list volumes: no answer in time from the admin API at http://",
			wantReqs: []seen{{Method: "GET", Path: "/v1/volumes"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, srv := newFakeAPI(t)
			if tt.fake != nil {
				tt.fake(f)
			}
			hostport := strings.TrimPrefix(srv.URL, "http://")
			t.Setenv(envAdmin, "")
			t.Setenv(envToken, "")
			for k, v := range tt.env {
				t.Setenv(k, strings.ReplaceAll(v, "HOSTPORT", hostport))
			}
			args := make([]string, len(tt.args))
			for i, a := range tt.args {
				args[i] = strings.ReplaceAll(strings.ReplaceAll(a, "ADMIN", srv.URL), "HOSTPORT", hostport)
			}
			out, err := runCLI(args...)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("error: %v", err)
			case tt.wantErr != "" && err == nil:
				t.Errorf("no error, want %q", tt.wantErr)
			case tt.wantErr != "" && !strings.Contains(err.Error()+"\x00", tt.wantErr):
				t.Errorf("error:\n got %v\nwant %s", err, tt.wantErr)
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(out, w) {
					t.Errorf("output does not contain %q:\n%s", w, out)
				}
			}
			got := f.requests()
			if tt.polls && len(got) > 1 {
				// The polls that follow the first request depend on timing:
				// only their kind is checked.
				for _, r := range got[1:] {
					if r.Method != "GET" {
						t.Errorf("a poll is %s %s", r.Method, r.Path)
					}
				}
				got = got[:1]
			}
			if !reflect.DeepEqual(got, tt.wantReqs) && len(got)+len(tt.wantReqs) > 0 {
				t.Errorf("requests:\n got %+v\nwant %+v", got, tt.wantReqs)
			}
		})
	}
}

// TestCLIJSONRoundTrip checks that -o json prints what the API sent.
func TestCLIJSONRoundTrip(t *testing.T) {
	_, srv := newFakeAPI(t)
	t.Setenv(envAdmin, "")
	t.Setenv(envToken, "")
	out, err := runCLI("volume", "list", "-o", "json", "--admin", srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	var got []admin.Volume
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	if want := []admin.Volume{testVolume, testDegraded}; !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
}

// TestCLIHelp checks that every operator command has its help texts.
func TestCLIHelp(t *testing.T) {
	for _, group := range newRootCmd().Commands() {
		switch group.Name() {
		case "cluster", "host", "volume", "vm":
		default:
			continue
		}
		cmds := append(group.Commands(), group)
		for _, c := range cmds {
			if c.Short == "" || c.Long == "" || c.Example == "" {
				t.Errorf("%s: want Short, Long and Example", c.CommandPath())
			}
			for _, name := range []string{"admin", "token", "token-file", "output", "timeout"} {
				if c.Flag(name) == nil {
					t.Errorf("%s: no --%s", c.CommandPath(), name)
				}
			}
		}
	}
}

func TestDevProcs(t *testing.T) {
	for _, tc := range []struct {
		env   string
		procs int
		want  int
		set   bool
	}{
		{"", 2, 4, true},
		{"", 1, 2, true},
		{"3", 3, 3, false}, // the user's choice stands
	} {
		if got, set := devProcs(tc.env, tc.procs); got != tc.want || set != tc.set {
			t.Errorf("devProcs(%q, %d) = %d, %v; want %d, %v", tc.env, tc.procs, got, set, tc.want, tc.set)
		}
	}
}

// TestCLIAdminCA: --admin-ca (or $TANDEM_ADMIN_CA) talks HTTPS to an
// admin API with TLS, trusting that CA only.
func TestCLIAdminCA(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reply(w, 200, []admin.Host{{Name: "n1", State: admin.HostAlive}})
	}))
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	ca, otherCA := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "other.pem")
	testpki.WriteFile(t, ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	testpki.WriteFile(t, otherCA, testpki.NewCA(t, "another CA").PEM())
	hostport := strings.TrimPrefix(srv.URL, "https://")

	for _, tt := range []struct {
		name    string
		env     string // $TANDEM_ADMIN_CA
		args    []string
		wantErr string // "" for success
	}{
		{"host:port with the CA", "", []string{"--admin", hostport, "--admin-ca", ca}, ""},
		{"https URL with the CA", "", []string{"--admin", srv.URL, "--admin-ca", ca}, ""},
		{"the CA from the environment", ca, []string{"--admin", hostport}, ""},
		{"the flag over the environment", otherCA, []string{"--admin", hostport, "--admin-ca", ca}, ""},
		{"no CA: plain HTTP", "", []string{"--admin", hostport}, "400"},
		{"another CA", "", []string{"--admin", hostport, "--admin-ca", otherCA}, "certificate"},
		{"http URL with a CA", "", []string{"--admin", "http://" + hostport, "--admin-ca", ca}, "--admin-ca is for HTTPS"},
		{"a missing CA file", "", []string{"--admin", hostport, "--admin-ca", filepath.Join(dir, "none.pem")}, "--admin-ca: open"},
		{"a CA file without certificates", "", []string{"--admin", hostport, "--admin-ca", filepath.Join(dir)}, "--admin-ca:"},
		{"a bad CA in the environment", filepath.Join(dir, "none.pem"), []string{"--admin", hostport}, "$TANDEM_ADMIN_CA: open"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(envCA, tt.env)
			out, err := runCLI(append([]string{"host", "list", "--timeout", "5s"}, tt.args...)...)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("error: %v", err)
			case tt.wantErr == "" && !strings.Contains(out, "n1"):
				t.Fatalf("output:\n%s", out)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error %v, want one with %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseRate(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"", 0, false},
		{"100M", 100 << 20, false},
		{"4096", 4096, false},
		{"0", 0, true},
		{"-1M", 0, true},
		{"fast", 0, true},
	}
	for _, tt := range tests {
		got, err := parseRate("max-rate", tt.in)
		if (err != nil) != tt.wantErr || int64(got) != tt.want {
			t.Errorf("parseRate(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
		if err != nil && !strings.Contains(err.Error(), `--max-rate "`+tt.in+`"`) {
			t.Errorf("parseRate(%q): error %q does not name the flag and value", tt.in, err)
		}
	}
}
