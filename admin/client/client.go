// Package client is a Go client of the cluster admin API (/v1/) that every
// Tandem agent serves, as the tandem CLI uses it.
//
// A caller:
//
//  1. builds a Client with New from the agent's admin address (host:port or
//     an http:// or https:// URL) and the admin token ("" if it only reads);
//  2. calls its methods with a context that bounds each request (the
//     Client's own timeout, 30s by default, bounds them too);
//  3. inspects failures: a response with an error status is an *Error
//     carrying the status and the server's message (errors.As), an agent
//     that cannot be reached is ErrUnreachable and one that does not answer
//     in time ErrTimeout (errors.Is).
//
// The request and response bodies are the types of package admin, and
// docs/admin-api.yaml describes the API as OpenAPI. A Client is safe for
// concurrent use.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/tandem-project/tandem/admin"
)

// DefaultTimeout bounds each request of a Client built without WithTimeout
// or WithHTTPClient.
const DefaultTimeout = 30 * time.Second

// maxBody bounds the response bodies the client reads.
const maxBody = 32 << 20

var (
	// ErrUnreachable is wrapped by the errors of requests that did not reach
	// the agent: refused connection, unknown host, broken connection.
	ErrUnreachable = errors.New("cannot reach the admin API")
	// ErrTimeout is wrapped by the errors of requests the agent did not
	// answer within the context's deadline or the client's timeout.
	ErrTimeout = errors.New("no answer in time from the admin API")
)

// Error is an error response of the admin API: its HTTP status and the
// message of its {"error": "..."} body (the body's text, or the status text
// when the body is not that JSON).
type Error struct {
	Status  int
	Message string
}

// Error returns "STATUS TEXT: MESSAGE", e.g. `409 Conflict: volume "x"
// already exists`.
func (e *Error) Error() string {
	return fmt.Sprintf("%d %s: %s", e.Status, http.StatusText(e.Status), e.Message)
}

// StatusOf returns the HTTP status of err's *Error, or 0 when err does not
// wrap one.
func StatusOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

// Client talks to one agent's admin API.
type Client struct {
	base  *url.URL // scheme://host[:port][/prefix], without trailing slash
	addr  string   // as given to New, for messages
	token string
	hc    *http.Client
	ua    string
}

// Option configures a Client.
type Option func(*Client)

// WithTimeout sets the http.Client timeout that bounds each request
// (default DefaultTimeout; 0: only the context bounds them).
func WithTimeout(d time.Duration) Option {
	return func(c *Client) { c.hc.Timeout = d }
}

// WithHTTPClient makes the Client send its requests with hc (e.g. one with
// a TLS configuration). Options after it may change hc's Timeout.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) { c.hc = hc }
}

// WithUserAgent sets the User-Agent header of the requests.
func WithUserAgent(ua string) Option {
	return func(c *Client) { c.ua = ua }
}

// New returns a client of the admin API at addr, "host:port" (plain HTTP)
// or a full "http://host:port" or "https://host:port" URL, optionally with
// a path prefix. token is sent as "Authorization: Bearer TOKEN" on every
// request when not empty; the API requires it on the requests that change
// state.
func New(addr, token string, opts ...Option) (*Client, error) {
	base, err := parseAddr(addr)
	if err != nil {
		return nil, err
	}
	if strings.ContainsAny(token, " \t\r\n") {
		return nil, errors.New("admin token contains white space")
	}
	c := &Client{
		base:  base,
		addr:  addr,
		token: token,
		hc:    &http.Client{Timeout: DefaultTimeout},
		ua:    "tandem-admin-client",
	}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

func parseAddr(addr string) (*url.URL, error) {
	addr = strings.TrimSpace(addr)
	if addr == "" {
		return nil, errors.New("no admin API address: want host:port or http://host:port")
	}
	raw := addr
	if !strings.Contains(addr, "://") {
		raw = "http://" + addr
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("admin API address %q: %w", addr, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("admin API address %q: want host:port or an http:// or https:// URL", addr)
	}
	if u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("admin API address %q: want host:port or an http:// or https:// URL", addr)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	return u, nil
}

// Addr returns the base URL the client sends its requests to.
func (c *Client) Addr() string { return c.base.String() }

// Cluster returns the cluster's status (GET /v1/cluster).
func (c *Client) Cluster(ctx context.Context) (admin.ClusterStatus, error) {
	var out admin.ClusterStatus
	if err := c.do(ctx, http.MethodGet, "/v1/cluster", nil, nil, &out); err != nil {
		return admin.ClusterStatus{}, fmt.Errorf("cluster status: %w", err)
	}
	return out, nil
}

// Hosts lists the cluster's hosts (GET /v1/hosts).
func (c *Client) Hosts(ctx context.Context) ([]admin.Host, error) {
	var out []admin.Host
	if err := c.do(ctx, http.MethodGet, "/v1/hosts", nil, nil, &out); err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	return out, nil
}

// Volumes lists the cluster's volumes (GET /v1/volumes).
func (c *Client) Volumes(ctx context.Context) ([]admin.Volume, error) {
	var out []admin.Volume
	if err := c.do(ctx, http.MethodGet, "/v1/volumes", nil, nil, &out); err != nil {
		return nil, fmt.Errorf("list volumes: %w", err)
	}
	return out, nil
}

// Volume returns one volume (GET /v1/volumes/{name}); an unknown volume is
// an *Error with status 404.
func (c *Client) Volume(ctx context.Context, name string) (admin.Volume, error) {
	var out admin.Volume
	if err := c.do(ctx, http.MethodGet, volumePath(name), nil, nil, &out); err != nil {
		return admin.Volume{}, fmt.Errorf("volume %q: %w", name, err)
	}
	return out, nil
}

// CreateVolume creates a volume (POST /v1/volumes) and returns it. The API
// answers 400 to a bad name, size or replica count and 409 when the volume
// exists or the cluster has too few hosts for its replicas.
func (c *Client) CreateVolume(ctx context.Context, req admin.CreateVolume) (admin.Volume, error) {
	var out admin.Volume
	if err := c.do(ctx, http.MethodPost, "/v1/volumes", nil, req, &out); err != nil {
		return admin.Volume{}, fmt.Errorf("create volume %q: %w", req.Name, err)
	}
	return out, nil
}

// ResizeVolume grows a volume to size bytes (PATCH /v1/volumes/{name}) and
// returns it. The API answers 400 to a smaller size and 404 to an unknown
// volume.
func (c *Client) ResizeVolume(ctx context.Context, name string, size int64) (admin.Volume, error) {
	var out admin.Volume
	if err := c.do(ctx, http.MethodPatch, volumePath(name), nil, admin.ResizeVolume{Size: admin.Size(size)}, &out); err != nil {
		return admin.Volume{}, fmt.Errorf("resize volume %q: %w", name, err)
	}
	return out, nil
}

// DeleteVolume deletes a volume (DELETE /v1/volumes/{name}). Without force
// the API refuses (409) to delete a volume that has NBD clients attached.
func (c *Client) DeleteVolume(ctx context.Context, name string, force bool) error {
	var q url.Values
	if force {
		q = url.Values{"force": {"true"}}
	}
	var out struct {
		Deleted string `json:"deleted"`
	}
	if err := c.do(ctx, http.MethodDelete, volumePath(name), q, nil, &out); err != nil {
		return fmt.Errorf("delete volume %q: %w", name, err)
	}
	return nil
}

// volumePath returns the (escaped) path of a volume.
func volumePath(name string) string { return "/v1/volumes/" + url.PathEscape(name) }

// VMs lists the cluster's VMs (GET /v1/vms).
func (c *Client) VMs(ctx context.Context) ([]admin.VM, error) {
	var out []admin.VM
	if err := c.do(ctx, http.MethodGet, "/v1/vms", nil, nil, &out); err != nil {
		return nil, fmt.Errorf("list VMs: %w", err)
	}
	return out, nil
}

// VM returns one VM (GET /v1/vms/{name}); an unknown VM is an *Error with
// status 404.
func (c *Client) VM(ctx context.Context, name string) (admin.VM, error) {
	var out admin.VM
	if err := c.do(ctx, http.MethodGet, vmPath(name, ""), nil, nil, &out); err != nil {
		return admin.VM{}, fmt.Errorf("VM %q: %w", name, err)
	}
	return out, nil
}

// CreateVM creates a stopped VM (POST /v1/vms) and returns it. The API
// answers 400 to a bad name, shape, boot or disk list (a disk that is not
// a volume) and 409 when the VM exists or a disk belongs to another VM.
func (c *Client) CreateVM(ctx context.Context, req admin.CreateVM) (admin.VM, error) {
	var out admin.VM
	if err := c.do(ctx, http.MethodPost, "/v1/vms", nil, req, &out); err != nil {
		return admin.VM{}, fmt.Errorf("create VM %q: %w", req.Name, err)
	}
	return out, nil
}

// StartVM starts a VM (POST /v1/vms/{name}/start) on host ("": the API's
// default host) and returns it. The API answers 400 to a host the cluster
// does not have, 404 to an unknown VM and 409 when the VM runs already or
// the host is not alive.
func (c *Client) StartVM(ctx context.Context, name, host string) (admin.VM, error) {
	var in any
	if host != "" {
		in = admin.StartVM{Host: host}
	}
	var out admin.VM
	if err := c.do(ctx, http.MethodPost, vmPath(name, "/start"), nil, in, &out); err != nil {
		return admin.VM{}, fmt.Errorf("start VM %q: %w", name, err)
	}
	return out, nil
}

// StopVM stops a VM (POST /v1/vms/{name}/stop) and returns it. The API
// answers 404 to an unknown VM and 409 to a stopped one.
func (c *Client) StopVM(ctx context.Context, name string) (admin.VM, error) {
	var out admin.VM
	if err := c.do(ctx, http.MethodPost, vmPath(name, "/stop"), nil, nil, &out); err != nil {
		return admin.VM{}, fmt.Errorf("stop VM %q: %w", name, err)
	}
	return out, nil
}

// DeleteVM deletes a stopped VM (DELETE /v1/vms/{name}); its disks stay.
// The API answers 404 to an unknown VM and 409 to a running one.
func (c *Client) DeleteVM(ctx context.Context, name string) error {
	var out struct {
		Deleted string `json:"deleted"`
	}
	if err := c.do(ctx, http.MethodDelete, vmPath(name, ""), nil, nil, &out); err != nil {
		return fmt.Errorf("delete VM %q: %w", name, err)
	}
	return nil
}

// MigrateVM starts a live migration of a running VM to host req.To (POST
// /v1/vms/{name}/migrate) and returns the VM with its migration recorded;
// follow it with VM. The API answers 400 to an unknown host, 404 to an
// unknown VM and 409 when the VM is not running, migrates already, or a
// host is not alive.
func (c *Client) MigrateVM(ctx context.Context, name string, req admin.MigrateVM) (admin.VM, error) {
	var out admin.VM
	if err := c.do(ctx, http.MethodPost, vmPath(name, "/migrate"), nil, req, &out); err != nil {
		return admin.VM{}, fmt.Errorf("migrate VM %q: %w", name, err)
	}
	return out, nil
}

// CancelMigration cancels a VM's live migration before its switchover
// (POST /v1/vms/{name}/migrate/cancel). The API answers 409 when the VM
// is not migrating or the switchover happened.
func (c *Client) CancelMigration(ctx context.Context, name string) (admin.VM, error) {
	var out admin.VM
	if err := c.do(ctx, http.MethodPost, vmPath(name, "/migrate/cancel"), nil, nil, &out); err != nil {
		return admin.VM{}, fmt.Errorf("cancel the migration of VM %q: %w", name, err)
	}
	return out, nil
}

// MoveDisk starts a move of disk n (its index, from 0) of a running VM
// to req.To (POST /v1/vms/{name}/disks/{n}/move) and returns the VM with
// the move recorded; follow it with VM. The API answers 400 to a bad
// target, 404 to an unknown VM or target volume and 409 when the VM is
// not running, migrates or moves a disk already, or the target volume is
// another VM's disk.
func (c *Client) MoveDisk(ctx context.Context, name string, n int, req admin.MoveDisk) (admin.VM, error) {
	var out admin.VM
	if err := c.do(ctx, http.MethodPost, vmPath(name, fmt.Sprintf("/disks/%d/move", n)), nil, req, &out); err != nil {
		return admin.VM{}, fmt.Errorf("move disk %d of VM %q: %w", n, name, err)
	}
	return out, nil
}

// CancelDiskMove cancels the move of disk n of a VM before its pivot
// (POST /v1/vms/{name}/disks/{n}/move/cancel). The API answers 409 when
// the disk is not moving or the move is pivoting.
func (c *Client) CancelDiskMove(ctx context.Context, name string, n int) (admin.VM, error) {
	var out admin.VM
	if err := c.do(ctx, http.MethodPost, vmPath(name, fmt.Sprintf("/disks/%d/move/cancel", n)), nil, nil, &out); err != nil {
		return admin.VM{}, fmt.Errorf("cancel the move of disk %d of VM %q: %w", n, name, err)
	}
	return out, nil
}

// MigrationStep records a step of a live migration in the catalog (POST
// /v1/internal/migration, an agent's request) and returns its index.
func (c *Client) MigrationStep(ctx context.Context, step admin.MigrationStep) (uint64, error) {
	var out admin.Committed
	if err := c.do(ctx, http.MethodPost, "/v1/internal/migration", nil, step, &out); err != nil {
		return 0, fmt.Errorf("%s of VM %q: %w", step.Kind, step.VM, err)
	}
	return out.Index, nil
}

// Fence asks the agent that leads volume name to fence it (POST
// /v1/local/volumes/{name}/fence); other agents answer 409.
func (c *Client) Fence(ctx context.Context, name string, req admin.Fence) error {
	if err := c.do(ctx, http.MethodPost, "/v1/local/volumes/"+url.PathEscape(name)+"/fence", nil, req, &admin.Fence{}); err != nil {
		return fmt.Errorf("fence volume %q: %w", name, err)
	}
	return nil
}

// DrainHost drains host name (POST /v1/hosts/{name}/drain), or undrains
// it, and returns it: a drained host takes no new replicas and the
// control leader moves those it holds to other hosts.
func (c *Client) DrainHost(ctx context.Context, name string, drained bool) (admin.Host, error) {
	op := "/undrain"
	if drained {
		op = "/drain"
	}
	var out admin.Host
	if err := c.do(ctx, http.MethodPost, "/v1/hosts/"+url.PathEscape(name)+op, nil, nil, &out); err != nil {
		return admin.Host{}, fmt.Errorf("%s host %q: %w", op[1:], name, err)
	}
	return out, nil
}

// vmPath returns the (escaped) path of a VM, followed by suffix.
func vmPath(name, suffix string) string { return "/v1/vms/" + url.PathEscape(name) + suffix }

// do sends one request for path (escaped) and query q, with body in (nil:
// none) encoded as JSON, and decodes a 2xx response into out.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	if strings.HasSuffix(path, "/") || strings.Contains(path, "//") {
		return errors.New("empty name")
	}
	u, err := url.Parse(c.base.String() + path)
	if err != nil {
		return err
	}
	u.RawQuery = q.Encode()
	var reqBody []byte
	if in != nil {
		if reqBody, err = json.Marshal(in); err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
	}
	// A 503 with Retry-After is a request the cluster did not carry out
	// at all (no control leader, or it moved while the request was
	// forwarded): it is sent again, a few times.
	for attempt := 1; ; attempt++ {
		retry, err := c.send(ctx, method, u.String(), path, in != nil, reqBody, out)
		if attempt >= retries || !retry {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(attempt) * 250 * time.Millisecond):
		}
	}
}

// retries bounds the attempts of a request the cluster did not carry out.
const retries = 5

// send sends one request and decodes the response into out; retry reports
// a 503 with Retry-After (the request was not carried out).
func (c *Client) send(ctx context.Context, method, u, path string, hasBody bool, reqBody []byte, out any) (retry bool, err error) {
	var body io.Reader
	if hasBody {
		body = bytes.NewReader(reqBody)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return false, err
	}
	req.Header.Set("Accept", "application/json")
	if hasBody {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set(admin.TokenHeader, "Bearer "+c.token)
	}
	if c.ua != "" {
		req.Header.Set("User-Agent", c.ua)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return false, c.transportError(ctx, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return false, c.transportError(ctx, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "", responseError(resp.StatusCode, b)
	}
	if out == nil {
		return false, nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return false, fmt.Errorf("%s %s: bad response from %s (status %d): %w", method, path, c.addr, resp.StatusCode, err)
	}
	return false, nil
}

// transportError classifies an error of sending a request or reading its
// response.
func (c *Client) transportError(ctx context.Context, err error) error {
	cause := err
	var ue *url.Error
	if errors.As(err, &ue) {
		cause = ue.Err // without the method and URL, which the caller names
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		return ctx.Err()
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return fmt.Errorf("%w at %s: %v", ErrTimeout, c.addr, cause)
	}
	return fmt.Errorf("%w at %s: %v (is the agent running? --admin / TANDEM_ADMIN)", ErrUnreachable, c.addr, cause)
}

// responseError builds the *Error of an error response with body b.
func responseError(status int, b []byte) *Error {
	var e struct {
		Error *string `json:"error"`
	}
	if err := json.Unmarshal(b, &e); err == nil && e.Error != nil && *e.Error != "" {
		return &Error{Status: status, Message: *e.Error}
	}
	// Not the API's JSON (a proxy's page, a plain-text error): its first
	// 200 bytes on one line.
	msg := strings.Join(strings.Fields(strings.ToValidUTF8(string(b), "")), " ")
	if len(msg) > 200 {
		msg = strings.ToValidUTF8(msg[:200], "") + "..."
	}
	if msg == "" {
		msg = http.StatusText(status)
		if msg == "" {
			msg = "no message"
		}
	}
	return &Error{Status: status, Message: msg}
}
