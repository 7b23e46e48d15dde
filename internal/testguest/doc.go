// Package testguest builds Tandem's test guest, a bootable x86 real-mode
// disk image that writes a verifiable stream of sectors to the disk it boots
// from, and checks what it left on the disk, in its RAM and on its serial
// port. End-to-end tests boot it in QEMU from a Tandem export to see that
// every write the guest completed is on the disk, through crashes,
// failovers and migrations.
//
// The image is emitted by Go code (asm.go is a tiny assembler for the few
// instructions the guest uses); nothing is assembled at test time.
//
// # What the guest does
//
// SeaBIOS loads sector 0 at LoadAddr and jumps to it with DL = boot drive.
// The guest prints "TANDEM-GUEST START" on COM1 (port 0x3F8), loads the
// rest of its ImageSectors sectors with int 13h AH=42h, fills in its
// counter pages, then loops with seq = 1, 2, 3 ...:
//
//  1. build the sector of seq at BufferAddr and write it with int 13h
//     AH=43h (extended write, one sector) to LBA Base + seq mod Ring, and
//     wait for the BIOS to return;
//  2. increment the counter of every counter page, in page order;
//  3. every ReportEvery writes, print "SEQ <seq>";
//  4. after Writes writes (Writes != 0), print "TANDEM-GUEST DONE <seq>"
//     and halt (cli; hlt).
//
// If the BIOS reports an error (carry set), the guest prints
// "TANDEM-GUEST ERROR <hh> SEQ <seq>", with hh the int 13h status (AH) in
// upper-case hex and seq the write that failed (0 if loading the image
// failed), and halts. Numbers are decimal otherwise; lines end with "\n".
// ParseLog reads these lines.
//
// # Memory layout
//
//	0x00500-0x07BFF  stack (SS:SP = 0:7C00, growing down)
//	0x07C00-0x07FFF  the image: code, parameters at image offset 0x180,
//	                 variables (seq at SeqAddr), disk address packets
//	0x08000-0x081FF  the sector being written (BufferAddr)
//	0x10000-...      CounterPages pages of 4 KiB (CounterBase), at most
//	                 MaxCounterPages, so the region ends by 0x80000
//
// Each counter page starts with four little-endian uint32: the counter, the
// magic "TNDC", the run id and the page index. Every counter counts the
// loop iterations whose disk write completed; since one loop increments the
// pages in order, a snapshot of the region (QMP pmemsave, with the vCPU
// stopped: pmemsave is not atomic against a running vCPU) taken at any
// moment shows counters that are equal or, during an increment pass, one
// higher on the first pages than on the rest. CheckCounters verifies this,
// which is what a live migration must preserve.
//
// # Sector format
//
// Each write is one 512-byte sector, little-endian:
//
//	0    8 bytes  magic "TNDMSEQ1"
//	8    uint64   seq, from 1
//	16   uint64   the LBA the sector was written to
//	24   uint32   run id (Config.RunID), to tell boots apart
//	28   uint32   0
//	32   120 x uint32 fill: with K = 0x9E3779B1 and 32-bit arithmetic,
//	              v = (uint32(seq) ^ runID) * K; v = (v ^ uint32(seq>>32)) * K;
//	              v = (v ^ uint32(lba)) * K; v ^= uint32(lba>>32); then
//	              for the dwords at offsets 32, 36, ... 508 in turn,
//	              v = v * 1664525 + 1013904223 and the dword is v
//
// The fill depends on every header field and on the position in the
// sector, so a sector mixing the bytes of two writes (torn), with any bit
// changed, or holding anything the guest did not write whole, fails
// ParseSector.
//
// # What Check guarantees
//
// Check reads the Ring sectors from Base and reports, each with its LBA: a
// sector that is neither all zero nor exactly a sector of the guest
// (ErrCorrupt), a sector at a place the guest would not write it
// (ErrMisplaced), a sector of another run id (ErrForeignRun), and, given the
// highest seq found, every slot that does not hold the newest write for it
// (ErrLost). Since the guest waits for each write before issuing the next,
// a clean Check with MaxSeq = n means that the ring holds writes
// max(1, n-Ring+1) .. n, each exactly as the guest wrote it: no write the
// guest completed before write n is missing. The newest writes themselves
// are checked against the serial log: a disk that lost acknowledged writes
// shows a MaxSeq below the log's LastSeq.
//
// A reboot of the same image starts again from seq 1 under the same run
// id, which Check reports as lost writes: boot each image once (QEMU
// -no-reboot) and give every boot its own RunID.
package testguest
