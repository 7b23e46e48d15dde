package qmp

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// Error is an error reply from QEMU: {"error": {"class": ..., "desc": ...}}.
type Error struct {
	// Class is the error class, e.g. ClassGenericError.
	Class string `json:"class"`
	// Desc is QEMU's human-readable description.
	Desc string `json:"desc"`
}

// Error classes QEMU 7.2 uses (qapi/error.json).
const (
	// ClassGenericError is almost every error.
	ClassGenericError = "GenericError"
	// ClassCommandNotFound: no such command (or not allowed in
	// capabilities negotiation mode).
	ClassCommandNotFound = "CommandNotFound"
	// ClassDeviceNotActive: the device exists but is not active.
	ClassDeviceNotActive = "DeviceNotActive"
	// ClassDeviceNotFound: no such device.
	ClassDeviceNotFound = "DeviceNotFound"
)

// Error returns "Class: Desc".
func (e *Error) Error() string { return e.Class + ": " + e.Desc }

// Event is an asynchronous message from QEMU.
type Event struct {
	// Name is the event's name, e.g. "STOP" or "BLOCK_IO_ERROR".
	Name string
	// Data is the event's "data" member, nil when it has none.
	Data json.RawMessage
	// Time is QEMU's timestamp of the event; zero when QEMU could not read
	// its clock (it then sends -1).
	Time time.Time
}

// Version is QEMU's version, from the QMP greeting.
type Version struct {
	Major, Minor, Micro int
	// Package is the distribution's package version, e.g.
	// "Debian 1:7.2+dfsg-7+deb12u18+b3"; empty for an upstream build.
	Package string
}

// String returns "major.minor.micro (package)".
func (v Version) String() string {
	s := fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro)
	if v.Package != "" {
		s += " (" + v.Package + ")"
	}
	return s
}

// Greeting is what QEMU announces when a client connects.
type Greeting struct {
	Version Version
	// Capabilities are the optional protocol features QEMU offers, e.g.
	// "oob". This client enables none of them.
	Capabilities []string
}

// kind is the kind of a message from QEMU.
type kind int

const (
	kindGreeting kind = iota + 1
	kindReply
	kindEvent
)

// message is one decoded message from QEMU.
type message struct {
	kind kind
	// A reply: id is the command's id when hasID (a reply to a command
	// QEMU could not parse has none); exactly one of ret and err is set.
	id    uint64
	hasID bool
	ret   json.RawMessage
	err   *Error
	// An event.
	event Event
	// A greeting.
	greeting Greeting
}

// wireMessage is the union of the members of every QMP message.
type wireMessage struct {
	QMP *struct {
		Version struct {
			QEMU struct {
				Major int `json:"major"`
				Minor int `json:"minor"`
				Micro int `json:"micro"`
			} `json:"qemu"`
			Package string `json:"package"`
		} `json:"version"`
		Capabilities []string `json:"capabilities"`
	} `json:"QMP"`
	ID        json.RawMessage `json:"id"`
	Return    json.RawMessage `json:"return"`
	Error     *Error          `json:"error"`
	Event     *string         `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// decode decodes one line from QEMU. It never panics; any input that is not
// exactly one QMP greeting, reply or event is an error wrapping
// ErrProtocol.
func decode(line []byte) (message, error) {
	var w wireMessage
	line = bytes.TrimSpace(line)
	if len(line) == 0 || line[0] != '{' {
		return message{}, fmt.Errorf("%w: not a JSON object: %.80q", ErrProtocol, line)
	}
	if err := json.Unmarshal(line, &w); err != nil {
		return message{}, fmt.Errorf("%w: %v: %.80q", ErrProtocol, err, line)
	}
	isReply := w.Return != nil || w.Error != nil
	n := 0
	for _, b := range []bool{w.QMP != nil, isReply, w.Event != nil} {
		if b {
			n++
		}
	}
	if n != 1 {
		return message{}, fmt.Errorf("%w: not one greeting, reply or event: %.80q", ErrProtocol, line)
	}
	switch {
	case w.QMP != nil:
		v := w.QMP.Version
		return message{kind: kindGreeting, greeting: Greeting{
			Version:      Version{Major: v.QEMU.Major, Minor: v.QEMU.Minor, Micro: v.QEMU.Micro, Package: v.Package},
			Capabilities: w.QMP.Capabilities,
		}}, nil
	case isReply:
		if w.Return != nil && w.Error != nil {
			return message{}, fmt.Errorf("%w: a reply with both return and error: %.80q", ErrProtocol, line)
		}
		m := message{kind: kindReply, ret: w.Return, err: w.Error}
		if w.Error != nil && w.Error.Class == "" {
			return message{}, fmt.Errorf("%w: an error reply without a class: %.80q", ErrProtocol, line)
		}
		m.id, m.hasID = parseID(w.ID)
		return m, nil
	default:
		if *w.Event == "" {
			return message{}, fmt.Errorf("%w: an event without a name: %.80q", ErrProtocol, line)
		}
		ev := Event{Name: *w.Event, Data: w.Data}
		if ts := w.Timestamp; ts != nil && ts.Seconds >= 0 && ts.Microseconds >= 0 && ts.Microseconds < 1e6 {
			ev.Time = time.Unix(ts.Seconds, ts.Microseconds*1000)
		}
		return message{kind: kindEvent, event: ev}, nil
	}
}

// parseID parses the id of a reply: the decimal number Execute sent.
func parseID(raw json.RawMessage) (uint64, bool) {
	if len(raw) == 0 {
		return 0, false
	}
	id, err := strconv.ParseUint(string(raw), 10, 64)
	return id, err == nil
}

// readLine reads one "\n"-terminated line of at most max bytes (newline
// included). It returns the reader's error (io.EOF when the connection
// ended between messages) or an error wrapping ErrProtocol for a line too
// long or cut short by the end of the connection.
func readLine(r *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		frag, err := r.ReadSlice('\n')
		if len(line)+len(frag) > max {
			return nil, fmt.Errorf("%w: a message longer than %d bytes", ErrProtocol, max)
		}
		line = append(line, frag...)
		switch err {
		case nil:
			return line, nil
		case bufio.ErrBufferFull:
			continue
		default:
			if len(bytes.TrimSpace(line)) > 0 {
				return nil, fmt.Errorf("%w: connection ended inside a message (%v): %.80q", ErrProtocol, err, line)
			}
			return nil, err
		}
	}
}
