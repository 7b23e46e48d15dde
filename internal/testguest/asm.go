package testguest

import (
	"encoding/binary"
	"fmt"
)

// This file is a tiny x86 real-mode assembler: just the instructions the
// guest uses, each encoded by hand and named after its nasm spelling
// (BITS 16). Operands of 32 bits get the 0x66 operand-size prefix, which
// real mode accepts on any 386 or later.

// r is a general register number as x86 encodes it: the same number names
// AL/AX/EAX, CL/CX/ECX and so on; the instruction picks the width.
type r byte

const (
	rAX r = iota
	rCX
	rDX
	rBX
	rSP
	rBP
	rSI
	rDI
)

// AH and BL share their numbers with SP and BX in byte instructions.
const (
	rAL = rAX
	rDL = rDX
	rBL = rBX
	rAH = rSP
)

// Segment register numbers as mov Sreg encodes them.
const (
	sES byte = 0
	sSS byte = 2
	sDS byte = 3
	sFS byte = 4
)

const (
	o32   = 0x66 // operand-size prefix: 32-bit operand
	fsPfx = 0x64 // FS segment override
)

// m is a memory operand [disp16]: a label of the image plus off, or, when
// label is empty, the absolute address off.
type m struct {
	label string
	off   int
}

// at returns the memory operand [label+off].
func at(label string, off int) m { return m{label: label, off: off} }

// abs returns the memory operand [addr].
func abs(addr int) m { return m{off: addr} }

type fixKind int

const (
	fixAbs16 fixKind = iota // 16-bit absolute address of label+add
	fixRel8                 // 8-bit displacement to label from the end of the field
	fixRel16                // 16-bit displacement to label from the end of the field
)

type fixup struct {
	pos   int
	label string
	add   int
	kind  fixKind
}

// assembler accumulates machine code loaded at LoadAddr. Errors (unknown or
// duplicate labels, jumps out of range) are collected and reported by
// finish, so that the program reads as a straight list of instructions.
type assembler struct {
	buf    []byte
	labels map[string]int
	fixups []fixup
	err    error
}

func newAssembler() *assembler { return &assembler{labels: map[string]int{}} }

func (a *assembler) fail(format string, args ...any) {
	if a.err == nil {
		a.err = fmt.Errorf(format, args...)
	}
}

// label defines name at the current position.
func (a *assembler) label(name string) {
	if _, ok := a.labels[name]; ok {
		a.fail("label %q defined twice", name)
	}
	a.labels[name] = len(a.buf)
}

// pos is the offset of the next byte in the image.
func (a *assembler) pos() int { return len(a.buf) }

func (a *assembler) emit(b ...byte) { a.buf = append(a.buf, b...) }

func (a *assembler) u16(v uint16) { a.buf = binary.LittleEndian.AppendUint16(a.buf, v) }
func (a *assembler) u32(v uint32) { a.buf = binary.LittleEndian.AppendUint32(a.buf, v) }
func (a *assembler) u64(v uint64) { a.buf = binary.LittleEndian.AppendUint64(a.buf, v) }

// padTo appends zero bytes up to offset off.
func (a *assembler) padTo(off int) {
	if len(a.buf) > off {
		a.fail("code overflows to offset %#x past %#x", len(a.buf), off)
		return
	}
	a.buf = append(a.buf, make([]byte, off-len(a.buf))...)
}

// ref emits a fixup field for label+add.
func (a *assembler) ref(label string, add int, kind fixKind) {
	a.fixups = append(a.fixups, fixup{pos: len(a.buf), label: label, add: add, kind: kind})
	if kind == fixRel8 {
		a.emit(0)
	} else {
		a.emit(0, 0)
	}
}

// addr16 emits the 16-bit address of label+add.
func (a *assembler) addr16(label string, add int) { a.ref(label, add, fixAbs16) }

// mem emits a ModRM byte with mod=00 rm=110 ([disp16]) and the displacement.
func (a *assembler) mem(reg byte, x m) {
	a.emit(reg<<3 | 0b110)
	if x.label == "" {
		a.u16(uint16(x.off))
		return
	}
	a.addr16(x.label, x.off)
}

// finish resolves the fixups and returns the code.
func (a *assembler) finish() ([]byte, error) {
	if a.err != nil {
		return nil, a.err
	}
	for _, f := range a.fixups {
		target, ok := a.labels[f.label]
		if !ok {
			return nil, fmt.Errorf("undefined label %q", f.label)
		}
		target += f.add
		switch f.kind {
		case fixAbs16:
			binary.LittleEndian.PutUint16(a.buf[f.pos:], uint16(LoadAddr+target))
		case fixRel8:
			d := target - (f.pos + 1)
			if d < -128 || d > 127 {
				return nil, fmt.Errorf("short jump at %#x to %q out of range (%d)", f.pos, f.label, d)
			}
			a.buf[f.pos] = byte(int8(d))
		case fixRel16:
			d := target - (f.pos + 2)
			binary.LittleEndian.PutUint16(a.buf[f.pos:], uint16(int16(d)))
		}
	}
	return a.buf, nil
}

// Instructions without operands.
func (a *assembler) cli()    { a.emit(0xFA) }
func (a *assembler) sti()    { a.emit(0xFB) }
func (a *assembler) cld()    { a.emit(0xFC) }
func (a *assembler) hlt()    { a.emit(0xF4) }
func (a *assembler) ret()    { a.emit(0xC3) }
func (a *assembler) lodsb()  { a.emit(0xAC) }
func (a *assembler) stosd()  { a.emit(o32, 0xAB) }
func (a *assembler) inALDX() { a.emit(0xEC) } // in al, dx
func (a *assembler) outDX()  { a.emit(0xEE) } // out dx, al

// intN is int n.
func (a *assembler) intN(n byte) { a.emit(0xCD, n) }

// push16 and pop16 are push r16 and pop r16.
func (a *assembler) push16(x r) { a.emit(0x50 + byte(x)) }
func (a *assembler) pop16(x r)  { a.emit(0x58 + byte(x)) }

// inc16, dec16 and inc32 are inc r16, dec r16 and inc r32.
func (a *assembler) inc16(x r) { a.emit(0x40 + byte(x)) }
func (a *assembler) dec16(x r) { a.emit(0x48 + byte(x)) }
func (a *assembler) inc32(x r) { a.emit(o32, 0x40+byte(x)) }

// movSregR16 is mov sreg, r16.
func (a *assembler) movSregR16(sreg byte, x r) { a.emit(0x8E, 0xC0|sreg<<3|byte(x)) }

// movR16Imm is mov r16, imm16.
func (a *assembler) movR16Imm(x r, v uint16) { a.emit(0xB8 + byte(x)); a.u16(v) }

// movR16Addr is mov r16, label+add (the address, not the contents).
func (a *assembler) movR16Addr(x r, label string, add int) {
	a.emit(0xB8 + byte(x))
	a.addr16(label, add)
}

// movR32Imm is mov r32, imm32.
func (a *assembler) movR32Imm(x r, v uint32) { a.emit(o32, 0xB8+byte(x)); a.u32(v) }

// movR8Imm is mov r8, imm8.
func (a *assembler) movR8Imm(x r, v byte) { a.emit(0xB0+byte(x), v) }

// ALU operations in their ModRM ("op r/m, reg") forms; opcode+2 and opcode+3
// are the "op reg, r/m" forms, opcode+1 the 16/32-bit width.
const (
	aluAdd byte = 0x00
	aluOr  byte = 0x08
	aluAdc byte = 0x10
	aluSbb byte = 0x18
	aluAnd byte = 0x20
	aluSub byte = 0x28
	aluXor byte = 0x30
	aluCmp byte = 0x38
	movOp  byte = 0x88
	testOp byte = 0x84 // test r/m, reg (no reversed form)
)

// The group-1 extension (/digit) of each ALU opcode for immediate forms.
func aluDigit(op byte) byte { return op >> 3 }

// rr8, rr16 and rr32 are "op dst, src" between registers.
func (a *assembler) rr8(op byte, dst, src r) { a.emit(op, 0xC0|byte(src)<<3|byte(dst)) }
func (a *assembler) rr16(op byte, dst, src r) {
	a.emit(op+1, 0xC0|byte(src)<<3|byte(dst))
}
func (a *assembler) rr32(op byte, dst, src r) {
	a.emit(o32, op+1, 0xC0|byte(src)<<3|byte(dst))
}

// rm32 is "op r32, [mem]" (mov r32, [mem] included). nasm encodes mov eax,
// [disp16] with the short form A1, and so do we.
func (a *assembler) rm32(op byte, dst r, x m) {
	if op == movOp && dst == rAX {
		a.emit(o32, 0xA1)
		a.memDisp(x)
		return
	}
	a.emit(o32, op+3)
	a.mem(byte(dst), x)
}

// mr32 is "op [mem], r32" (mov [mem], r32 included), with A3 for eax.
func (a *assembler) mr32(op byte, x m, src r) {
	if op == movOp && src == rAX {
		a.emit(o32, 0xA3)
		a.memDisp(x)
		return
	}
	a.emit(o32, op+1)
	a.mem(byte(src), x)
}

// movR8Mem and movMemR8 are mov r8, [mem] and mov [mem], r8.
func (a *assembler) movR8Mem(dst r, x m) { a.emit(0x8A); a.mem(byte(dst), x) }
func (a *assembler) movMemR8(x m, src r) { a.emit(0x88); a.mem(byte(src), x) }

// movR16Mem is mov r16, [mem].
func (a *assembler) movR16Mem(dst r, x m) { a.emit(0x8B); a.mem(byte(dst), x) }

func (a *assembler) memDisp(x m) {
	if x.label == "" {
		a.u16(uint16(x.off))
		return
	}
	a.addr16(x.label, x.off)
}

// miDword8 is "op dword [mem], imm8" (sign-extended), group 1 opcode 83.
func (a *assembler) miDword8(op byte, x m, v int8) {
	a.emit(o32, 0x83)
	a.mem(aluDigit(op), x)
	a.emit(byte(v))
}

// movMemImm32 is mov dword [mem], imm32.
func (a *assembler) movMemImm32(x m, v uint32) { a.emit(o32, 0xC7); a.mem(0, x); a.u32(v) }

// movMemImm16 is mov word [mem], imm16.
func (a *assembler) movMemImm16(x m, v uint16) { a.emit(0xC7); a.mem(0, x); a.u16(v) }

// movFSImm32 is mov dword [fs:disp16], imm32.
func (a *assembler) movFSImm32(disp uint16, v uint32) {
	a.emit(fsPfx)
	a.movMemImm32(abs(int(disp)), v)
}

// movFSR32 is mov [fs:disp16], r32.
func (a *assembler) movFSR32(disp uint16, src r) {
	a.emit(fsPfx, o32, 0x89)
	a.mem(byte(src), abs(int(disp)))
}

// incFSDword is inc dword [fs:disp16].
func (a *assembler) incFSDword(disp uint16) {
	a.emit(fsPfx, o32, 0xFF)
	a.mem(0, abs(int(disp)))
}

// addAXImm16 is add ax, imm16 (the accumulator short form).
func (a *assembler) addAXImm16(v uint16) { a.emit(0x05); a.u16(v) }

// addEAXImm32 is add eax, imm32 (the accumulator short form).
func (a *assembler) addEAXImm32(v uint32) { a.emit(o32, 0x05); a.u32(v) }

// imulEAXImm32 is imul eax, eax, imm32.
func (a *assembler) imulEAXImm32(v uint32) { a.emit(o32, 0x69, 0xC0); a.u32(v) }

// divR32 is div r32 (edx:eax / r32).
func (a *assembler) divR32(x r) { a.emit(o32, 0xF7, 0xF0|byte(x)) }

// ALU with an 8-bit immediate on AL (short forms) and on another r8.
func (a *assembler) alImm(op byte, v byte) { a.emit(op+4, v) } // op al, imm8
func (a *assembler) testALImm(v byte)      { a.emit(0xA8, v) }
func (a *assembler) r8Imm(op byte, x r, v byte) {
	a.emit(0x80, 0xC0|aluDigit(op)<<3|byte(x), v)
}

// shrR8Imm is shr r8, imm8.
func (a *assembler) shrR8Imm(x r, n byte) { a.emit(0xC0, 0xE8|byte(x), n) }

// Condition codes for jcc.
const (
	ccC  byte = 0x2 // carry (jc, jb)
	ccNC byte = 0x3 // no carry (jnc)
	ccZ  byte = 0x4 // zero (jz, je)
	ccNZ byte = 0x5 // not zero (jnz, jne)
	ccBE byte = 0x6 // below or equal (jbe)
)

// jccShort and jccNear are jcc short and jcc near to label.
func (a *assembler) jccShort(cc byte, label string) { a.emit(0x70 + cc); a.ref(label, 0, fixRel8) }
func (a *assembler) jccNear(cc byte, label string) {
	a.emit(0x0F, 0x80+cc)
	a.ref(label, 0, fixRel16)
}

// jmpShort, jmpNear and call are jmp short, jmp near and call to label.
func (a *assembler) jmpShort(label string) { a.emit(0xEB); a.ref(label, 0, fixRel8) }
func (a *assembler) jmpNear(label string)  { a.emit(0xE9); a.ref(label, 0, fixRel16) }
func (a *assembler) call(label string)     { a.emit(0xE8); a.ref(label, 0, fixRel16) }

// jmpFar0 is jmp 0:label, which loads CS with 0.
func (a *assembler) jmpFar0(label string) { a.emit(0xEA); a.addr16(label, 0); a.u16(0) }

// jcxz and loop branch short to label.
func (a *assembler) jcxz(label string) { a.emit(0xE3); a.ref(label, 0, fixRel8) }
func (a *assembler) loop(label string) { a.emit(0xE2); a.ref(label, 0, fixRel8) }
