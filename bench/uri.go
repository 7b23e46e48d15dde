package bench

import (
	"fmt"
	"net"
	"net/url"
	"strings"
)

// Endpoint is where an NBD export is served, parsed from an NBD URI.
type Endpoint struct {
	// Network is "tcp" or "unix".
	Network string
	// Addr is host:port for tcp, the socket path for unix.
	Addr string
	// Export is the export name ("" for the server's default export).
	Export string
}

// ParseURI parses the NBD URIs the harness accepts:
// nbd://HOST[:PORT][/EXPORT] (the port defaults to 10809) and
// nbd+unix:///[EXPORT]?socket=PATH. TLS URIs (nbds://) are not supported.
func ParseURI(s string) (Endpoint, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Endpoint{}, fmt.Errorf("NBD URI %q: %w", s, err)
	}
	export := strings.TrimPrefix(u.Path, "/")
	switch u.Scheme {
	case "nbd":
		if u.Host == "" {
			return Endpoint{}, fmt.Errorf("NBD URI %q: no host", s)
		}
		host, port := u.Hostname(), u.Port()
		if port == "" {
			port = "10809"
		}
		return Endpoint{Network: "tcp", Addr: net.JoinHostPort(host, port), Export: export}, nil
	case "nbd+unix":
		sock := u.Query().Get("socket")
		if sock == "" {
			return Endpoint{}, fmt.Errorf("NBD URI %q: nbd+unix needs ?socket=PATH", s)
		}
		return Endpoint{Network: "unix", Addr: sock, Export: export}, nil
	}
	return Endpoint{}, fmt.Errorf("NBD URI %q: scheme %q not supported (want nbd:// or nbd+unix://)", s, u.Scheme)
}

// URI renders e as an NBD URI that fio and libnbd understand.
func (e Endpoint) URI() string {
	if e.Network == "unix" {
		return "nbd+unix:///" + e.Export + "?socket=" + e.Addr
	}
	return "nbd://" + e.Addr + "/" + e.Export
}
