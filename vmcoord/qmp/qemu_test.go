package qmp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/testbin"
)

// TestRealQEMU drives a real qemu-system-x86_64 (no disk, started paused)
// through the client: version, commands, errors, concurrent commands, a
// large reply, events to two subscribers, and the end of the connection
// when QEMU quits.
func TestRealQEMU(t *testing.T) {
	testbin.Require(t, "qemu-system-x86_64")
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	var stderr bytes.Buffer
	cmd := exec.Command("qemu-system-x86_64", "-accel", "tcg", "-nodefaults", "-no-user-config",
		"-display", "none", "-m", "16", "-S",
		"-chardev", "socket,id=qmp,path="+sock+",server=on,wait=off", "-mon", "chardev=qmp,mode=control")
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var c *Conn
	for {
		var err error
		if c, err = Dial(ctx, "unix", sock); err == nil {
			break
		}
		select {
		case <-exited:
			t.Fatalf("QEMU exited: %v\n%s", waitErr, stderr.String())
		case <-ctx.Done():
			t.Fatalf("QMP not up: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	defer c.Close()
	t.Logf("QEMU %v", c.Version())
	if c.Version().Major < 7 {
		t.Fatalf("QEMU %v, want 7.2 or later", c.Version())
	}

	var st struct {
		Running bool
		Status  string
	}
	if err := c.Execute(ctx, "query-status", nil, &st); err != nil || st.Status != "prelaunch" || st.Running {
		t.Fatalf("query-status = %+v, %v; want prelaunch", st, err)
	}
	err := c.Execute(ctx, "no-such-command", nil, nil)
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != ClassCommandNotFound {
		t.Fatalf("unknown command: %v", err)
	}
	err = c.Execute(ctx, "migrate-continue", map[string]string{"state": "nonsense"}, nil)
	if !errors.As(err, &qe) || qe.Class != ClassGenericError {
		t.Fatalf("bad argument: %v", err)
	}

	// Concurrent commands, one of them with a reply of hundreds of KB.
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			if i == 0 {
				var schema []json.RawMessage
				if err := c.Execute(ctx, "query-qmp-schema", nil, &schema); err != nil || len(schema) < 100 {
					t.Errorf("query-qmp-schema: %d entries, %v", len(schema), err)
				}
				return
			}
			var v struct {
				QEMU struct{ Major, Minor, Micro int }
			}
			if err := c.Execute(ctx, "query-version", nil, &v); err != nil || v.QEMU.Major != c.Version().Major {
				t.Errorf("query-version = %+v, %v", v, err)
			}
		})
	}
	wg.Wait()

	// Events: cont and stop give RESUME and STOP to both subscribers.
	a, b := c.Subscribe(), c.Subscribe()
	defer a.Close()
	defer b.Close()
	for _, command := range []string{"cont", "stop"} {
		if err := c.Execute(ctx, command, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range []*Subscription{a, b} {
		for _, want := range []string{"RESUME", "STOP"} {
			ev, err := s.Wait(ctx, "RESUME", "STOP")
			if err != nil || ev.Name != want || ev.Time.IsZero() {
				t.Fatalf("event %+v, %v; want %s", ev, err, want)
			}
		}
	}

	// quit: the reply, SHUTDOWN, then the end of the connection.
	if err := c.Execute(ctx, "quit", nil, nil); err != nil && !errors.Is(err, ErrDisconnected) {
		t.Fatalf("quit: %v", err)
	}
	if ev, err := a.Wait(ctx, "SHUTDOWN"); err != nil {
		t.Fatalf("SHUTDOWN: %v, %v", ev, err)
	}
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatal("the connection did not end after quit")
	}
	if !errors.Is(c.Err(), ErrDisconnected) {
		t.Fatalf("Err after quit = %v", c.Err())
	}
	<-exited
	if waitErr != nil {
		t.Fatalf("QEMU exited with %v\n%s", waitErr, stderr.String())
	}
}
