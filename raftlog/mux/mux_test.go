package mux

import (
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

func TestRouting(t *testing.T) {
	l, err := Listen("127.0.0.1:0", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go l.Serve()
	a, err := l.Layer("vol-a")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := l.Layer("vol-b")
	if _, err := l.Layer("vol-a"); err == nil {
		t.Fatal("a second layer for the same group was allowed")
	}
	streams := make(chan string, 1)
	l.Handle(KindStream, func(name string, c net.Conn) {
		defer c.Close()
		msg, _ := io.ReadAll(c)
		streams <- name + ":" + string(msg)
	})

	send := func(kind byte, name, msg string) {
		c, err := Dial(l.Addr().String(), kind, name, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(msg))
		c.Close()
	}
	recv := func(y *Layer) string {
		c, err := y.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		msg, _ := io.ReadAll(c)
		return string(msg)
	}
	send(KindRaft, "vol-b", "to b")
	send(KindRaft, "vol-a", "to a")
	send(KindStream, "vol-a", "stream")
	if got := recv(a); got != "to a" {
		t.Errorf("layer a got %q", got)
	}
	if got := recv(b); got != "to b" {
		t.Errorf("layer b got %q", got)
	}
	if got := <-streams; got != "vol-a:stream" {
		t.Errorf("stream handler got %q", got)
	}

	// Unknown groups and garbage are closed without harm.
	c, _ := Dial(l.Addr().String(), KindRaft, "nope", time.Second)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("connection for an unknown group was not closed")
	}
	g, _ := net.Dial("tcp", l.Addr().String())
	g.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	g.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := g.Read(make([]byte, 1)); err == nil {
		t.Error("garbage connection was not closed")
	}

	// A closed layer stops accepting and is unregistered.
	a.Close()
	if _, err := a.Accept(); err != ErrClosed {
		t.Errorf("accept after close: %v", err)
	}
	if _, err := l.Layer("vol-a"); err != nil {
		t.Errorf("re-registering a closed group: %v", err)
	}
}
