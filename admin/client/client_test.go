package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/admin/client"
)

// request is what the fake server saw.
type request struct {
	Method, Path, RawQuery, Auth, ContentType string
	Body                                      string
}

// fake answers every request with status and body, recording it. Read
// the record once the client's calls have returned.
func fake(t *testing.T, status int, body string) (*httptest.Server, *[]request) {
	t.Helper()
	var (
		mu  sync.Mutex
		got []request
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		got = append(got, request{
			Method: r.Method, Path: r.URL.EscapedPath(), RawQuery: r.URL.RawQuery,
			Auth: r.Header.Get(admin.TokenHeader), ContentType: r.Header.Get("Content-Type"),
			Body: string(b),
		})
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv, &got
}

var created = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func TestRequests(t *testing.T) {
	vol := admin.Volume{
		Name: "vm1", Size: 1 << 30, Hosts: []string{"n1", "n2", "n3"}, PreferredLeader: "n1",
		Leader: "n1", State: admin.VolumeReady, URI: "nbd://127.0.0.1:10809/vm1", Created: created,
		Replicas: []admin.Replica{{Host: "n1", State: "Leader", Term: 2, LastIndex: 9, CommitIndex: 9, AppliedIndex: 9}, {Host: "n2", State: "Follower", Term: 2, LastContact: 3 * time.Millisecond}},
	}
	volJSON, _ := json.Marshal(vol)
	hosts := []admin.Host{{Name: "n1", State: admin.HostAlive, Capacity: 100 << 30, Joined: created}}
	hostsJSON, _ := json.Marshal(hosts)
	cluster := admin.ClusterStatus{Host: "n1", Version: "v", ControlLeader: "n1", ControlVoters: []string{"n1"}, Hosts: 1, HostsAlive: 1}
	clusterJSON, _ := json.Marshal(cluster)
	vm := admin.VM{Name: "web", ID: 40, VCPUs: 2, MemoryMiB: 512, Disks: []admin.VMDisk{{Volume: "vm1", WriterEpoch: 57, WriterGen: 57}},
		Boot: admin.Boot{Kind: admin.BootKernel, Kernel: "/boot/vmlinuz", Cmdline: "console=ttyS0"}, State: admin.VMRunning, Host: "n2", Epoch: 57,
		Created: created, Changed: 57, Runtime: admin.LocalVM{Name: "web", State: "running", PID: 4242, Epoch: 57, Started: created}}
	vmJSON, _ := json.Marshal(vm)

	tests := []struct {
		name     string
		status   int
		body     string
		call     func(context.Context, *client.Client) (any, error)
		want     any
		wantReq  request
		wantBody any // the request body decoded as JSON, nil for none
	}{
		{
			name: "cluster", status: 200, body: string(clusterJSON),
			call:    func(ctx context.Context, c *client.Client) (any, error) { return c.Cluster(ctx) },
			want:    cluster,
			wantReq: request{Method: "GET", Path: "/v1/cluster"},
		},
		{
			name: "hosts", status: 200, body: string(hostsJSON),
			call:    func(ctx context.Context, c *client.Client) (any, error) { return c.Hosts(ctx) },
			want:    hosts,
			wantReq: request{Method: "GET", Path: "/v1/hosts"},
		},
		{
			name: "volumes", status: 200, body: "[" + string(volJSON) + "]",
			call:    func(ctx context.Context, c *client.Client) (any, error) { return c.Volumes(ctx) },
			want:    []admin.Volume{vol},
			wantReq: request{Method: "GET", Path: "/v1/volumes"},
		},
		{
			name: "volume", status: 200, body: string(volJSON),
			call:    func(ctx context.Context, c *client.Client) (any, error) { return c.Volume(ctx, "vm1") },
			want:    vol,
			wantReq: request{Method: "GET", Path: "/v1/volumes/vm1"},
		},
		{
			name: "volume name escaped", status: 200, body: string(volJSON),
			call:    func(ctx context.Context, c *client.Client) (any, error) { return c.Volume(ctx, "a/b c") },
			want:    vol,
			wantReq: request{Method: "GET", Path: "/v1/volumes/a%2Fb%20c"},
		},
		{
			name: "create", status: 201, body: string(volJSON),
			call: func(ctx context.Context, c *client.Client) (any, error) {
				return c.CreateVolume(ctx, admin.CreateVolume{Name: "vm1", Size: 1 << 30, Replicas: 3})
			},
			want:     vol,
			wantReq:  request{Method: "POST", Path: "/v1/volumes", ContentType: "application/json"},
			wantBody: map[string]any{"name": "vm1", "size": float64(1 << 30), "replicas": float64(3)},
		},
		{
			name: "create default replicas", status: 201, body: string(volJSON),
			call: func(ctx context.Context, c *client.Client) (any, error) {
				return c.CreateVolume(ctx, admin.CreateVolume{Name: "vm1", Size: 4096})
			},
			want:     vol,
			wantReq:  request{Method: "POST", Path: "/v1/volumes", ContentType: "application/json"},
			wantBody: map[string]any{"name": "vm1", "size": float64(4096)},
		},
		{
			name: "resize", status: 200, body: string(volJSON),
			call:     func(ctx context.Context, c *client.Client) (any, error) { return c.ResizeVolume(ctx, "vm1", 2<<30) },
			want:     vol,
			wantReq:  request{Method: "PATCH", Path: "/v1/volumes/vm1", ContentType: "application/json"},
			wantBody: map[string]any{"size": float64(2 << 30)},
		},
		{
			name: "delete", status: 200, body: `{"deleted":"vm1"}`,
			call: func(ctx context.Context, c *client.Client) (any, error) {
				return nil, c.DeleteVolume(ctx, "vm1", false)
			},
			wantReq: request{Method: "DELETE", Path: "/v1/volumes/vm1"},
		},
		{
			name: "delete forced", status: 200, body: `{"deleted":"vm1"}`,
			call:    func(ctx context.Context, c *client.Client) (any, error) { return nil, c.DeleteVolume(ctx, "vm1", true) },
			wantReq: request{Method: "DELETE", Path: "/v1/volumes/vm1", RawQuery: "force=true"},
		},
		{
			name: "vms", status: 200, body: "[" + string(vmJSON) + "]",
			call:    func(ctx context.Context, c *client.Client) (any, error) { return c.VMs(ctx) },
			want:    []admin.VM{vm},
			wantReq: request{Method: "GET", Path: "/v1/vms"},
		},
		{
			name: "vm", status: 200, body: string(vmJSON),
			call:    func(ctx context.Context, c *client.Client) (any, error) { return c.VM(ctx, "web") },
			want:    vm,
			wantReq: request{Method: "GET", Path: "/v1/vms/web"},
		},
		{
			name: "create vm", status: 201, body: string(vmJSON),
			call: func(ctx context.Context, c *client.Client) (any, error) {
				return c.CreateVM(ctx, admin.CreateVM{Name: "web", VCPUs: 2, Memory: 512 << 20, Disks: []string{"vm1"},
					Boot: admin.Boot{Kind: admin.BootKernel, Kernel: "/boot/vmlinuz", Cmdline: "console=ttyS0"}})
			},
			want:    vm,
			wantReq: request{Method: "POST", Path: "/v1/vms", ContentType: "application/json"},
			wantBody: map[string]any{"name": "web", "vcpus": float64(2), "memory": float64(512 << 20), "disks": []any{"vm1"},
				"boot": map[string]any{"kind": "kernel", "kernel": "/boot/vmlinuz", "cmdline": "console=ttyS0"}},
		},
		{
			name: "create vm with defaults", status: 201, body: string(vmJSON),
			call: func(ctx context.Context, c *client.Client) (any, error) {
				return c.CreateVM(ctx, admin.CreateVM{Name: "web", Disks: []string{"vm1"}})
			},
			want:     vm,
			wantReq:  request{Method: "POST", Path: "/v1/vms", ContentType: "application/json"},
			wantBody: map[string]any{"name": "web", "disks": []any{"vm1"}},
		},
		{
			name: "start vm", status: 200, body: string(vmJSON),
			call:    func(ctx context.Context, c *client.Client) (any, error) { return c.StartVM(ctx, "web", "") },
			want:    vm,
			wantReq: request{Method: "POST", Path: "/v1/vms/web/start"},
		},
		{
			name: "start vm on a host", status: 200, body: string(vmJSON),
			call:     func(ctx context.Context, c *client.Client) (any, error) { return c.StartVM(ctx, "web", "n2") },
			want:     vm,
			wantReq:  request{Method: "POST", Path: "/v1/vms/web/start", ContentType: "application/json"},
			wantBody: map[string]any{"host": "n2"},
		},
		{
			name: "stop vm", status: 200, body: string(vmJSON),
			call:    func(ctx context.Context, c *client.Client) (any, error) { return c.StopVM(ctx, "web") },
			want:    vm,
			wantReq: request{Method: "POST", Path: "/v1/vms/web/stop"},
		},
		{
			name: "delete vm", status: 200, body: `{"deleted":"web"}`,
			call:    func(ctx context.Context, c *client.Client) (any, error) { return nil, c.DeleteVM(ctx, "web") },
			wantReq: request{Method: "DELETE", Path: "/v1/vms/web"},
		},
		{
			name: "vm name escaped", status: 200, body: string(vmJSON),
			call:    func(ctx context.Context, c *client.Client) (any, error) { return c.StopVM(ctx, "a/b") },
			want:    vm,
			wantReq: request{Method: "POST", Path: "/v1/vms/a%2Fb/stop"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, got := fake(t, tt.status, tt.body)
			c, err := client.New(srv.URL, "s3cret")
			if err != nil {
				t.Fatal(err)
			}
			res, err := tt.call(context.Background(), c)
			if err != nil {
				t.Fatalf("error: %v", err)
			}
			if tt.want != nil && !reflect.DeepEqual(res, tt.want) {
				t.Errorf("result:\n got %+v\nwant %+v", res, tt.want)
			}
			if len(*got) != 1 {
				t.Fatalf("server saw %d requests, want 1", len(*got))
			}
			r := (*got)[0]
			body := r.Body
			r.Body = ""
			want := tt.wantReq
			want.Auth = "Bearer s3cret"
			if r != want {
				t.Errorf("request:\n got %+v\nwant %+v", r, want)
			}
			if tt.wantBody == nil {
				if body != "" {
					t.Errorf("request body %q, want none", body)
				}
				return
			}
			var b any
			if err := json.Unmarshal([]byte(body), &b); err != nil {
				t.Fatalf("request body %q: %v", body, err)
			}
			if !reflect.DeepEqual(b, tt.wantBody) {
				t.Errorf("request body %v, want %v", b, tt.wantBody)
			}
		})
	}
}

func TestNoTokenNoHeader(t *testing.T) {
	srv, got := fake(t, 200, `[]`)
	c, err := client.New(srv.URL, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Volumes(context.Background()); err != nil {
		t.Fatal(err)
	}
	if a := (*got)[0].Auth; a != "" {
		t.Errorf("Authorization %q sent without a token", a)
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name    string
		status  int
		body    string
		call    func(context.Context, *client.Client) error
		wantMsg string // the whole error text
		wantErr client.Error
	}{
		{
			name: "401", status: 401, body: `{"error": "missing or wrong admin token"}`,
			call: func(ctx context.Context, c *client.Client) error {
				_, err := c.CreateVolume(ctx, admin.CreateVolume{Name: "x", Size: 1 << 30})
				return err
			},
			wantMsg: `create volume "x": 401 Unauthorized: missing or wrong admin token`,
			wantErr: client.Error{Status: 401, Message: "missing or wrong admin token"},
		},
		{
			name: "404", status: 404, body: `{"error": "no volume named \"x\""}`,
			call: func(ctx context.Context, c *client.Client) error {
				_, err := c.Volume(ctx, "x")
				return err
			},
			wantMsg: `volume "x": 404 Not Found: no volume named "x"`,
			wantErr: client.Error{Status: 404, Message: `no volume named "x"`},
		},
		{
			name: "409", status: 409, body: `{"error": "volume \"x\" already exists"}`,
			call: func(ctx context.Context, c *client.Client) error {
				_, err := c.CreateVolume(ctx, admin.CreateVolume{Name: "x", Size: 1 << 30})
				return err
			},
			wantMsg: `create volume "x": 409 Conflict: volume "x" already exists`,
			wantErr: client.Error{Status: 409, Message: `volume "x" already exists`},
		},
		{
			name: "409 attached", status: 409, body: `{"error": "volume \"x\" is attached"}`,
			call:    func(ctx context.Context, c *client.Client) error { return c.DeleteVolume(ctx, "x", false) },
			wantMsg: `delete volume "x": 409 Conflict: volume "x" is attached`,
			wantErr: client.Error{Status: 409, Message: `volume "x" is attached`},
		},
		{
			name: "409 running", status: 409, body: `{"error": "VM \"web\": running on n2 (stop it first)"}`,
			call:    func(ctx context.Context, c *client.Client) error { return c.DeleteVM(ctx, "web") },
			wantMsg: `delete VM "web": 409 Conflict: VM "web": running on n2 (stop it first)`,
			wantErr: client.Error{Status: 409, Message: `VM "web": running on n2 (stop it first)`},
		},
		{
			name: "404 vm", status: 404, body: `{"error": "no VM named \"x\""}`,
			call: func(ctx context.Context, c *client.Client) error {
				_, err := c.StartVM(ctx, "x", "n1")
				return err
			},
			wantMsg: `start VM "x": 404 Not Found: no VM named "x"`,
			wantErr: client.Error{Status: 404, Message: `no VM named "x"`},
		},
		{
			name: "400 shrink", status: 400, body: `{"error": "cannot shrink"}`,
			call: func(ctx context.Context, c *client.Client) error {
				_, err := c.ResizeVolume(ctx, "x", 1)
				return err
			},
			wantMsg: `resize volume "x": 400 Bad Request: cannot shrink`,
			wantErr: client.Error{Status: 400, Message: "cannot shrink"},
		},
		{
			name: "503", status: 503, body: `{"error": "no control leader"}`,
			call: func(ctx context.Context, c *client.Client) error {
				_, err := c.Cluster(ctx)
				return err
			},
			wantMsg: `cluster status: 503 Service Unavailable: no control leader`,
			wantErr: client.Error{Status: 503, Message: "no control leader"},
		},
		{
			name: "non-JSON body", status: 502, body: "<html>\n<body>Bad Gateway</body>\n</html>\n",
			call: func(ctx context.Context, c *client.Client) error {
				_, err := c.Hosts(ctx)
				return err
			},
			wantMsg: `list hosts: 502 Bad Gateway: <html> <body>Bad Gateway</body> </html>`,
			wantErr: client.Error{Status: 502, Message: "<html> <body>Bad Gateway</body> </html>"},
		},
		{
			name: "empty body", status: 500, body: "",
			call: func(ctx context.Context, c *client.Client) error {
				_, err := c.Volumes(ctx)
				return err
			},
			wantMsg: `list volumes: 500 Internal Server Error: Internal Server Error`,
			wantErr: client.Error{Status: 500, Message: "Internal Server Error"},
		},
		{
			name: "JSON without error field", status: 500, body: `{"status": "broken"}`,
			call: func(ctx context.Context, c *client.Client) error {
				_, err := c.Volumes(ctx)
				return err
			},
			wantMsg: `list volumes: 500 Internal Server Error: {"status": "broken"}`,
			wantErr: client.Error{Status: 500, Message: `{"status": "broken"}`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := fake(t, tt.status, tt.body)
			c, err := client.New(srv.URL, "tok")
			if err != nil {
				t.Fatal(err)
			}
			err = tt.call(context.Background(), c)
			if err == nil {
				t.Fatal("no error")
			}
			if err.Error() != tt.wantMsg {
				t.Errorf("error:\n got %s\nwant %s", err, tt.wantMsg)
			}
			var e *client.Error
			if !errors.As(err, &e) {
				t.Fatalf("%v is not a *client.Error", err)
			}
			if *e != tt.wantErr {
				t.Errorf("*Error %+v, want %+v", *e, tt.wantErr)
			}
			if s := client.StatusOf(err); s != tt.status {
				t.Errorf("StatusOf = %d, want %d", s, tt.status)
			}
		})
	}
}

func TestBadResponseBody(t *testing.T) {
	srv, _ := fake(t, 200, `{"name": 3}`)
	c, _ := client.New(srv.URL, "")
	_, err := c.Volume(context.Background(), "x")
	if err == nil || !strings.Contains(err.Error(), "bad response") {
		t.Fatalf("error %v, want a bad response", err)
	}
	if client.StatusOf(err) != 0 {
		t.Errorf("a decoding error is an *Error")
	}
}

func TestUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	c, err := client.New(addr, "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Volumes(context.Background())
	if !errors.Is(err, client.ErrUnreachable) {
		t.Fatalf("error %v, want ErrUnreachable", err)
	}
	for _, want := range []string{"list volumes: cannot reach the admin API at " + addr + ": ", "refused", "(is the agent running? --admin / TANDEM_ADMIN)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
}

func TestTimeout(t *testing.T) {
	stop := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(stop) })

	t.Run("context", func(t *testing.T) {
		c, _ := client.New(srv.URL, "")
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_, err := c.Cluster(ctx)
		if !errors.Is(err, client.ErrTimeout) {
			t.Fatalf("error %v, want ErrTimeout", err)
		}
	})
	t.Run("client timeout", func(t *testing.T) {
		c, _ := client.New(srv.URL, "", client.WithTimeout(50*time.Millisecond))
		_, err := c.Cluster(context.Background())
		if !errors.Is(err, client.ErrTimeout) {
			t.Fatalf("error %v, want ErrTimeout", err)
		}
	})
	t.Run("canceled", func(t *testing.T) {
		c, _ := client.New(srv.URL, "")
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(20*time.Millisecond, cancel)
		_, err := c.Cluster(ctx)
		if !errors.Is(err, context.Canceled) || errors.Is(err, client.ErrUnreachable) {
			t.Fatalf("error %v, want context.Canceled", err)
		}
	})
}

func TestNewAddr(t *testing.T) {
	tests := []struct {
		addr, want, wantErr string
	}{
		{addr: "127.0.0.1:7480", want: "http://127.0.0.1:7480"},
		{addr: "localhost:7480", want: "http://localhost:7480"},
		{addr: "[::1]:7480", want: "http://[::1]:7480"},
		{addr: "http://10.0.0.1:7480", want: "http://10.0.0.1:7480"},
		{addr: "http://10.0.0.1:7480/", want: "http://10.0.0.1:7480"},
		{addr: "https://admin.example:443/tandem/", want: "https://admin.example:443/tandem"},
		{addr: "", wantErr: "no admin API address"},
		{addr: "ftp://x:1", wantErr: "want host:port"},
		{addr: "http://", wantErr: "want host:port"},
		{addr: "http://x:1/?a=b", wantErr: "want host:port"},
	}
	for _, tt := range tests {
		c, err := client.New(tt.addr, "")
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("New(%q): error %v, want %q", tt.addr, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("New(%q): %v", tt.addr, err)
			continue
		}
		if got := c.Addr(); got != tt.want {
			t.Errorf("New(%q).Addr() = %q, want %q", tt.addr, got, tt.want)
		}
	}
	if _, err := client.New("x:1", "a b"); err == nil {
		t.Error("New accepted a token with a space")
	}
}

func TestPathPrefix(t *testing.T) {
	srv, got := fake(t, 200, `[]`)
	c, err := client.New(srv.URL+"/tandem/", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Volumes(context.Background()); err != nil {
		t.Fatal(err)
	}
	if p := (*got)[0].Path; p != "/tandem/v1/volumes" {
		t.Errorf("path %q, want /tandem/v1/volumes", p)
	}
}

func TestEmptyName(t *testing.T) {
	srv, got := fake(t, 200, `{}`)
	c, _ := client.New(srv.URL, "")
	if _, err := c.Volume(context.Background(), ""); err == nil {
		t.Error("Volume(\"\") did not fail")
	}
	if err := c.DeleteVolume(context.Background(), "", true); err == nil {
		t.Error("DeleteVolume(\"\") did not fail")
	}
	if _, err := c.StartVM(context.Background(), "", ""); err == nil {
		t.Error("StartVM(\"\") did not fail")
	}
	if _, err := c.VM(context.Background(), ""); err == nil {
		t.Error("VM(\"\") did not fail")
	}
	if len(*got) != 0 {
		t.Errorf("server saw %d requests, want 0", len(*got))
	}
}

// A 503 with Retry-After (the cluster did not carry the request out) is
// sent again, body included; one without it, and other errors, are not.
func TestRetryNotCarriedOut(t *testing.T) {
	tests := []struct {
		name       string
		fails      int  // 503s before the answer
		retryAfter bool // the 503s carry Retry-After
		wantReqs   int
		wantErr    bool
	}{
		{"retried until it passes", 2, true, 3, false},
		{"no Retry-After: not retried", 1, false, 1, true},
		{"gives up after 5 attempts", 9, true, 5, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var reqs int
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				reqs++
				b, _ := io.ReadAll(r.Body)
				if !strings.Contains(string(b), `"name":"v1"`) {
					t.Errorf("request %d: body %q", reqs, b)
				}
				if reqs <= tt.fails {
					if tt.retryAfter {
						w.Header().Set("Retry-After", "1")
					}
					w.WriteHeader(http.StatusServiceUnavailable)
					io.WriteString(w, `{"error":"the control leader moved while forwarding the request; retry"}`)
					return
				}
				w.WriteHeader(http.StatusCreated)
				io.WriteString(w, `{"name":"v1","size":1048576}`)
			}))
			defer srv.Close()
			c, err := client.New(srv.URL, "t")
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.CreateVolume(context.Background(), admin.CreateVolume{Name: "v1", Size: 1 << 20})
			if (err != nil) != tt.wantErr || reqs != tt.wantReqs {
				t.Fatalf("error %v after %d requests, want error %v after %d", err, reqs, tt.wantErr, tt.wantReqs)
			}
		})
	}
}
