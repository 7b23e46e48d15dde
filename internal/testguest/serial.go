package testguest

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
)

// The guest's serial lines ("\n"-terminated, numbers in decimal except the
// status in hex).
const (
	lineStart = "TANDEM-GUEST START"             // at boot
	lineSeq   = "SEQ %d"                         // every ReportEvery writes
	lineDone  = "TANDEM-GUEST DONE %d"           // after Writes writes, then halt
	lineError = "TANDEM-GUEST ERROR %02X SEQ %d" // int 13h status, seq; then halt
	guestTag  = "TANDEM-GUEST "                  // prefix of the lines but SEQ
)

// Log is what a guest's serial output says about its last boot.
type Log struct {
	// Boots counts the START lines: more than 1 means the guest rebooted.
	Boots int
	// LastSeq is the newest seq the last boot reported written (by a SEQ or
	// DONE line); 0 if none.
	LastSeq uint64
	// Done reports that the last boot completed Config.Writes writes.
	Done bool
	// Err is the last boot's failed disk access, if any.
	Err *GuestError
}

// Halted reports whether the last boot printed DONE or ERROR and stopped.
func (l Log) Halted() bool { return l.Done || l.Err != nil }

// GuestError is a disk access the guest saw fail, from its ERROR line.
type GuestError struct {
	// Status is the int 13h status (AH) the BIOS returned.
	Status byte
	// Seq is the write that failed; 0 when loading the image failed.
	Seq uint64
}

func (e *GuestError) Error() string {
	return "testguest: guest disk error: " + fmt.Sprintf(lineError, e.Status, e.Seq)
}

// ParseLog parses a guest's serial output. It ignores lines that are not
// the guest's (firmware output) and an unterminated last line (the guest may
// be printing it). It returns an error for a malformed guest line, a SEQ
// that does not grow, a guest line after DONE or ERROR in the same boot, or
// a guest line before any START.
func ParseLog(out []byte) (Log, error) {
	var l Log
	lines := bytes.Split(out, []byte("\n"))
	for i, raw := range lines[:len(lines)-1] { // the last is unterminated
		line := strings.TrimRight(string(raw), "\r")
		// Firmware output may lack its newline: find the guest's tag.
		if j := strings.Index(line, guestTag); j > 0 {
			line = line[j:]
		}
		if line == lineStart {
			l = Log{Boots: l.Boots + 1}
			continue
		}
		if err := l.add(line); err != nil {
			return l, fmt.Errorf("testguest: serial line %d %q: %w", i+1, line, err)
		}
	}
	return l, nil
}

// add applies one line other than START to l.
func (l *Log) add(line string) error {
	var seq uint64
	var status byte
	var format, want string
	// Each guest line is scanned, then formatted back and compared, which
	// rejects every malformed one.
	switch {
	case strings.HasPrefix(line, "SEQ "):
		format = lineSeq
		_, _ = fmt.Sscanf(line, format, &seq)
		want = fmt.Sprintf(format, seq)
	case strings.HasPrefix(line, "TANDEM-GUEST DONE "):
		format = lineDone
		_, _ = fmt.Sscanf(line, format, &seq)
		want = fmt.Sprintf(format, seq)
	case strings.HasPrefix(line, "TANDEM-GUEST ERROR "):
		format = lineError
		_, _ = fmt.Sscanf(line, format, &status, &seq)
		want = fmt.Sprintf(format, status, seq)
	case strings.HasPrefix(line, guestTag):
		return errors.New("unknown guest line")
	default:
		return nil // not the guest's
	}
	if want != line {
		return fmt.Errorf("malformed, want the form %q", format)
	}
	switch {
	case l.Boots == 0:
		return fmt.Errorf("guest line before %q", lineStart)
	case l.Halted():
		return errors.New("guest line after the guest halted")
	case format == lineError:
		if seq <= l.LastSeq && seq != 0 {
			return fmt.Errorf("failed seq %d is not after %d", seq, l.LastSeq)
		}
		l.Err = &GuestError{Status: status, Seq: seq}
	case seq < l.LastSeq || (seq == l.LastSeq && format == lineSeq):
		return fmt.Errorf("seq %d does not follow %d", seq, l.LastSeq)
	default:
		l.LastSeq = seq
		l.Done = format == lineDone
	}
	return nil
}
