package bench

import "testing"

func TestParseURI(t *testing.T) {
	for _, c := range []struct {
		uri  string
		want Endpoint
	}{
		{"nbd://127.0.0.1:10810/vol0", Endpoint{"tcp", "127.0.0.1:10810", "vol0"}},
		{"nbd://localhost", Endpoint{"tcp", "localhost:10809", ""}},
		{"nbd://[::1]:99/", Endpoint{"tcp", "[::1]:99", ""}},
		{"nbd+unix:///vol0?socket=/run/t.sock", Endpoint{"unix", "/run/t.sock", "vol0"}},
	} {
		got, err := ParseURI(c.uri)
		if err != nil || got != c.want {
			t.Errorf("ParseURI(%q) = %+v, %v; want %+v", c.uri, got, err, c.want)
		}
		if back, _ := ParseURI(got.URI()); back != got {
			t.Errorf("URI() of %+v does not parse back: %q", got, got.URI())
		}
	}
	for _, bad := range []string{"http://x/", "nbd:///vol0", "nbd+unix:///vol0", "nbds://h/e", "::"} {
		if _, err := ParseURI(bad); err == nil {
			t.Errorf("ParseURI(%q) succeeded", bad)
		}
	}
	if _, err := ParseNamedURI("qemu-nbd=nbd://127.0.0.1:1/"); err != nil {
		t.Error(err)
	}
	for _, bad := range []string{"nbd://x/", "=nbd://x/", "a="} {
		if _, err := ParseNamedURI(bad); err == nil {
			t.Errorf("ParseNamedURI(%q) succeeded", bad)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	ok := DefaultConfig()
	ok.TandemBinary = "/bin/true"
	if err := ok.Validate(); err != nil {
		t.Fatalf("default config with a binary: %v", err)
	}
	for name, mod := range map[string]func(*Config){
		"no tandem":        func(c *Config) { c.TandemBinary = "" },
		"unknown workload": func(c *Config) { c.Workloads = []string{"nope"} },
		"zero repeat":      func(c *Config) { c.Repeat = 0 },
		"odd size":         func(c *Config) { c.Size = mib + 1 },
		"verify with fio":  func(c *Config) { c.Client = ClientFio; c.Verify = true },
		"unknown baseline": func(c *Config) { c.Baselines = []string{"qemu-nbd"} },
		"duplicate name":   func(c *Config) { c.BaselineURIs = []NamedURI{{"nbdkit", "nbd://x/"}} },
		"unknown scenario": func(c *Config) { c.Scenarios = []string{"meteor"} },
		"bad client":       func(c *Config) { c.Client = "qemu-img" },
	} {
		c := ok
		mod(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate succeeded", name)
		}
	}
	for _, w := range StandardWorkloads() {
		if err := w.Validate(); err != nil {
			t.Error(err)
		}
	}
}
