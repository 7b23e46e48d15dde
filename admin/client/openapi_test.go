package client_test

import (
	"fmt"
	"os"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v2"

	"github.com/tandem-project/tandem/admin"
)

// The OpenAPI description must match the API's contract and the Go types
// of package admin, so that neither drifts silently.

const apiDocPath = "../../docs/admin-api.yaml"

type apiDoc struct {
	OpenAPI    string                `yaml:"openapi"`
	Security   []map[string][]string `yaml:"security"`
	Paths      map[string]pathItem   `yaml:"paths"`
	Components struct {
		SecuritySchemes map[string]struct {
			Type   string `yaml:"type"`
			Scheme string `yaml:"scheme"`
		} `yaml:"securitySchemes"`
		Parameters map[string]parameter `yaml:"parameters"`
		Responses  map[string]response  `yaml:"responses"`
		Schemas    map[string]*schema   `yaml:"schemas"`
	} `yaml:"components"`
}

type pathItem struct {
	Parameters []parameter `yaml:"parameters"`
	Get        *operation  `yaml:"get"`
	Put        *operation  `yaml:"put"`
	Post       *operation  `yaml:"post"`
	Patch      *operation  `yaml:"patch"`
	Delete     *operation  `yaml:"delete"`
	Head       *operation  `yaml:"head"`
	Options    *operation  `yaml:"options"`
}

func (p pathItem) ops() map[string]*operation {
	m := map[string]*operation{"GET": p.Get, "PUT": p.Put, "POST": p.Post, "PATCH": p.Patch, "DELETE": p.Delete, "HEAD": p.Head, "OPTIONS": p.Options}
	for k, v := range m {
		if v == nil {
			delete(m, k)
		}
	}
	return m
}

type operation struct {
	Security    *[]map[string][]string `yaml:"security"`
	Parameters  []parameter            `yaml:"parameters"`
	RequestBody *struct {
		Required bool                 `yaml:"required"`
		Content  map[string]mediaType `yaml:"content"`
	} `yaml:"requestBody"`
	Responses map[string]response `yaml:"responses"`
}

type parameter struct {
	Ref      string  `yaml:"$ref"`
	Name     string  `yaml:"name"`
	In       string  `yaml:"in"`
	Required bool    `yaml:"required"`
	Schema   *schema `yaml:"schema"`
}

type response struct {
	Ref     string               `yaml:"$ref"`
	Content map[string]mediaType `yaml:"content"`
}

type mediaType struct {
	Schema *schema `yaml:"schema"`
}

type schema struct {
	Ref        string             `yaml:"$ref"`
	Type       string             `yaml:"type"`
	Format     string             `yaml:"format"`
	Items      *schema            `yaml:"items"`
	Properties map[string]*schema `yaml:"properties"`
	Required   []string           `yaml:"required"`
	OneOf      []*schema          `yaml:"oneOf"`
}

// describe renders a schema as "Name" for a reference, "[]X" for an
// array, else its type.
func (s *schema) describe() string {
	switch {
	case s == nil:
		return "<none>"
	case s.Ref != "":
		return strings.TrimPrefix(s.Ref, "#/components/schemas/")
	case s.Type == "array":
		return "[]" + s.Items.describe()
	}
	return s.Type
}

func loadAPIDoc(t *testing.T) *apiDoc {
	t.Helper()
	b, err := os.ReadFile(apiDocPath)
	if err != nil {
		t.Fatal(err)
	}
	var doc apiDoc
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %v", apiDocPath, err)
	}
	return &doc
}

// contract is the admin API as the server and the client agree on it.
var contract = []struct {
	method, path string
	secured      bool
	request      string         // request body schema, "" for none
	optional     bool           // the request body may be absent
	ok           string         // success status
	body         string         // success body schema
	errors       []string       // error statuses, each with an Error body
	query        map[string]int // query parameters, with nothing else
}{
	{method: "GET", path: "/v1/cluster", ok: "200", body: "ClusterStatus", errors: []string{"503"}},
	{method: "GET", path: "/v1/hosts", ok: "200", body: "[]Host", errors: []string{"503"}},
	{method: "POST", path: "/v1/hosts/{name}/drain", secured: true, ok: "200", body: "Host", errors: []string{"401", "404", "503"}},
	{method: "POST", path: "/v1/hosts/{name}/undrain", secured: true, ok: "200", body: "Host", errors: []string{"401", "404", "503"}},
	{method: "GET", path: "/v1/volumes", ok: "200", body: "[]Volume", errors: []string{"503"}},
	{method: "GET", path: "/v1/volumes/{name}", ok: "200", body: "Volume", errors: []string{"404", "503"}},
	{method: "POST", path: "/v1/volumes", secured: true, request: "CreateVolume", ok: "201", body: "Volume", errors: []string{"400", "401", "409", "503"}},
	{method: "PATCH", path: "/v1/volumes/{name}", secured: true, request: "ResizeVolume", ok: "200", body: "Volume", errors: []string{"400", "401", "404", "503"}},
	{method: "DELETE", path: "/v1/volumes/{name}", secured: true, ok: "200", body: "Deleted", errors: []string{"400", "401", "404", "409", "503"}, query: map[string]int{"force": 1}},
	{method: "GET", path: "/v1/vms", ok: "200", body: "[]VM", errors: []string{"503"}},
	{method: "POST", path: "/v1/vms", secured: true, request: "CreateVM", ok: "201", body: "VM", errors: []string{"400", "401", "409", "503"}},
	{method: "GET", path: "/v1/vms/{name}", ok: "200", body: "VM", errors: []string{"404", "503"}},
	{method: "DELETE", path: "/v1/vms/{name}", secured: true, ok: "200", body: "Deleted", errors: []string{"401", "404", "409", "503"}},
	{method: "POST", path: "/v1/vms/{name}/start", secured: true, request: "StartVM", optional: true, ok: "200", body: "VM", errors: []string{"400", "401", "404", "409", "503"}},
	{method: "POST", path: "/v1/vms/{name}/stop", secured: true, ok: "200", body: "VM", errors: []string{"401", "404", "409", "503"}},
	{method: "POST", path: "/v1/vms/{name}/migrate", secured: true, request: "MigrateVM", ok: "202", body: "VM", errors: []string{"400", "401", "404", "409", "503"}},
	{method: "POST", path: "/v1/vms/{name}/migrate/cancel", secured: true, ok: "200", body: "VM", errors: []string{"401", "404", "409", "503"}},
	{method: "POST", path: "/v1/vms/{name}/disks/{n}/move", secured: true, request: "MoveDisk", ok: "202", body: "VM", errors: []string{"400", "401", "404", "409", "503"}},
	{method: "POST", path: "/v1/vms/{name}/disks/{n}/move/cancel", secured: true, ok: "200", body: "VM", errors: []string{"401", "404", "409", "503"}},
	{method: "POST", path: "/v1/volumes/{name}/move", secured: true, request: "MoveVolume", ok: "202", body: "Volume", errors: []string{"400", "401", "404", "409", "503"}},
	{method: "POST", path: "/v1/volumes/{name}/move/cancel", secured: true, ok: "200", body: "Volume", errors: []string{"401", "404", "409", "503"}},
	{method: "POST", path: "/v1/volumes/{name}/verify/cancel", secured: true, ok: "200", body: "Volume", errors: []string{"401", "404", "409", "503"}},
	{method: "POST", path: "/v1/volumes/{name}/verify", secured: true, request: "VerifyVolume", optional: true, ok: "202", body: "Volume", errors: []string{"400", "401", "404", "409", "503"}},
	{method: "GET", path: "/healthz", ok: "200"},
	{method: "GET", path: "/readyz", ok: "200"},
	{method: "GET", path: "/metrics", ok: "200"},
}

func TestOpenAPIOperations(t *testing.T) {
	doc := loadAPIDoc(t)
	if !strings.HasPrefix(doc.OpenAPI, "3.0.") {
		t.Errorf("openapi: %q, want 3.0.x", doc.OpenAPI)
	}
	if len(doc.Security) != 0 {
		t.Errorf("global security %v: reads need no token, set it per operation", doc.Security)
	}
	var bearer []string
	for name, s := range doc.Components.SecuritySchemes {
		if s.Type == "http" && s.Scheme == "bearer" {
			bearer = append(bearer, name)
		}
	}
	if len(bearer) != 1 {
		t.Fatalf("want one bearer security scheme, have %v", bearer)
	}

	described := map[string]bool{}
	for path, item := range doc.Paths {
		for method := range item.ops() {
			described[method+" "+path] = true
		}
	}
	for _, c := range contract {
		key := c.method + " " + c.path
		delete(described, key)
		item, ok := doc.Paths[c.path]
		if !ok {
			t.Errorf("%s: path not described", key)
			continue
		}
		op := item.ops()[c.method]
		if op == nil {
			t.Errorf("%s: operation not described", key)
			continue
		}
		// Security: the token exactly on state-changing operations.
		var schemes []string
		if op.Security != nil {
			for _, req := range *op.Security {
				for name := range req {
					schemes = append(schemes, name)
				}
			}
		}
		if c.secured && !slices.Equal(schemes, bearer) {
			t.Errorf("%s: security %v, want %v", key, schemes, bearer)
		}
		if !c.secured && len(schemes) != 0 {
			t.Errorf("%s: security %v, want none", key, schemes)
		}
		// Parameters: {name} in the path, the contract's query.
		params := map[string]parameter{}
		for _, p := range append(slices.Clone(item.Parameters), op.Parameters...) {
			if p.Ref != "" {
				p = doc.Components.Parameters[strings.TrimPrefix(p.Ref, "#/components/parameters/")]
			}
			params[p.In+":"+p.Name] = p
		}
		for name := range c.query {
			if p, ok := params["query:"+name]; !ok || p.Required {
				t.Errorf("%s: no optional query parameter %q", key, name)
			}
			delete(params, "query:"+name)
		}
		if strings.Contains(c.path, "{name}") {
			if p, ok := params["path:name"]; !ok || !p.Required || p.Schema.describe() != "string" {
				t.Errorf("%s: no required string path parameter name", key)
			}
			delete(params, "path:name")
		}
		if strings.Contains(c.path, "{n}") {
			if p, ok := params["path:n"]; !ok || !p.Required || p.Schema.describe() != "integer" {
				t.Errorf("%s: no required integer path parameter n", key)
			}
			delete(params, "path:n")
		}
		for k := range params {
			t.Errorf("%s: parameter %s is not in the contract", key, k)
		}
		// Request body.
		switch {
		case c.request == "" && op.RequestBody != nil:
			t.Errorf("%s: has a request body", key)
		case c.request != "" && op.RequestBody == nil:
			t.Errorf("%s: no request body", key)
		case c.request != "":
			if op.RequestBody.Required == c.optional {
				t.Errorf("%s: request body required: %v, want %v", key, op.RequestBody.Required, !c.optional)
			}
			if got := op.RequestBody.Content["application/json"].Schema.describe(); got != c.request {
				t.Errorf("%s: request body %s, want %s", key, got, c.request)
			}
		}
		// Responses.
		statuses := append([]string{c.ok}, c.errors...)
		for code := range op.Responses {
			if !slices.Contains(statuses, code) && !(c.body == "" && code == "503") {
				t.Errorf("%s: response %s is not in the contract", key, code)
			}
		}
		resp := func(code string) (response, bool) {
			r, ok := op.Responses[code]
			if ok && r.Ref != "" {
				r, ok = doc.Components.Responses[strings.TrimPrefix(r.Ref, "#/components/responses/")]
				if !ok {
					t.Errorf("%s: response %s: dangling reference", key, code)
				}
			}
			return r, ok
		}
		r, ok := resp(c.ok)
		if !ok {
			t.Errorf("%s: no response %s", key, c.ok)
		} else if c.body != "" {
			if got := r.Content["application/json"].Schema.describe(); got != c.body {
				t.Errorf("%s: response %s body %s, want %s", key, c.ok, got, c.body)
			}
		}
		for _, code := range c.errors {
			r, ok := resp(code)
			if !ok {
				t.Errorf("%s: no response %s", key, code)
				continue
			}
			if got := r.Content["application/json"].Schema.describe(); got != "Error" {
				t.Errorf("%s: response %s body %s, want Error", key, code, got)
			}
		}
	}
	for key := range described {
		t.Errorf("%s: described but not in the contract", key)
	}
}

func TestOpenAPISchemas(t *testing.T) {
	doc := loadAPIDoc(t)
	schemas := doc.Components.Schemas
	for _, v := range []any{
		admin.ClusterStatus{}, admin.Host{}, admin.Volume{}, admin.Replica{},
		admin.CreateVolume{}, admin.ResizeVolume{},
		admin.VM{}, admin.VMDisk{}, admin.Boot{}, admin.LocalVM{}, admin.CreateVM{}, admin.StartVM{},
		admin.Migration{}, admin.MigrationResult{}, admin.MigrationProgress{}, admin.MigrateVM{},
		admin.MoveVolume{}, admin.VolumeMove{}, admin.MoveCheck{}, admin.MoveResult{},
		admin.MoveDisk{}, admin.DiskMove{}, admin.DiskMoveResult{}, admin.DiskMoveProgress{},
	} {
		typ := reflect.TypeOf(v)
		s := schemas[typ.Name()]
		if s == nil {
			t.Errorf("no schema %s", typ.Name())
			continue
		}
		if s.Type != "object" {
			t.Errorf("%s: type %q, want object", typ.Name(), s.Type)
		}
		var required []string
		props := map[string]bool{}
		for f := range typ.Fields() {
			tag := f.Tag.Get("json")
			name, opts, _ := strings.Cut(tag, ",")
			if !f.IsExported() || name == "-" {
				continue
			}
			if name == "" {
				name = f.Name
			}
			props[name] = true
			if !strings.Contains(","+opts+",", ",omitempty,") && !strings.Contains(","+opts+",", ",omitzero,") {
				required = append(required, name)
			}
			p := s.Properties[name]
			if p == nil {
				t.Errorf("%s: field %s (%q) not described", typ.Name(), f.Name, name)
				continue
			}
			if err := matchType(f.Type, p); err != nil {
				t.Errorf("%s.%s (%q): %v", typ.Name(), f.Name, name, err)
			}
		}
		for name := range s.Properties {
			if !props[name] {
				t.Errorf("%s: property %q is not a field of admin.%s", typ.Name(), name, typ.Name())
			}
		}
		sort.Strings(required)
		got := slices.Sorted(slices.Values(s.Required))
		if !slices.Equal(got, required) {
			t.Errorf("%s: required %v, want the fields without omitempty %v", typ.Name(), got, required)
		}
	}
	if e := schemas["Error"]; e == nil || e.Properties["error"].describe() != "string" || !slices.Equal(e.Required, []string{"error"}) {
		t.Errorf("schema Error: want an object with the required string property error")
	}
	if d := schemas["Deleted"]; d == nil || d.Properties["deleted"].describe() != "string" {
		t.Errorf("schema Deleted: want an object with the string property deleted")
	}
	if s := schemas["Size"]; s == nil || len(s.OneOf) != 2 || s.OneOf[0].Type != "integer" || s.OneOf[1].Type != "string" {
		t.Errorf("schema Size: want oneOf an integer and a string")
	}
}

var (
	timeType     = reflect.TypeFor[time.Time]()
	durationType = reflect.TypeFor[time.Duration]()
	sizeType     = reflect.TypeFor[admin.Size]()
)

// matchType checks that schema p describes Go type t as encoding/json
// encodes it.
func matchType(t reflect.Type, p *schema) error {
	want := func(typ, format string) error {
		if p.Ref != "" || p.Type != typ || (format != "" && p.Format != format) {
			return fmt.Errorf("schema %s/%s, want %s/%s", p.describe(), p.Format, typ, format)
		}
		return nil
	}
	switch {
	case t == timeType:
		return want("string", "date-time")
	case t == durationType:
		return want("integer", "int64")
	case t == sizeType:
		if p.describe() != "Size" {
			return fmt.Errorf("schema %s, want a reference to Size", p.describe())
		}
		return nil
	}
	switch t.Kind() {
	case reflect.String:
		return want("string", "")
	case reflect.Int, reflect.Int32:
		return want("integer", "")
	case reflect.Int64, reflect.Uint64:
		return want("integer", "int64")
	case reflect.Bool:
		return want("boolean", "")
	case reflect.Slice:
		if err := want("array", ""); err != nil {
			return err
		}
		if p.Items == nil {
			return fmt.Errorf("array without items")
		}
		return matchType(t.Elem(), p.Items)
	case reflect.Pointer:
		// An optional object (omitempty): described like the object.
		return matchType(t.Elem(), p)
	case reflect.Struct:
		if p.describe() != t.Name() {
			return fmt.Errorf("schema %s, want a reference to %s", p.describe(), t.Name())
		}
		return nil
	}
	return fmt.Errorf("no rule for Go type %s", t)
}

// TestOpenAPIRefs checks that every $ref of the document resolves.
func TestOpenAPIRefs(t *testing.T) {
	b, err := os.ReadFile(apiDocPath)
	if err != nil {
		t.Fatal(err)
	}
	var root any
	if err := yaml.Unmarshal(b, &root); err != nil {
		t.Fatal(err)
	}
	var walk func(v any)
	n := 0
	walk = func(v any) {
		switch v := v.(type) {
		case map[any]any:
			if ref, ok := v["$ref"].(string); ok {
				n++
				if !resolves(root, ref) {
					t.Errorf("$ref %q does not resolve", ref)
				}
			}
			for _, e := range v {
				walk(e)
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	walk(root)
	if n == 0 {
		t.Error("no $ref found")
	}
}

func resolves(root any, ref string) bool {
	path, ok := strings.CutPrefix(ref, "#/")
	if !ok {
		return false
	}
	v := root
	for _, seg := range strings.Split(path, "/") {
		m, ok := v.(map[any]any)
		if !ok {
			return false
		}
		if v, ok = m[seg]; !ok {
			return false
		}
	}
	return true
}
