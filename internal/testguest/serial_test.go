package testguest

import (
	"errors"
	"strings"
	"testing"
)

func TestParseLog(t *testing.T) {
	for _, tc := range []struct {
		name string
		out  string
		want Log
	}{
		{"empty", "", Log{}},
		{"firmware only", "SeaBIOS (version 1.16)\nBooting from Hard Disk...\n", Log{}},
		{"started", "TANDEM-GUEST START\n", Log{Boots: 1}},
		{"partial line", "TANDEM-GUEST START\nSEQ 100\nSEQ 2", Log{Boots: 1, LastSeq: 100}},
		{"reports", "TANDEM-GUEST START\r\nSEQ 100\r\nSEQ 200\r\n", Log{Boots: 1, LastSeq: 200}},
		{"done", "TANDEM-GUEST START\nSEQ 100\nSEQ 200\nTANDEM-GUEST DONE 200\n", Log{Boots: 1, LastSeq: 200, Done: true}},
		{"done between reports", "TANDEM-GUEST START\nSEQ 100\nTANDEM-GUEST DONE 150\n", Log{Boots: 1, LastSeq: 150, Done: true}},
		{"firmware before start", "Booting from Hard Disk...TANDEM-GUEST START\nSEQ 1\n", Log{Boots: 1, LastSeq: 1}},
		{"error", "TANDEM-GUEST START\nSEQ 100\nTANDEM-GUEST ERROR 0C SEQ 137\n",
			Log{Boots: 1, LastSeq: 100, Err: &GuestError{Status: 0x0C, Seq: 137}}},
		{"load error", "TANDEM-GUEST START\nTANDEM-GUEST ERROR AA SEQ 0\n", Log{Boots: 1, Err: &GuestError{Status: 0xAA}}},
		{"reboot", "TANDEM-GUEST START\nSEQ 100\nTANDEM-GUEST DONE 100\nTANDEM-GUEST START\nSEQ 10\n", Log{Boots: 2, LastSeq: 10}},
		{"big seq", "TANDEM-GUEST START\nSEQ 18446744073709551615\n", Log{Boots: 1, LastSeq: 1<<64 - 1}},
	} {
		got, err := ParseLog([]byte(tc.out))
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if got.Boots != tc.want.Boots || got.LastSeq != tc.want.LastSeq || got.Done != tc.want.Done ||
			(got.Err == nil) != (tc.want.Err == nil) || (got.Err != nil && *got.Err != *tc.want.Err) {
			t.Errorf("%s: got %+v (err %v), want %+v (err %v)", tc.name, got, got.Err, tc.want, tc.want.Err)
		}
		if got.Halted() != (tc.want.Done || tc.want.Err != nil) {
			t.Errorf("%s: Halted = %v", tc.name, got.Halted())
		}
	}
}

func TestParseLogRejects(t *testing.T) {
	for _, out := range []string{
		"SEQ 1\n", // before START
		"TANDEM-GUEST START\nSEQ x\n",
		"TANDEM-GUEST START\nSEQ 012\n",
		"TANDEM-GUEST START\nSEQ 12 \n",
		"TANDEM-GUEST START\nSEQ -1\n",
		"TANDEM-GUEST START\nSEQ 18446744073709551616\n",
		"TANDEM-GUEST START\nSEQ 100\nSEQ 100\n",
		"TANDEM-GUEST START\nSEQ 100\nSEQ 50\n",
		"TANDEM-GUEST START\nSEQ 100\nTANDEM-GUEST DONE 99\n",
		"TANDEM-GUEST START\nTANDEM-GUEST DONE 5\nSEQ 6\n",
		"TANDEM-GUEST START\nTANDEM-GUEST ERROR 01 SEQ 5\nTANDEM-GUEST DONE 6\n",
		"TANDEM-GUEST START\nTANDEM-GUEST ERROR 1 SEQ 5\n",
		"TANDEM-GUEST START\nTANDEM-GUEST ERROR 0c SEQ 5\n",
		"TANDEM-GUEST START\nTANDEM-GUEST ERROR 0C\n",
		"TANDEM-GUEST START\nSEQ 9\nTANDEM-GUEST ERROR 0C SEQ 9\n",
		"TANDEM-GUEST START\nTANDEM-GUEST HELLO\n",
	} {
		if l, err := ParseLog([]byte(out)); err == nil {
			t.Errorf("ParseLog(%q) = %+v, want an error", out, l)
		}
	}
}

func TestGuestError(t *testing.T) {
	var err error = &GuestError{Status: 0x80, Seq: 42}
	if !strings.Contains(err.Error(), "TANDEM-GUEST ERROR 80 SEQ 42") {
		t.Errorf("Error() = %q", err)
	}
	var ge *GuestError
	if !errors.As(err, &ge) || ge.Seq != 42 {
		t.Error("errors.As failed")
	}
}
