package testguest

import (
	"bytes"
	"encoding/hex"
	"math"
	"strings"
	"testing"
)

func testConfig() Config {
	return Config{RunID: 0x12345678, Base: 8, Ring: 64, Writes: 2000, ReportEvery: 100, CounterPages: 4}
}

func TestImage(t *testing.T) {
	c := testConfig()
	img, err := Image(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(img) != ImageSectors*SectorSize {
		t.Fatalf("image is %d bytes, want %d", len(img), ImageSectors*SectorSize)
	}
	if img[510] != 0x55 || img[511] != 0xAA {
		t.Fatalf("boot signature % x, want 55 aa", img[510:512])
	}
	if img[0] != 0xFA { // cli: the first instruction
		t.Errorf("image starts with %#x, want cli (0xfa)", img[0])
	}
	if len(img) > SectorSize && allZero(img[SectorSize:]) {
		t.Error("sector 1 is empty: the main loop is missing")
	}
	got, err := ImageConfig(img)
	if err != nil {
		t.Fatal(err)
	}
	if got != c {
		t.Fatalf("ImageConfig = %+v, want %+v", got, c)
	}
	again, _ := Image(c)
	if !bytes.Equal(img, again) {
		t.Fatal("Image is not deterministic")
	}
	// Another run id changes the parameter block and nothing else.
	c2 := c
	c2.RunID = 0x9abcdef0
	img2, _ := Image(c2)
	for i := range img {
		if img[i] != img2[i] && (i < offRunID || i >= offRunID+4) {
			t.Fatalf("images for run ids %#x and %#x differ at byte %#x", c.RunID, c2.RunID, i)
		}
	}
	if bytes.Equal(img, img2) {
		t.Fatal("the run id is not in the image")
	}
}

// TestImageStrings checks that the guest's messages are in the image as
// ParseLog expects them.
func TestImageStrings(t *testing.T) {
	img, _ := Image(testConfig())
	for _, s := range []string{"TANDEM-GUEST START\n\x00", " SEQ \x00", "TANDEM-GUEST DONE \x00", "TANDEM-GUEST ERROR \x00"} {
		if !bytes.Contains(img[:SectorSize], []byte(s)) {
			t.Errorf("sector 0 lacks %q", s)
		}
	}
}

func TestImageConfigRejects(t *testing.T) {
	img, _ := Image(testConfig())
	zeroRing := bytes.Clone(img)
	clear(zeroRing[offRing : offRing+8])
	noSig := bytes.Clone(img)
	noSig[511] = 0
	for name, b := range map[string][]byte{
		"empty":     nil,
		"short":     img[:SectorSize],
		"zeros":     make([]byte, ImageSectors*SectorSize),
		"zero ring": zeroRing,
		"no sig":    noSig,
	} {
		if c, err := ImageConfig(b); err == nil {
			t.Errorf("%s: ImageConfig = %+v, want an error", name, c)
		}
	}
}

func TestValidate(t *testing.T) {
	ok := testConfig()
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   string // "" for valid
	}{
		{"default", func(*Config) {}, ""},
		{"base at image end", func(c *Config) { c.Base = ImageSectors }, ""},
		{"ring 1", func(c *Config) { c.Ring = 1 }, ""},
		{"forever, no reports, no counters", func(c *Config) { c.Writes, c.ReportEvery, c.CounterPages = 0, 0, 0 }, ""},
		{"max counter pages", func(c *Config) { c.CounterPages = MaxCounterPages }, ""},
		{"base 0", func(c *Config) { c.Base = 0 }, "overlaps"},
		{"base in image", func(c *Config) { c.Base = ImageSectors - 1 }, "overlaps"},
		{"ring 0", func(c *Config) { c.Ring = 0 }, "Ring"},
		{"huge ring", func(c *Config) { c.Ring = math.MaxUint64 }, "exceeds"},
		{"huge base", func(c *Config) { c.Base = math.MaxInt64 / SectorSize }, "exceeds"},
		{"negative pages", func(c *Config) { c.CounterPages = -1 }, "CounterPages"},
		{"too many pages", func(c *Config) { c.CounterPages = MaxCounterPages + 1 }, "CounterPages"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.mutate(&c)
			err := c.Validate()
			_, imgErr := Image(c)
			if tc.want == "" {
				if err != nil || imgErr != nil {
					t.Fatalf("Validate = %v, Image error = %v, want nil", err, imgErr)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want an error mentioning %q", err, tc.want)
			}
			if imgErr == nil {
				t.Fatal("Image accepted an invalid config")
			}
		})
	}
}

func TestCounterRegionFitsConventionalMemory(t *testing.T) {
	if end := CounterBase + MaxCounterPages*CounterPageSize; end > 0x80000 {
		t.Fatalf("counter region ends at %#x, past 0x80000", end)
	}
	if CounterBase < LoadAddr+ImageSectors*SectorSize || CounterBase < BufferAddr+SectorSize {
		t.Fatal("counter region overlaps the image or the buffer")
	}
}

// TestEncodings checks the assembler against bytes nasm produced for the
// same instructions (BITS 16).
func TestEncodings(t *testing.T) {
	for _, tc := range []struct {
		nasm string
		emit func(a *assembler)
		want string
	}{
		{"mov eax, [0x1234]", func(a *assembler) { a.rm32(movOp, rAX, abs(0x1234)) }, "66a13412"},
		{"mov [0x1234], eax", func(a *assembler) { a.mr32(movOp, abs(0x1234), rAX) }, "66a33412"},
		{"mov edx, [0x1234]", func(a *assembler) { a.rm32(movOp, rDX, abs(0x1234)) }, "668b163412"},
		{"mov [0x1234], ebx", func(a *assembler) { a.mr32(movOp, abs(0x1234), rBX) }, "66891e3412"},
		{"cmp eax, [0x1234]", func(a *assembler) { a.rm32(aluCmp, rAX, abs(0x1234)) }, "663b063412"},
		{"adc eax, [0x1234]", func(a *assembler) { a.rm32(aluAdc, rAX, abs(0x1234)) }, "6613063412"},
		{"add dword [0x1234], 1", func(a *assembler) { a.miDword8(aluAdd, abs(0x1234), 1) }, "668306341201"},
		{"sbb dword [0x1234], 0", func(a *assembler) { a.miDword8(aluSbb, abs(0x1234), 0) }, "66831e341200"},
		{"mov dword [0x1234], 0x11223344", func(a *assembler) { a.movMemImm32(abs(0x1234), 0x11223344) }, "66c706341244332211"},
		{"mov word [0x1234], 0x5566", func(a *assembler) { a.movMemImm16(abs(0x1234), 0x5566) }, "c70634126655"},
		{"mov dword [fs:4], 0x11223344", func(a *assembler) { a.movFSImm32(4, 0x11223344) }, "6466c706040044332211"},
		{"mov [fs:8], edx", func(a *assembler) { a.movFSR32(8, rDX) }, "646689160800"},
		{"inc dword [fs:0]", func(a *assembler) { a.incFSDword(0) }, "6466ff060000"},
		{"imul eax, eax, 0x11223344", func(a *assembler) { a.imulEAXImm32(0x11223344) }, "6669c044332211"},
		{"div ecx", func(a *assembler) { a.divR32(rCX) }, "66f7f1"},
		{"mov bl, ah", func(a *assembler) { a.rr8(movOp, rBL, rAH) }, "88e3"},
		{"shr al, 4", func(a *assembler) { a.shrR8Imm(rAL, 4) }, "c0e804"},
		{"add dl, '0'", func(a *assembler) { a.r8Imm(aluAdd, rDL, '0') }, "80c230"},
		{"mov fs, ax", func(a *assembler) { a.movSregR16(sFS, rAX) }, "8ee0"},
		{"mov ss, ax", func(a *assembler) { a.movSregR16(sSS, rAX) }, "8ed0"},
		{"xor ebx, ebx", func(a *assembler) { a.rr32(aluXor, rBX, rBX) }, "6631db"},
		{"or eax, ebx", func(a *assembler) { a.rr32(aluOr, rAX, rBX) }, "6609d8"},
		{"mov dl, [0x1234]", func(a *assembler) { a.movR8Mem(rDL, abs(0x1234)) }, "8a163412"},
		{"mov cx, [0x1234]", func(a *assembler) { a.movR16Mem(rCX, abs(0x1234)) }, "8b0e3412"},
	} {
		a := newAssembler()
		tc.emit(a)
		got, err := a.finish()
		if err != nil {
			t.Fatalf("%s: %v", tc.nasm, err)
		}
		if hex.EncodeToString(got) != tc.want {
			t.Errorf("%s: got %x, want %s", tc.nasm, got, tc.want)
		}
	}
}

func TestAssemblerLabels(t *testing.T) {
	// Jumps and absolute addresses resolve against the load address.
	a := newAssembler()
	a.label("top")
	a.jmpShort("end")           // eb 05: 2 + 5 = 7
	a.jmpFar0("top")            // ea 00 7c 00 00 (jmp 0:0x7c00)
	a.label("end")              // at 7
	a.jccNear(ccNZ, "top")      // 0f 85 f5 ff: 7+4 = 11, 0-11 = -11
	a.movR16Addr(rSI, "end", 1) // be 08 7c
	got, err := a.finish()
	if err != nil {
		t.Fatal(err)
	}
	if want := "eb05ea007c00000f85f5ffbe087c"; hex.EncodeToString(got) != want {
		t.Fatalf("got %x, want %s", got, want)
	}

	for name, build := range map[string]func(a *assembler){
		"undefined": func(a *assembler) { a.call("nowhere") },
		"duplicate": func(a *assembler) { a.label("x"); a.label("x") },
		"far short": func(a *assembler) { a.label("x"); a.padTo(200); a.jmpShort("x") },
		"overflow":  func(a *assembler) { a.padTo(10); a.padTo(5) },
	} {
		a := newAssembler()
		build(a)
		if _, err := a.finish(); err == nil {
			t.Errorf("%s: finish succeeded", name)
		}
	}
	if _, err := program(Config{}); err != nil {
		t.Fatalf("program fails on a zero config: %v", err)
	}
}
