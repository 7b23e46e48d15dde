package qmp

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"testing"
)

// decodeSeeds are real QEMU 7.2 messages and near misses.
var decodeSeeds = []string{
	testGreeting,
	`{"return": {}, "id": 1}`,
	`{"return": {"status": "running", "singlestep": false, "running": true}, "id": 2}`,
	`{"id": 3, "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}`,
	`{"error": {"class": "GenericError", "desc": "JSON parse error, invalid keyword 'x'"}}`,
	`{"timestamp": {"seconds": 1700000000, "microseconds": 123456}, "event": "STOP"}`,
	`{"timestamp": {"seconds": 1700000000, "microseconds": 123456}, "event": "MIGRATION", "data": {"status": "pre-switchover"}}`,
	`{"timestamp": {"seconds": 1700000000, "microseconds": 1}, "event": "BLOCK_IO_ERROR", "data": {"device": "", "node-name": "disk0", "reason": "Input/output error", "operation": "write", "action": "stop"}}`,
	`{"timestamp": {"seconds": -1, "microseconds": -1}, "event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}`,
	`{"timestamp": {"seconds": 9223372036854775807, "microseconds": 999999}, "event": "X"}`,
	`{"return": [], "id": -1}`,
	`{"return": {}, "id": 1e3}`,
	`{"QMP": {"version": null}}`,
	`{"event": null}`,
	`{"error": null, "return": null}`,
	"\x00\xff{",
	`[{"return": {}}]`,
}

// FuzzDecode checks that the decoder never panics and that what it accepts
// is exactly one well-formed kind of message.
func FuzzDecode(f *testing.F) {
	for _, s := range decodeSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		m, err := decode(line)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("decode error %v does not wrap ErrProtocol", err)
			}
			return
		}
		switch m.kind {
		case kindGreeting:
		case kindReply:
			if (m.ret == nil) == (m.err == nil) {
				t.Fatalf("reply with return %q and error %v", m.ret, m.err)
			}
			if m.err != nil && m.err.Class == "" {
				t.Fatal("error reply without a class")
			}
		case kindEvent:
			if m.event.Name == "" {
				t.Fatal("event without a name")
			}
		default:
			t.Fatalf("unknown kind %d", m.kind)
		}
	})
}

// FuzzReader feeds a whole stream from "QEMU" to a connection's reader,
// with a subscriber and a command waiting: it must end the connection
// with an error (never panic or hang), deliver events in order and hand
// the waiting command a reply or the connection's error.
func FuzzReader(f *testing.F) {
	var all bytes.Buffer
	for _, s := range decodeSeeds {
		f.Add([]byte(s + "\n"))
		all.WriteString(s + "\n")
	}
	f.Add(all.Bytes())
	f.Add([]byte("\n\n{\"return\": {}, \"id\": 1}\n{\"event\": \"STOP\"}\n{\"event\":"))
	f.Fuzz(func(t *testing.T, stream []byte) {
		client, server := net.Pipe()
		defer server.Close()
		c := newConn(client)
		sub := c.Subscribe()
		_, ch, id, err := c.prepare("query-status", nil)
		if err != nil || id != 1 {
			t.Fatalf("prepare: %d %v", id, err)
		}
		c.readLoop(bufio.NewReader(bytes.NewReader(stream)))
		select {
		case <-c.Done():
		default:
			t.Fatal("the reader returned but the connection is not done")
		}
		if c.Err() == nil {
			t.Fatal("done without an error")
		}
		select {
		case <-ch:
		default:
			t.Fatal("the waiting command got nothing")
		}
		n := 0
		for ev := range sub.Events() {
			if ev.Name == "" {
				t.Fatal("event without a name")
			}
			n++
		}
		if n > EventBuffer && sub.Err() == nil {
			t.Fatal("more events than the buffer holds")
		}
	})
}
