package testbin

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"time"
)

var adminLogRE = regexp.MustCompile(`msg="serving admin API" addr=(\S+)`)

// Metrics returns node n's Prometheus page (GET /metrics over plain HTTP):
// at its AdminAddr in managed mode; in fixed mode at the admin address the
// agent logged, so it must run with --admin-listen (port 0 will do).
func (n *Node) Metrics() (string, error) {
	addr := n.AdminAddr
	if addr == "" {
		line, err := n.WaitLog(adminLogRE, 0, 10*time.Second)
		if err != nil {
			return "", fmt.Errorf("testbin: %s: no admin API: %w", n.Name, err)
		}
		addr = adminLogRE.FindStringSubmatch(line)[1]
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return "", fmt.Errorf("testbin: %s: /metrics: %w", n.Name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("testbin: %s: /metrics: %w", n.Name, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("testbin: %s: /metrics: %s", n.Name, resp.Status)
	}
	return string(b), nil
}
