package main

// The operator CLI (tandem cluster, host, volume and vm): flags shared by the
// commands that talk to an agent's admin API, and their output helpers.

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/admin/client"
	"github.com/tandem-project/tandem/volume"
)

const (
	// envAdmin, envToken and envCA give --admin, --token and --admin-ca
	// their defaults.
	envAdmin = "TANDEM_ADMIN"
	envToken = "TANDEM_ADMIN_TOKEN"
	envCA    = "TANDEM_ADMIN_CA"
	// defaultAdmin is n1's admin address in tandem dev.
	defaultAdmin = "127.0.0.1:7480"
)

// The --output formats.
const (
	outputTable = "table"
	outputJSON  = "json"
)

// adminFlags are the flags of the commands that talk to the admin API,
// registered as persistent flags of each command group.
type adminFlags struct {
	admin     string
	token     string
	tokenFile string
	ca        string
	output    string
	timeout   time.Duration
}

func (a *adminFlags) register(f *pflag.FlagSet) {
	f.StringVar(&a.admin, "admin", "", "admin API of any agent, host:port or http(s)://host:port (default $"+envAdmin+", else "+defaultAdmin+")")
	f.StringVar(&a.token, "token", "", "admin token, needed to change anything (default $"+envToken+")")
	f.StringVar(&a.tokenFile, "token-file", "", "read the admin token from this file, e.g. DATA/admin-token of tandem dev")
	f.StringVar(&a.ca, "admin-ca", "", "PEM CA bundle that signed the agents' admin certificates: HTTPS, even for a host:port --admin (default $"+envCA+")")
	f.StringVarP(&a.output, "output", "o", outputTable, "output format: table or json")
	f.DurationVar(&a.timeout, "timeout", 30*time.Second, "how long to wait for the admin API")
}

// validate checks the flags that need no I/O, before anything is sent.
func (a *adminFlags) validate() error {
	switch a.output {
	case outputTable, outputJSON:
	default:
		return fmt.Errorf("--output %q: want table or json", a.output)
	}
	if a.timeout <= 0 {
		return fmt.Errorf("--timeout %v: want a positive duration such as 30s", a.timeout)
	}
	if a.token != "" && a.tokenFile != "" {
		return errors.New("give --token or --token-file, not both")
	}
	return nil
}

// addr is --admin, else $TANDEM_ADMIN, else 127.0.0.1:7480.
func (a *adminFlags) addr() string {
	if a.admin != "" {
		return a.admin
	}
	if v := strings.TrimSpace(os.Getenv(envAdmin)); v != "" {
		return v
	}
	return defaultAdmin
}

// adminToken is --token, else the content of --token-file, else
// $TANDEM_ADMIN_TOKEN ("" if none).
func (a *adminFlags) adminToken() (string, error) {
	if a.token != "" {
		return a.token, nil
	}
	if a.tokenFile != "" {
		b, err := os.ReadFile(a.tokenFile)
		if err != nil {
			return "", fmt.Errorf("--token-file: %w", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return "", fmt.Errorf("--token-file %s: the file is empty", a.tokenFile)
		}
		return tok, nil
	}
	return strings.TrimSpace(os.Getenv(envToken)), nil
}

// transport returns the admin API's address and the client options for
// --admin-ca (else $TANDEM_ADMIN_CA): with a CA, HTTPS trusting it only.
func (a *adminFlags) transport() (string, []client.Option, error) {
	addr, ca, flag := a.addr(), a.ca, "--admin-ca"
	if ca == "" {
		ca, flag = strings.TrimSpace(os.Getenv(envCA)), "$"+envCA
	}
	if ca == "" {
		return addr, nil, nil
	}
	pool, err := loadCAPool(flag, ca)
	if err != nil {
		return "", nil, err
	}
	if !strings.Contains(addr, "://") {
		addr = "https://" + addr
	} else if strings.HasPrefix(addr, "http://") {
		return "", nil, fmt.Errorf("%s is for HTTPS, but the admin address is %s", flag, addr)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	return addr, []client.Option{client.WithHTTPClient(hc)}, nil
}

// call validates the flags, builds a client and runs fn with a context
// bounded by --timeout; it adds a hint to the errors an operator can fix.
func (a *adminFlags) call(cmd *cobra.Command, fn func(context.Context, *client.Client) error) error {
	if err := a.validate(); err != nil {
		return err
	}
	tok, err := a.adminToken()
	if err != nil {
		return err
	}
	addr, opts, err := a.transport()
	if err != nil {
		return err
	}
	c, err := client.New(addr, tok, append(opts, client.WithTimeout(a.timeout), client.WithUserAgent("tandem-cli"))...)
	if err != nil {
		return fmt.Errorf("--admin: %w", err)
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), a.timeout)
	defer cancel()
	err = fn(ctx, c)
	switch {
	case err == nil:
		return nil
	case client.StatusOf(err) == http.StatusUnauthorized && tok == "" && mentions(err, "--token"):
		return fmt.Errorf("%w (no admin token was given)", err)
	case client.StatusOf(err) == http.StatusUnauthorized && tok == "":
		return fmt.Errorf("%w (no admin token given: use --token, --token-file or $%s)", err, envToken)
	case client.StatusOf(err) == http.StatusUnauthorized && !mentions(err, "--token"):
		return fmt.Errorf("%w (check --token, --token-file or $%s)", err, envToken)
	case errors.Is(err, client.ErrTimeout):
		return fmt.Errorf("%w (--timeout %v)", err, a.timeout)
	}
	return err
}

// mentions reports whether the server's message in err already contains
// hint, so the CLI does not repeat it.
func mentions(err error, hint string) bool {
	var e *client.Error
	return errors.As(err, &e) && strings.Contains(e.Message, hint)
}

// nameArg accepts exactly one argument, a valid volume name.
func nameArg(cmd *cobra.Command, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("%s: want one volume NAME, got %d arguments", cmd.CommandPath(), len(args))
	}
	return volume.ValidateName(args[0])
}

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// newTable returns a tabwriter aligning tab-separated columns; Flush it.
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
}

// tableRow writes one tab-separated row of a table.
func tableRow(w io.Writer, cells ...any) {
	for i, c := range cells {
		if i > 0 {
			io.WriteString(w, "\t")
		}
		fmt.Fprint(w, c)
	}
	io.WriteString(w, "\n")
}

// keyValues writes "Key:  value" lines, values aligned.
func keyValues(w io.Writer, kv [][2]string) error {
	tw := newTable(w)
	for _, p := range kv {
		tableRow(tw, p[0]+":", p[1])
	}
	return tw.Flush()
}

var sizeUnits = []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}

// humanSize renders n bytes in the largest binary unit it reaches, as an
// integer when exact ("20GiB", volume.ParseSize reads it back) and with one
// decimal otherwise ("1.5GiB"). Negative n (unknown) is "-".
func humanSize(n int64) string {
	if n < 0 {
		return "-"
	}
	i, u := 0, int64(1)
	for i < len(sizeUnits)-1 && n/u >= 1024 {
		u *= 1024
		i++
	}
	if n%u == 0 {
		return fmt.Sprintf("%d%s", n/u, sizeUnits[i])
	}
	v := float64(n) / float64(u)
	if v >= 1023.95 && i < len(sizeUnits)-1 { // would print as 1024.0
		v /= 1024
		i++
	}
	return fmt.Sprintf("%.1f%s", v, sizeUnits[i])
}

// copyRate renders n bytes copied in d as a rate ("512MiB/s"), "" when d
// is not positive.
func copyRate(n int64, d time.Duration) string {
	if d <= 0 {
		return ""
	}
	return humanSize(int64(float64(n)/d.Seconds())) + "/s"
}

// orDash returns s, or "-" when it is empty.
// parseRate parses the value of rate flag name (bytes per second such as
// 100M); "" is no limit (0).
func parseRate(name, s string) (admin.Size, error) {
	if s == "" {
		return 0, nil
	}
	n, err := volume.ParseSize(s)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("--%s %q: want bytes per second such as 100M", name, s)
	}
	return admin.Size(n), nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// formatTime renders t in UTC as RFC 3339, "-" when zero.
func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// formatAgo renders a duration such as a replica's last contact, rounded
// to milliseconds; zero is "-".
func formatAgo(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	if d < time.Millisecond {
		return "<1ms"
	}
	return d.Round(time.Millisecond).String()
}

// joinOrDash joins names with ", ", "-" when there are none.
func joinOrDash(names []string, sep string) string {
	return orDash(strings.Join(names, sep))
}
