package testguest

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"testing"
)

// guestDisk returns the disk a guest of c leaves after writes writes.
func guestDisk(t *testing.T, c Config, writes uint64) []byte {
	t.Helper()
	img, err := Image(c)
	if err != nil {
		t.Fatal(err)
	}
	disk := make([]byte, c.DiskSize())
	copy(disk, img)
	for seq := uint64(1); seq <= writes; seq++ {
		lba := c.Base + seq%c.Ring
		encodeSector(disk[lba*SectorSize:(lba+1)*SectorSize], Sector{Seq: seq, LBA: lba, RunID: c.RunID})
	}
	return disk
}

func slotBytes(disk []byte, c Config, slot uint64) []byte {
	lba := c.Base + slot
	return disk[lba*SectorSize : (lba+1)*SectorSize]
}

func TestCheckClean(t *testing.T) {
	c := Config{RunID: 7, Base: 8, Ring: 100, Writes: 1000}
	for _, tc := range []struct {
		writes uint64
		want   Result
	}{
		{0, Result{}},
		{1, Result{Written: 1, MinSeq: 1, MaxSeq: 1}},
		{99, Result{Written: 99, MinSeq: 1, MaxSeq: 99}},
		{100, Result{Written: 100, MinSeq: 1, MaxSeq: 100}},
		{250, Result{Written: 100, MinSeq: 151, MaxSeq: 250}},
		{1000, Result{Written: 100, MinSeq: 901, MaxSeq: 1000}},
	} {
		got, err := Check(bytes.NewReader(guestDisk(t, c, tc.writes)), c)
		if err != nil || got != tc.want {
			t.Errorf("%d writes: Check = %+v, %v; want %+v", tc.writes, got, err, tc.want)
		}
	}
	// A ring of one sector and a ring larger than a read chunk.
	for _, c := range []Config{{Base: 2, Ring: 1}, {Base: 3, Ring: checkChunk*2 + 7}} {
		got, err := Check(bytes.NewReader(guestDisk(t, c, 3*c.Ring)), c)
		if want := (Result{Written: c.Ring, MinSeq: 2*c.Ring + 1, MaxSeq: 3 * c.Ring}); err != nil || got != want {
			t.Errorf("ring %d: Check = %+v, %v; want %+v", c.Ring, got, err, want)
		}
	}
}

func TestCheckFindsProblems(t *testing.T) {
	c := Config{RunID: 7, Base: 8, Ring: 100, Writes: 1000}
	const writes = 250 // slots hold 201..250 (slots 1-50) and 151..200 (50-99, 0)
	for _, tc := range []struct {
		name    string
		damage  func(disk []byte)
		want    error
		wantLBA uint64
	}{
		{"torn", func(d []byte) {
			s := slotBytes(d, c, 10)
			encodeSector(s[:SectorSize], Sector{Seq: 110, LBA: c.Base + 10, RunID: 7}) // older write ...
			tail := make([]byte, SectorSize)
			encodeSector(tail, Sector{Seq: 210, LBA: c.Base + 10, RunID: 7})
			copy(s[256:], tail[256:]) // ... with the newer one's second half
		}, ErrCorrupt, 18},
		{"bit flip", func(d []byte) { slotBytes(d, c, 60)[400] ^= 0x10 }, ErrCorrupt, 68},
		{"half zero", func(d []byte) { clear(slotBytes(d, c, 61)[:256]) }, ErrCorrupt, 69},
		{"copied to another slot", func(d []byte) { copy(slotBytes(d, c, 5), slotBytes(d, c, 6)) }, ErrMisplaced, 13},
		{"seq in the wrong slot", func(d []byte) {
			encodeSector(slotBytes(d, c, 5), Sector{Seq: 206, LBA: c.Base + 5, RunID: 7})
		}, ErrMisplaced, 13},
		{"other run", func(d []byte) {
			encodeSector(slotBytes(d, c, 7), Sector{Seq: 207, LBA: c.Base + 7, RunID: 8})
		}, ErrForeignRun, 15},
		{"beyond Writes", func(d []byte) {
			encodeSector(slotBytes(d, c, 3), Sector{Seq: 1003, LBA: c.Base + 3, RunID: 7})
		}, ErrCorrupt, 11},
		{"stale", func(d []byte) {
			encodeSector(slotBytes(d, c, 20), Sector{Seq: 120, LBA: c.Base + 20, RunID: 7})
		}, ErrLost, 28},
		{"unwritten", func(d []byte) { clear(slotBytes(d, c, 90)) }, ErrLost, 98},
		{"stale slot 0", func(d []byte) {
			encodeSector(slotBytes(d, c, 0), Sector{Seq: 100, LBA: c.Base, RunID: 7})
		}, ErrLost, 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			disk := guestDisk(t, c, writes)
			tc.damage(disk)
			_, err := Check(bytes.NewReader(disk), c)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Check = %v, want %v", err, tc.want)
			}
			if lba := "LBA " + strconv.FormatUint(tc.wantLBA, 10) + ":"; !strings.Contains(err.Error(), lba) {
				t.Fatalf("Check = %v, want it at %s", err, lba)
			}
			if n := strings.Count(err.Error(), "testguest: LBA"); n != 1 {
				t.Fatalf("Check reported %d problems, want 1:\n%v", n, err)
			}
		})
	}
}

func TestCheckLimitsReport(t *testing.T) {
	c := Config{RunID: 7, Base: 8, Ring: 100}
	disk := guestDisk(t, c, 150)
	for slot := range uint64(60) {
		slotBytes(disk, c, slot)[100] ^= 1
	}
	_, err := Check(bytes.NewReader(disk), c)
	if n := strings.Count(err.Error(), "testguest: LBA"); n != maxReported || !strings.Contains(err.Error(), "and 40 more problems") {
		t.Fatalf("Check reported %d problems:\n%v", n, err)
	}
}

func TestCheckShortDisk(t *testing.T) {
	c := Config{Base: 8, Ring: 100}
	disk := guestDisk(t, c, 50)
	if _, err := Check(bytes.NewReader(disk[:len(disk)-SectorSize]), c); err == nil || !strings.Contains(err.Error(), "reading LBAs") {
		t.Fatalf("Check on a short disk = %v", err)
	}
	if _, err := Check(bytes.NewReader(disk), Config{Ring: 1}); err == nil {
		t.Fatal("Check accepted an invalid config")
	}
}

// TestNewestFor compares newestFor with a naive search.
func TestNewestFor(t *testing.T) {
	for ring := uint64(1); ring <= 9; ring++ {
		for maxSeq := uint64(1); maxSeq <= 30; maxSeq++ {
			for slot := range ring {
				var want uint64
				for s := uint64(1); s <= maxSeq; s++ {
					if s%ring == slot {
						want = s
					}
				}
				if got := newestFor(slot, maxSeq, ring); got != want {
					t.Fatalf("newestFor(slot %d, max %d, ring %d) = %d, want %d", slot, maxSeq, ring, got, want)
				}
			}
		}
	}
}
