package volume

import (
	"errors"
	"math"
	"testing"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"4096", 4096, true},
		{"512B", 512, true},
		{"1k", 1024, true},
		{"1K", 1024, true},
		{"64KiB", 64 << 10, true},
		{"512MiB", 512 << 20, true},
		{"512M", 512 << 20, true},
		{"1G", 1 << 30, true},
		{"1GB", 1 << 30, true},
		{"1gib", 1 << 30, true},
		{" 2 T ", 2 << 40, true},
		{"2T", 2 << 40, true},
		{"1P", 1 << 50, true},
		{"8191P", 8191 << 50, true},
		{"8192P", 0, false},
		{"9223372036854775807", math.MaxInt64, true},
		{"9223372036854775808", 0, false},
		{"", 0, false},
		{"-1", 0, false},
		{"1.5G", 0, false},
		{"12Q", 0, false},
		{"G", 0, false},
		{"1GiBx", 0, false},
	}
	for _, tc := range tests {
		got, err := ParseSize(tc.in)
		if tc.ok != (err == nil) || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[int64]string{0: "0B", 1000: "1000B", 1024: "1KiB", 1536 << 10: "1536KiB", 1 << 30: "1GiB", 3 << 50: "3PiB", 5 << 60: "5120PiB"} {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
		if n > 0 {
			if back, err := ParseSize(FormatSize(n)); err != nil || back != n {
				t.Errorf("ParseSize(FormatSize(%d)) = %d, %v", n, back, err)
			}
		}
	}
}

func TestValidateName(t *testing.T) {
	good := []string{"vol0", "a", "db-1.data_2", "0abc", "x23456789012345678901234567890123456789012345678901234567890123"}
	bad := []string{"", "-a", ".a", "_a", "Vol", "a/b", "a b", "é", "x234567890123456789012345678901234567890123456789012345678901234", "a\x00"}
	for _, n := range good {
		if err := ValidateName(n); err != nil {
			t.Errorf("ValidateName(%q): %v", n, err)
		}
	}
	for _, n := range bad {
		if err := ValidateName(n); err == nil {
			t.Errorf("ValidateName(%q) accepted a bad name", n)
		}
	}
}

func TestCheckRange(t *testing.T) {
	tests := []struct {
		off, n, size int64
		ok           bool
	}{
		{0, 0, 0, true},
		{0, 10, 10, true},
		{10, 0, 10, true},
		{5, 6, 10, false},
		{11, 0, 10, false},
		{-1, 1, 10, false},
		{0, -1, 10, false},
		{math.MaxInt64, math.MaxInt64, math.MaxInt64, false},
	}
	for _, tc := range tests {
		err := CheckRange(tc.off, tc.n, tc.size)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrOutOfRange)) {
			t.Errorf("CheckRange(%d, %d, %d) = %v", tc.off, tc.n, tc.size, err)
		}
	}
}

func TestSplitExport(t *testing.T) {
	tests := []struct {
		in      string
		name    string
		epoch   uint64
		wantErr bool
	}{
		{"vm1", "vm1", 0, false},
		{"vm1@42", "vm1", 42, false},
		{"_fwd/vm1@18446744073709551615", "_fwd/vm1", 1<<64 - 1, false},
		{"vm1@", "", 0, true},
		{"vm1@0", "", 0, true},
		{"vm1@007", "", 0, true},
		{"vm1@+7", "", 0, true},
		{"vm1@-7", "", 0, true},
		{"vm1@7@8", "", 0, true},
		{"vm1@x", "", 0, true},
		{"vm1@18446744073709551616", "", 0, true},
	}
	for _, tt := range tests {
		name, epoch, err := SplitExport(tt.in)
		if (err != nil) != tt.wantErr || name != tt.name || epoch != tt.epoch {
			t.Errorf("SplitExport(%q) = %q, %d, %v", tt.in, name, epoch, err)
		}
		if err == nil && WriterExport(name, epoch) != tt.in {
			t.Errorf("WriterExport(%q, %d) = %q, want %q", name, epoch, WriterExport(name, epoch), tt.in)
		}
	}
}

// FuzzSplitExport checks that any export name a client sends either
// splits into a name and a positive epoch that join back to it, or is
// refused; never a panic.
func FuzzSplitExport(f *testing.F) {
	for _, s := range []string{"vm1", "vm1@42", "vm1@", "@7", "a@b@c", "vm1@0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		name, epoch, err := SplitExport(s)
		if err != nil {
			return
		}
		if WriterExport(name, epoch) != s {
			t.Fatalf("SplitExport(%q) = %q, %d, which joins to %q", s, name, epoch, WriterExport(name, epoch))
		}
	})
}
