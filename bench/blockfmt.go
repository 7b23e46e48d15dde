package bench

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
)

// The Go load generator writes data it can check: every 4 KiB unit of a
// write starts with a header
//
//	[0:8]   magic "TNDMBNCH"
//	[8:16]  the unit's byte offset in the export (little endian)
//	[16:24] the stamp of the write that put it there (unique per write)
//	[24:28] CRC-32C of the unit with these 4 bytes zeroed
//
// followed by a pseudo-random body. A read checks the magic, the offset
// (catching misdirected reads and writes), the checksum (catching corrupted
// bytes) and, for blocks this run wrote, the stamp (catching lost writes and
// stale data).
const (
	unitSize  = 4096
	unitMagic = "TNDMBNCH"
	crcOff    = 24
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// fillBody fills b with the pseudo-random body pattern of seed.
func fillBody(b []byte, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 0x7a6e64656d))
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
}

// formatUnits stamps every 4 KiB unit of b, which will be written at
// offset off, with its header. len(b) must be a multiple of unitSize.
func formatUnits(b []byte, off int64, stamp uint64) {
	for u := 0; u < len(b); u += unitSize {
		p := b[u : u+unitSize]
		copy(p, unitMagic)
		binary.LittleEndian.PutUint64(p[8:], uint64(off)+uint64(u))
		binary.LittleEndian.PutUint64(p[16:], stamp)
		binary.LittleEndian.PutUint32(p[crcOff:], 0)
		binary.LittleEndian.PutUint32(p[crcOff:], crc32.Checksum(p, castagnoli))
	}
}

// unitStamp checks the unit p read at offset off and returns the stamp of
// the write it holds, or an error saying what is wrong with it.
func unitStamp(p []byte, off int64) (uint64, error) {
	if string(p[:8]) != unitMagic {
		return 0, fmt.Errorf("unit at %d: no header (bytes %x…): not data this generator wrote, or overwritten", off, p[:8])
	}
	if got := int64(binary.LittleEndian.Uint64(p[8:])); got != off {
		return 0, fmt.Errorf("unit at %d holds the data of offset %d (misdirected read or write)", off, got)
	}
	want := binary.LittleEndian.Uint32(p[crcOff:])
	h := crc32.Update(0, castagnoli, p[:crcOff])
	h = crc32.Update(h, castagnoli, []byte{0, 0, 0, 0})
	h = crc32.Update(h, castagnoli, p[crcOff+4:])
	if h != want {
		return 0, fmt.Errorf("unit at %d: checksum %#08x, want %#08x (corrupted data)", off, h, want)
	}
	return binary.LittleEndian.Uint64(p[16:]), nil
}
