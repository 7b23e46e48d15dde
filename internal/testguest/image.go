package testguest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// SectorSize is the size of a disk sector, of the guest's writes and of the
// image's unit.
const SectorSize = 512

// ImageSectors is the size of the boot image in sectors. Config.Base must be
// at least this, so that the guest never overwrites its own code.
const ImageSectors = 2

// Guest memory layout (physical addresses). The BIOS loads sector 0 at
// LoadAddr; the guest loads the rest of the image right after it, builds
// each sector it writes at BufferAddr and keeps its stack below LoadAddr.
const (
	LoadAddr   = 0x7C00
	BufferAddr = 0x8000
)

// Counter region layout: CounterPages pages of CounterPageSize bytes from
// CounterBase. Each page starts with four little-endian uint32 fields: the
// counter (CounterOffset), CounterMagic (CounterMagicOffset), the run id
// (CounterRunIDOffset) and the page's index (CounterIndexOffset). The
// guest writes the last three once at boot and increments every counter,
// in page order, once per loop iteration after the iteration's disk write.
const (
	CounterBase        = 0x10000
	CounterPageSize    = 4096
	MaxCounterPages    = 112 // the region ends at or below 0x80000
	CounterOffset      = 0
	CounterMagicOffset = 4
	CounterRunIDOffset = 8
	CounterIndexOffset = 12
	// CounterMagic is "TNDC" read as a little-endian uint32.
	CounterMagic uint32 = 'T' | 'N'<<8 | 'D'<<16 | 'C'<<24
)

// Config parameterizes a guest image.
type Config struct {
	// RunID tags every sector the guest writes, to tell boots apart.
	RunID uint32
	// Base is the first LBA of the ring; at least ImageSectors.
	Base uint64
	// Ring is the number of sectors in the ring (at least 1). Write seq goes
	// to LBA Base + seq mod Ring.
	Ring uint64
	// Writes is the number of writes before the guest prints DONE and
	// halts; 0 runs forever.
	Writes uint64
	// ReportEvery prints "SEQ n" after every ReportEvery writes; 0 never.
	ReportEvery uint64
	// CounterPages is the number of RAM counter pages (0..MaxCounterPages).
	CounterPages int
}

// Validate reports the first problem with c.
func (c Config) Validate() error {
	switch {
	case c.Base < ImageSectors:
		return fmt.Errorf("testguest: Base %d overlaps the %d-sector image", c.Base, ImageSectors)
	case c.Ring == 0:
		return errors.New("testguest: Ring must be at least 1")
	case c.Ring > math.MaxInt64/SectorSize || c.Base > math.MaxInt64/SectorSize-c.Ring:
		return fmt.Errorf("testguest: Base %d + Ring %d sectors exceeds a 63-bit byte offset", c.Base, c.Ring)
	case c.CounterPages < 0 || c.CounterPages > MaxCounterPages:
		return fmt.Errorf("testguest: CounterPages %d not in [0, %d]", c.CounterPages, MaxCounterPages)
	}
	return nil
}

// DiskSize is the smallest disk, in bytes, that holds the image and the
// ring of a valid c.
func (c Config) DiskSize() int64 { return int64((c.Base + c.Ring) * SectorSize) }

// Offsets in the image of the parameter block, which Image fills and
// ImageConfig reads back, and of the guest's variables after it.
const (
	paramsOffset = 0x180
	imageMagic   = "TNDMGST1"
	offRunID     = paramsOffset + 8
	offPages     = paramsOffset + 12 // uint16, then 2 bytes of padding
	offBase      = paramsOffset + 16
	offRing      = paramsOffset + 24
	offWrites    = paramsOffset + 32
	offReport    = paramsOffset + 40
	offRepLeft   = paramsOffset + 48 // variables from here
	offSeq       = offRepLeft + 8
)

// SeqAddr is the guest-physical address of the guest's seq (uint64): the
// number of the write in progress, or of the last one when the guest halted.
const SeqAddr = LoadAddr + offSeq

// Sector header layout (see doc.go).
const (
	sectorMagic = "TNDMSEQ1"
	hdrSeq      = 8
	hdrLBA      = 16
	hdrRunID    = 24
	hdrReserved = 28
	hdrSize     = 32
	fillDwords  = (SectorSize - hdrSize) / 4
	fillSeedMul = 0x9E3779B1
	fillLCGMul  = 1664525
	fillLCGAdd  = 1013904223
)

// The counter pages as real-mode segments: the first page's segment and the
// step from one page to the next, in 16-byte paragraphs.
const (
	counterSegment = CounterBase >> 4
	pageParas      = CounterPageSize >> 4
)

// Image returns the boot image for c: ImageSectors sectors to be written at
// LBA 0 of the disk the guest boots from.
func Image(c Config) ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	img, err := program(c)
	if err != nil {
		return nil, fmt.Errorf("testguest: assembling the guest: %w", err)
	}
	if len(img) != ImageSectors*SectorSize {
		return nil, fmt.Errorf("testguest: image is %d bytes, want %d", len(img), ImageSectors*SectorSize)
	}
	return img, nil
}

// ImageConfig reads the Config back from the first ImageSectors sectors of
// a disk holding an image built by Image.
func ImageConfig(img []byte) (Config, error) {
	if len(img) < ImageSectors*SectorSize || !bytes.Equal(img[paramsOffset:offRunID], []byte(imageMagic)) ||
		img[510] != 0x55 || img[511] != 0xAA {
		return Config{}, errors.New("testguest: not a test guest image")
	}
	le := binary.LittleEndian
	c := Config{
		RunID:        le.Uint32(img[offRunID:]),
		CounterPages: int(le.Uint16(img[offPages:])),
		Base:         le.Uint64(img[offBase:]),
		Ring:         le.Uint64(img[offRing:]),
		Writes:       le.Uint64(img[offWrites:]),
		ReportEvery:  le.Uint64(img[offReport:]),
	}
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("testguest: image parameters: %w", err)
	}
	return c, nil
}

// program assembles the guest. Sector 0 holds the entry point, the loader of
// the rest of the image, the serial output routines, the error path, the
// parameters and the variables; sector 1 holds the main loop.
func program(c Config) ([]byte, error) {
	a := newAssembler()

	// Entry: SeaBIOS jumps to 0:7C00 or 7C0:0 with DL = boot drive.
	a.cli()
	a.rr16(aluXor, rAX, rAX)   // xor ax, ax
	a.movSregR16(sDS, rAX)     // mov ds, ax
	a.movSregR16(sES, rAX)     // mov es, ax
	a.movSregR16(sSS, rAX)     // mov ss, ax
	a.movR16Imm(rSP, LoadAddr) // mov sp, 0x7C00
	a.jmpFar0("norm")          // jmp 0:norm
	a.label("norm")
	a.sti()
	a.cld()
	a.movMemR8(at("drive", 0), rDL) // mov [drive], dl
	a.movR16Addr(rSI, "msg_start", 0)
	a.call("puts")
	// Load sectors 1.. with int 13h AH=42h (extended read).
	a.movR16Addr(rSI, "ldap", 0)    // mov si, ldap
	a.movR8Imm(rAH, 0x42)           // mov ah, 0x42
	a.movR8Mem(rDL, at("drive", 0)) // mov dl, [drive]
	a.intN(0x13)                    // int 0x13
	a.jccNear(ccNC, "main")         // jnc near main

	// ioerr: AH = BIOS status. Print "TANDEM-GUEST ERROR hh SEQ n", halt.
	a.label("ioerr")
	a.rr8(movOp, rBL, rAH) // mov bl, ah
	a.movR16Addr(rSI, "msg_err", 0)
	a.call("puts")
	a.rr8(movOp, rAL, rBL) // mov al, bl
	a.call("puthex8")
	a.movR16Addr(rSI, "msg_seq", 0) // " SEQ "
	a.call("puts")
	a.call("putseq")
	a.label("halt")
	a.cli()
	a.hlt()
	a.jmpShort("halt")

	// putseq prints the 64-bit [seq] in decimal and a newline, dividing
	// hi:lo by 10 with two 32-bit divisions per digit.
	a.label("putseq")
	a.rm32(movOp, rBX, at("seq", 4)) // mov ebx, [seq+4]
	a.rm32(movOp, rDI, at("seq", 0)) // mov edi, [seq]
	a.movR32Imm(rCX, 10)             // mov ecx, 10
	a.rr16(aluXor, rBP, rBP)         // xor bp, bp (digit count)
	a.label("pd")
	a.rr32(aluXor, rDX, rDX)  // xor edx, edx
	a.rr32(movOp, rAX, rBX)   // mov eax, ebx
	a.divR32(rCX)             // div ecx
	a.rr32(movOp, rBX, rAX)   // mov ebx, eax
	a.rr32(movOp, rAX, rDI)   // mov eax, edi
	a.divR32(rCX)             // div ecx
	a.rr32(movOp, rDI, rAX)   // mov edi, eax
	a.r8Imm(aluAdd, rDL, '0') // add dl, '0'
	a.push16(rDX)
	a.inc16(rBP)
	a.rr32(aluOr, rAX, rBX) // or eax, ebx
	a.jccShort(ccNZ, "pd")
	a.label("pp")
	a.pop16(rAX)
	a.call("putc")
	a.dec16(rBP)
	a.jccShort(ccNZ, "pp")
	a.movR8Imm(rAL, '\n')
	a.jmpShort("putc")

	// puts prints the NUL-terminated string at DS:SI.
	a.label("puts")
	a.lodsb()
	a.rr8(testOp, rAL, rAL) // test al, al
	a.jccShort(ccZ, "puts_ret")
	a.call("putc")
	a.jmpShort("puts")
	a.label("puts_ret")
	a.ret()

	// puthex8 prints AL as two upper-case hex digits.
	a.label("puthex8")
	a.push16(rAX)
	a.shrR8Imm(rAL, 4)
	a.call("hexdig")
	a.pop16(rAX)
	a.alImm(aluAnd, 0x0F)
	a.label("hexdig")
	a.alImm(aluAdd, '0')
	a.alImm(aluCmp, '9')
	a.jccShort(ccBE, "putc")
	a.alImm(aluAdd, 'A'-'9'-1)

	// putc writes AL to COM1 once the transmitter holding register is empty.
	a.label("putc")
	a.push16(rDX)
	a.push16(rAX)
	a.movR16Imm(rDX, 0x3FD) // line status register
	a.label("putc_wait")
	a.inALDX()
	a.testALImm(0x20)
	a.jccShort(ccZ, "putc_wait")
	a.pop16(rAX)
	a.movR16Imm(rDX, 0x3F8)
	a.outDX()
	a.pop16(rDX)
	a.ret()

	str := func(label, s string) { a.label(label); a.emit([]byte(s)...); a.emit(0) }
	str("msg_start", "TANDEM-GUEST START\n")
	str("msg_seq", " SEQ ")
	str("msg_done", "TANDEM-GUEST DONE ")
	str("msg_err", "TANDEM-GUEST ERROR ")

	// Parameters (read back by ImageConfig), then variables, at fixed
	// offsets.
	place := func(label string, off int) {
		if a.pos() != off {
			a.fail("%s at %#x, want %#x", label, a.pos(), off)
		}
		a.label(label)
	}
	a.padTo(paramsOffset)
	a.emit([]byte(imageMagic)...)
	place("runid", offRunID)
	a.u32(c.RunID)
	place("ctrpages", offPages)
	a.u16(uint16(c.CounterPages))
	a.u16(0)
	place("base", offBase)
	a.u64(c.Base)
	place("ring", offRing)
	a.u64(c.Ring)
	place("writes", offWrites)
	a.u64(c.Writes)
	place("repevery", offReport)
	a.u64(c.ReportEvery)
	place("repleft", offRepLeft) // writes left until the next SEQ report
	a.u64(c.ReportEvery)
	place("seq", offSeq) // the write in progress or last done
	a.u64(0)
	a.label("slot") // seq mod Ring
	a.u64(0)
	dap := func(label string, count uint16, buf uint16, lba uint64) {
		a.label(label)
		a.emit(16, 0)
		a.u16(count)
		a.u16(buf) // offset
		a.u16(0)   // segment
		a.u64(lba)
	}
	dap("dap", 1, BufferAddr, 0)                        // the ring write
	dap("ldap", ImageSectors-1, LoadAddr+SectorSize, 1) // the image load
	a.label("drive")
	a.emit(0)
	a.padTo(510)
	a.emit(0x55, 0xAA)

	// Sector 1: initialize the counter pages, then loop.
	a.label("main")
	a.movR16Mem(rCX, at("ctrpages", 0)) // mov cx, [ctrpages]
	a.movR16Imm(rAX, counterSegment)    // mov ax, CTRSEG
	a.rr32(aluXor, rBX, rBX)            // xor ebx, ebx (page index)
	a.rm32(movOp, rDX, at("runid", 0))  // mov edx, [runid]
	a.label("ci")
	a.jcxz("mainloop")
	a.movSregR16(sFS, rAX)                         // mov fs, ax
	a.movFSImm32(CounterOffset, 0)                 // mov dword [fs:0], 0
	a.movFSImm32(CounterMagicOffset, CounterMagic) // mov dword [fs:4], 'TNDC'
	a.movFSR32(CounterRunIDOffset, rDX)            // mov [fs:8], edx
	a.movFSR32(CounterIndexOffset, rBX)            // mov [fs:12], ebx
	a.inc32(rBX)
	a.addAXImm16(pageParas) // add ax, 0x100
	a.dec16(rCX)
	a.jmpShort("ci")

	a.label("mainloop")
	// seq++; slot++; if slot == Ring { slot = 0 }
	a.miDword8(aluAdd, at("seq", 0), 1)
	a.miDword8(aluAdc, at("seq", 4), 0)
	a.miDword8(aluAdd, at("slot", 0), 1)
	a.miDword8(aluAdc, at("slot", 4), 0)
	a.rm32(movOp, rAX, at("slot", 0))
	a.rm32(aluCmp, rAX, at("ring", 0))
	a.jccShort(ccNZ, "nowrap")
	a.rm32(movOp, rAX, at("slot", 4))
	a.rm32(aluCmp, rAX, at("ring", 4))
	a.jccShort(ccNZ, "nowrap")
	a.rr32(aluXor, rAX, rAX)
	a.mr32(movOp, at("slot", 0), rAX)
	a.mr32(movOp, at("slot", 4), rAX)
	a.label("nowrap")
	// LBA = Base + slot, into the DAP and the sector header.
	a.rm32(movOp, rAX, at("base", 0))
	a.rm32(aluAdd, rAX, at("slot", 0))
	a.mr32(movOp, at("dap", 8), rAX)
	a.mr32(movOp, abs(BufferAddr+hdrLBA), rAX)
	a.rm32(movOp, rAX, at("base", 4))
	a.rm32(aluAdc, rAX, at("slot", 4))
	a.mr32(movOp, at("dap", 12), rAX)
	a.mr32(movOp, abs(BufferAddr+hdrLBA+4), rAX)
	// Header: magic, seq, run id, reserved.
	le := binary.LittleEndian
	a.movMemImm32(abs(BufferAddr), le.Uint32([]byte(sectorMagic[:4])))
	a.movMemImm32(abs(BufferAddr+4), le.Uint32([]byte(sectorMagic[4:])))
	a.rm32(movOp, rAX, at("seq", 0))
	a.mr32(movOp, abs(BufferAddr+hdrSeq), rAX)
	a.rm32(movOp, rDX, at("seq", 4))
	a.mr32(movOp, abs(BufferAddr+hdrSeq+4), rDX)
	a.rm32(movOp, rBX, at("runid", 0))
	a.mr32(movOp, abs(BufferAddr+hdrRunID), rBX)
	a.movMemImm32(abs(BufferAddr+hdrReserved), 0)
	// Fill: seed v from seq, run id and LBA, then one LCG step per dword
	// (see encodeSector).
	a.rr32(aluXor, rAX, rBX) // xor eax, ebx: seqlo ^ runid
	a.imulEAXImm32(fillSeedMul)
	a.rr32(aluXor, rAX, rDX) // ^ seqhi
	a.imulEAXImm32(fillSeedMul)
	a.rm32(aluXor, rAX, abs(BufferAddr+hdrLBA)) // ^ lbalo
	a.imulEAXImm32(fillSeedMul)
	a.rm32(aluXor, rAX, abs(BufferAddr+hdrLBA+4)) // ^ lbahi
	a.movR16Imm(rDI, BufferAddr+hdrSize)
	a.movR16Imm(rCX, fillDwords)
	a.label("fill")
	a.imulEAXImm32(fillLCGMul)
	a.addEAXImm32(fillLCGAdd)
	a.stosd() // mov [es:di], eax; di += 4
	a.loop("fill")
	// int 13h AH=43h AL=0: extended write of one sector.
	a.movMemImm16(at("dap", 2), 1) // the BIOS may have changed the count
	a.movR16Addr(rSI, "dap", 0)
	a.movR16Imm(rAX, 0x4300)
	a.movR8Mem(rDL, at("drive", 0))
	a.intN(0x13)
	a.jccNear(ccC, "ioerr")
	// Increment the counter of every page, in page order.
	a.movR16Mem(rCX, at("ctrpages", 0))
	a.movR16Imm(rAX, counterSegment)
	a.label("ctr")
	a.jcxz("ctrdone")
	a.movSregR16(sFS, rAX)
	a.incFSDword(CounterOffset)
	a.addAXImm16(pageParas)
	a.dec16(rCX)
	a.jmpShort("ctr")
	a.label("ctrdone")
	// Report every ReportEvery writes.
	a.rm32(movOp, rAX, at("repevery", 0))
	a.rm32(aluOr, rAX, at("repevery", 4))
	a.jccShort(ccZ, "norep")
	a.miDword8(aluSub, at("repleft", 0), 1)
	a.miDword8(aluSbb, at("repleft", 4), 0)
	a.rm32(movOp, rAX, at("repleft", 0))
	a.rm32(aluOr, rAX, at("repleft", 4))
	a.jccShort(ccNZ, "norep")
	a.rm32(movOp, rAX, at("repevery", 0))
	a.mr32(movOp, at("repleft", 0), rAX)
	a.rm32(movOp, rAX, at("repevery", 4))
	a.mr32(movOp, at("repleft", 4), rAX)
	a.movR16Addr(rSI, "msg_seq", 1) // "SEQ "
	a.call("puts")
	a.call("putseq")
	a.label("norep")
	// Done when Writes != 0 && seq == Writes.
	a.rm32(movOp, rAX, at("writes", 0))
	a.rm32(aluOr, rAX, at("writes", 4))
	a.jccNear(ccZ, "mainloop")
	a.rm32(movOp, rAX, at("seq", 0))
	a.rm32(aluCmp, rAX, at("writes", 0))
	a.jccNear(ccNZ, "mainloop")
	a.rm32(movOp, rAX, at("seq", 4))
	a.rm32(aluCmp, rAX, at("writes", 4))
	a.jccNear(ccNZ, "mainloop")
	a.movR16Addr(rSI, "msg_done", 0)
	a.call("puts")
	a.call("putseq")
	a.jmpNear("halt")
	a.padTo(ImageSectors * SectorSize)
	return a.finish()
}
