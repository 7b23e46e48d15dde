package testbin

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tandem-project/tandem/admin"
	"github.com/tandem-project/tandem/admin/client"
)

// Admin returns a client of host i's admin API with the cluster's token
// (managed mode).
func (c *Cluster) Admin(i int) *client.Client {
	cl, err := client.New(c.Nodes[i].AdminAddr, c.Token, client.WithTimeout(30*time.Second))
	if err != nil {
		c.t.Fatal(err)
	}
	return cl
}

// WaitManaged waits until the control plane records every host of the
// cluster alive (managed mode).
func (c *Cluster) WaitManaged(timeout time.Duration) {
	c.t.Helper()
	WaitFor(c.t, timeout, "every host alive in the catalog", func() error {
		hs, err := c.Admin(0).Hosts(context.Background())
		if err != nil {
			return err
		}
		alive := 0
		for _, h := range hs {
			if h.State == admin.HostAlive && h.Control != "" {
				alive++
			}
		}
		if alive != len(c.Nodes) {
			return fmt.Errorf("%d of %d hosts alive members: %+v", alive, len(c.Nodes), hs)
		}
		return nil
	})
}

// WaitFor calls f every 50 ms until it returns nil, and fails the test
// with f's last error after timeout.
func WaitFor(t testing.TB, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
