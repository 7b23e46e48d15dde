package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const testGreeting = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}`

// fake is a scripted QEMU on the other end of a unix socket: the test
// reads the commands the client sent and writes what QEMU would.
type fake struct {
	t    *testing.T
	conn net.Conn
	cmds chan fakeCmd
	wmu  sync.Mutex
}

// fakeCmd is a command the client sent.
type fakeCmd struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        json.RawMessage `json:"id"`
}

// listenFake listens on a unix socket and serves one connection: it sends
// greeting (if not empty) and, if ack, answers qmp_capabilities itself.
func listenFake(t *testing.T, greeting string, ack bool) (path string, f *fake) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	f = &fake{t: t, cmds: make(chan fakeCmd, 100)}
	accepted := make(chan struct{})
	go func() {
		defer close(f.cmds)
		conn, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		f.conn = conn
		close(accepted)
		if greeting != "" {
			f.send(greeting)
		}
		sc := bufio.NewScanner(conn)
		for sc.Scan() {
			var c fakeCmd
			if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
				t.Errorf("fake QEMU: bad command %q: %v", sc.Bytes(), err)
				return
			}
			if ack && c.Execute == "qmp_capabilities" {
				if len(c.Arguments) != 0 {
					t.Errorf("qmp_capabilities with arguments %s", c.Arguments)
				}
				f.reply(c, `{}`)
				continue
			}
			f.cmds <- c
		}
	}()
	t.Cleanup(func() {
		<-accepted
		if f.conn != nil {
			f.conn.Close()
		}
	})
	return path, f
}

// dialFake returns a Conn to a fake QEMU that completed the handshake.
func dialFake(t *testing.T) (*Conn, *fake) {
	t.Helper()
	path, f := listenFake(t, testGreeting, true)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, "unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, f
}

func (f *fake) send(lines ...string) {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	for _, l := range lines {
		if _, err := f.conn.Write([]byte(l + "\n")); err != nil {
			f.t.Logf("fake QEMU: write: %v", err)
			return
		}
	}
}

func (f *fake) reply(c fakeCmd, ret string) {
	f.send(fmt.Sprintf(`{"return": %s, "id": %s}`, ret, c.ID))
}

func (f *fake) next() fakeCmd {
	f.t.Helper()
	select {
	case c, ok := <-f.cmds:
		if !ok {
			f.t.Fatal("fake QEMU: connection ended")
		}
		return c
	case <-time.After(5 * time.Second):
		f.t.Fatal("fake QEMU: no command within 5s")
	}
	panic("unreachable")
}

func event(name, data string) string {
	if data == "" {
		return fmt.Sprintf(`{"timestamp": {"seconds": 1700000000, "microseconds": 250}, "event": %q}`, name)
	}
	return fmt.Sprintf(`{"timestamp": {"seconds": 1700000000, "microseconds": 250}, "event": %q, "data": %s}`, name, data)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestHandshake(t *testing.T) {
	c, _ := dialFake(t)
	want := Version{Major: 7, Minor: 2, Micro: 22, Package: "Debian 1:7.2+dfsg-7+deb12u18+b3"}
	if c.Version() != want {
		t.Fatalf("Version = %+v, want %+v", c.Version(), want)
	}
	if g := c.Greeting(); len(g.Capabilities) != 1 || g.Capabilities[0] != "oob" {
		t.Fatalf("capabilities %v", g.Capabilities)
	}
	if c.Err() != nil {
		t.Fatalf("Err = %v on a live connection", c.Err())
	}
}

func TestHandshakeFailures(t *testing.T) {
	for _, tc := range []struct {
		name     string
		greeting string // "" sends none
		ack      bool
		script   func(f *fake)
		want     string
	}{
		{name: "no greeting", want: "context deadline exceeded"},
		{name: "event instead of greeting", greeting: event("STOP", ""), want: "expected the greeting"},
		{name: "garbage greeting", greeting: "hello", want: "not a JSON object"},
		{name: "capabilities refused", greeting: testGreeting, script: func(f *fake) {
			c := f.next()
			f.send(fmt.Sprintf(`{"error": {"class": "GenericError", "desc": "no"}, "id": %s}`, c.ID))
		}, want: "qmp_capabilities: GenericError: no"},
		{name: "closed during capabilities", greeting: testGreeting, script: func(f *fake) {
			f.next()
			f.conn.Close()
		}, want: "closed the connection"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, f := listenFake(t, tc.greeting, tc.ack)
			if tc.script != nil {
				go tc.script(f)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			c, err := Dial(ctx, "unix", path)
			if err == nil {
				c.Close()
				t.Fatal("Dial succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Dial: %v, want %q", err, tc.want)
			}
		})
	}
}

func TestExecute(t *testing.T) {
	type status struct {
		Running bool   `json:"running"`
		Status  string `json:"status"`
	}
	for _, tc := range []struct {
		name     string
		command  string
		args     any
		wantArgs string // "" for none
		reply    func(f *fake, c fakeCmd)
		want     status
		wantErr  *Error
		errText  string
	}{
		{
			name: "result", command: "query-status",
			reply: func(f *fake, c fakeCmd) { f.reply(c, `{"status": "running", "singlestep": false, "running": true}`) },
			want:  status{Running: true, Status: "running"},
		},
		{
			name: "arguments", command: "migrate-continue", args: map[string]string{"state": "pre-switchover"},
			wantArgs: `{"state":"pre-switchover"}`,
			reply:    func(f *fake, c fakeCmd) { f.reply(c, `{}`) },
		},
		{
			name: "nil map arguments are omitted", command: "cont", args: map[string]any(nil),
			reply: func(f *fake, c fakeCmd) { f.reply(c, `{}`) },
		},
		{
			name: "error reply", command: "nope",
			reply: func(f *fake, c fakeCmd) {
				f.send(fmt.Sprintf(`{"id": %s, "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}`, c.ID))
			},
			wantErr: &Error{Class: ClassCommandNotFound, Desc: "The command nope has not been found"},
			errText: "qmp nope: CommandNotFound: The command nope has not been found",
		},
		{
			name: "events and a stray reply before the reply", command: "stop",
			reply: func(f *fake, c fakeCmd) {
				f.send(event("STOP", ""), `{"return": {}, "id": 999999}`, `{"return": {}}`)
				f.reply(c, `{}`)
			},
		},
		{
			name: "result of the wrong type", command: "query-status",
			reply:   func(f *fake, c fakeCmd) { f.reply(c, `[1, 2]`) },
			errText: "decoding the reply",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, f := dialFake(t)
			go func() {
				cmd := f.next()
				if cmd.Execute != tc.command || string(cmd.Arguments) != tc.wantArgs {
					t.Errorf("fake QEMU got %s %s, want %s %s", cmd.Execute, cmd.Arguments, tc.command, tc.wantArgs)
				}
				tc.reply(f, cmd)
			}()
			var got status
			err := c.Execute(testCtx(t), tc.command, tc.args, &got)
			switch {
			case tc.errText == "" && err != nil:
				t.Fatalf("Execute: %v", err)
			case tc.errText != "" && (err == nil || !strings.Contains(err.Error(), tc.errText)):
				t.Fatalf("Execute: %v, want %q", err, tc.errText)
			}
			if tc.wantErr != nil {
				var qe *Error
				if !errors.As(err, &qe) || *qe != *tc.wantErr {
					t.Fatalf("Execute: %#v, want %#v", err, tc.wantErr)
				}
			}
			if got != tc.want {
				t.Fatalf("result %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestConcurrentOutOfOrder runs commands from many goroutines; the fake
// answers each batch in reverse order, so only the ids match them.
func TestConcurrentOutOfOrder(t *testing.T) {
	c, f := dialFake(t)
	const n = 16
	go func() {
		var batch []fakeCmd
		for range n {
			batch = append(batch, f.next())
		}
		for i := len(batch) - 1; i >= 0; i-- {
			var args struct{ N int }
			_ = json.Unmarshal(batch[i].Arguments, &args)
			f.reply(batch[i], fmt.Sprintf(`{"n": %d}`, args.N*10))
		}
	}()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var res struct{ N int }
			if err := c.Execute(testCtx(t), "echo", map[string]int{"n": i}, &res); err != nil {
				t.Error(err)
			} else if res.N != i*10 {
				t.Errorf("command %d got reply %d", i, res.N)
			}
		})
	}
	wg.Wait()
}

// TestCancel: a command QEMU does not answer returns when its context ends;
// its late reply is dropped and the connection stays usable.
func TestCancel(t *testing.T) {
	c, f := dialFake(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := c.Execute(ctx, "slow", nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Execute: %v, want a deadline error", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Execute returned %v after its deadline", d)
	}
	slow := f.next()
	go func() {
		f.reply(slow, `{"late": true}`)
		f.reply(f.next(), `{"late": false}`)
	}()
	var res struct{ Late bool }
	if err := c.Execute(testCtx(t), "fast", nil, &res); err != nil || res.Late {
		t.Fatalf("Execute after a cancelled one: %+v, %v", res, err)
	}
	// A context already done never sends.
	done, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if err := c.Execute(done, "never", nil, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Execute with a done context: %v", err)
	}
}

func TestEvents(t *testing.T) {
	c, f := dialFake(t)
	a, b := c.Subscribe(), c.Subscribe()
	defer a.Close()
	f.send(event("STOP", ""), event("BLOCK_IO_ERROR", `{"device": "", "node-name": "disk0", "operation": "write", "action": "stop", "reason": "Input/output error"}`),
		event("RESUME", ""))
	for _, s := range []*Subscription{a, b} {
		var got []string
		for range 3 {
			ev, err := s.Wait(testCtx(t))
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, ev.Name)
			if want := time.Unix(1700000000, 250000); !ev.Time.Equal(want) {
				t.Fatalf("event time %v, want %v", ev.Time, want)
			}
			if ev.Name == "BLOCK_IO_ERROR" {
				var d struct{ Action, Operation string }
				if err := json.Unmarshal(ev.Data, &d); err != nil || d.Action != "stop" || d.Operation != "write" {
					t.Fatalf("BLOCK_IO_ERROR data %s: %+v %v", ev.Data, d, err)
				}
			} else if ev.Data != nil {
				t.Fatalf("%s has data %s", ev.Name, ev.Data)
			}
		}
		if strings.Join(got, " ") != "STOP BLOCK_IO_ERROR RESUME" {
			t.Fatalf("events %v", got)
		}
	}
	b.Close()
	if _, ok := <-b.Events(); ok || !errors.Is(b.Err(), ErrClosed) {
		t.Fatalf("closed subscription: Err %v", b.Err())
	}
	b.Close() // twice is fine

	// Wait skips other events; WaitEvent sees only later events.
	f.send(event("SHUTDOWN", `{"guest": false, "reason": "host-qmp-quit"}`), event("STOP", ""))
	if ev, err := a.Wait(testCtx(t), "STOP"); err != nil || ev.Name != "STOP" {
		t.Fatalf("Wait(STOP) = %v, %v", ev, err)
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		f.send(event("RESUME", ""))
	}()
	if ev, err := c.WaitEvent(testCtx(t), "RESUME"); err != nil || ev.Name != "RESUME" {
		t.Fatalf("WaitEvent(RESUME) = %v, %v", ev, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := c.WaitEvent(ctx, "NEVER"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitEvent(NEVER): %v", err)
	}
}

// TestSlowSubscriber: a subscriber that does not read is dropped once its
// buffer is full; the reader, the other subscribers and commands go on.
func TestSlowSubscriber(t *testing.T) {
	c, f := dialFake(t)
	slow, fast := c.Subscribe(), c.Subscribe()
	defer fast.Close()
	const n = EventBuffer + 10
	// The sender keeps at most half a buffer ahead of the fast subscriber
	// (a loaded machine may run the reader late), while the slow one
	// reads nothing and must be cut off.
	took := make(chan struct{}, n)
	go func() {
		for i := range n {
			if i >= EventBuffer/2 {
				<-took
			}
			f.send(event("MIGRATION_PASS", fmt.Sprintf(`{"pass": %d}`, i)))
		}
	}()
	for i := range n {
		ev, err := fast.Wait(testCtx(t))
		if err != nil {
			t.Fatalf("fast subscriber, event %d: %v", i, err)
		}
		took <- struct{}{}
		var d struct{ Pass int }
		if err := json.Unmarshal(ev.Data, &d); err != nil || d.Pass != i {
			t.Fatalf("fast subscriber: event %d has %s", i, ev.Data)
		}
	}
	got := 0
	for range slow.Events() {
		got++
	}
	if got != EventBuffer || !errors.Is(slow.Err(), ErrSlowSubscriber) {
		t.Fatalf("slow subscriber: %d events then %v; want %d then ErrSlowSubscriber", got, slow.Err(), EventBuffer)
	}
	go func() { f.reply(f.next(), `{}`) }()
	if err := c.Execute(testCtx(t), "query-status", nil, nil); err != nil {
		t.Fatal(err)
	}
}

// TestEnd covers the ways a connection ends: what Err says, and what
// commands in flight, later commands and subscriptions see.
func TestEnd(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(c *Conn, f *fake)
		want error
	}{
		{"QEMU exits", func(c *Conn, f *fake) { f.conn.Close() }, ErrDisconnected},
		{"Close", func(c *Conn, f *fake) { c.Close() }, ErrClosed},
		{"garbage", func(c *Conn, f *fake) { f.send("Segmentation fault") }, ErrProtocol},
		{"an array", func(c *Conn, f *fake) { f.send("[]") }, ErrProtocol},
		{"a second greeting", func(c *Conn, f *fake) { f.send(testGreeting) }, ErrProtocol},
		{"a cut message", func(c *Conn, f *fake) {
			_, _ = f.conn.Write([]byte(`{"event": "ST`))
			f.conn.Close()
		}, ErrProtocol},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, f := dialFake(t)
			sub := c.Subscribe()
			inFlight := make(chan error, 1)
			go func() { inFlight <- c.Execute(testCtx(t), "query-status", nil, nil) }()
			f.next()
			tc.end(c, f)
			select {
			case <-c.Done():
			case <-time.After(5 * time.Second):
				t.Fatal("Done not closed")
			}
			if !errors.Is(c.Err(), tc.want) {
				t.Fatalf("Err = %v, want %v", c.Err(), tc.want)
			}
			if err := <-inFlight; !errors.Is(err, tc.want) {
				t.Fatalf("command in flight: %v, want %v", err, tc.want)
			}
			if err := c.Execute(testCtx(t), "query-status", nil, nil); !errors.Is(err, tc.want) {
				t.Fatalf("command after the end: %v, want %v", err, tc.want)
			}
			if _, err := sub.Wait(testCtx(t)); !errors.Is(err, tc.want) {
				t.Fatalf("subscription: %v, want %v", err, tc.want)
			}
			if s := c.Subscribe(); !errors.Is(s.Err(), tc.want) {
				t.Fatalf("new subscription: %v, want %v", s.Err(), tc.want)
			}
		})
	}
}

func TestDecode(t *testing.T) {
	for _, tc := range []struct {
		in   string
		kind kind
		err  bool
		id   uint64
		name string
	}{
		{in: testGreeting, kind: kindGreeting},
		{in: `{"return": {}, "id": 7}`, kind: kindReply, id: 7},
		{in: `{"return": null, "id": 7}`, kind: kindReply, id: 7},
		{in: `{"return": [], "id": "x"}`, kind: kindReply},
		{in: `{"error": {"class": "GenericError", "desc": "d"}, "id": 18446744073709551615}`, kind: kindReply, id: 18446744073709551615},
		{in: `{"event": "STOP", "timestamp": {"seconds": -1, "microseconds": -1}}`, kind: kindEvent, name: "STOP"},
		{in: `  {"event": "STOP"}  ` + "\r\n", kind: kindEvent, name: "STOP"},
		{in: `{"return": {}, "error": {"class": "GenericError", "desc": "d"}, "id": 1}`, err: true},
		{in: `{"error": {"desc": "no class"}, "id": 1}`, err: true},
		{in: `{"event": ""}`, err: true},
		{in: `{"event": 5}`, err: true},
		{in: `{"event": "STOP", "return": {}}`, err: true},
		{in: `{"id": 1}`, err: true},
		{in: `{}`, err: true},
		{in: `null`, err: true},
		{in: `{"return": {}} {"return": {}}`, err: true},
		{in: ``, err: true},
		{in: `{"QMP": 1}`, err: true},
	} {
		m, err := decode([]byte(tc.in))
		if (err != nil) != tc.err {
			t.Errorf("decode(%s): %v", tc.in, err)
			continue
		}
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Errorf("decode(%s): %v does not wrap ErrProtocol", tc.in, err)
			}
			continue
		}
		if m.kind != tc.kind || m.id != tc.id || m.event.Name != tc.name {
			t.Errorf("decode(%s) = %+v", tc.in, m)
		}
	}
}
