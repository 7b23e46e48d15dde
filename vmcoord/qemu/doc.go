// Package qemu runs and supervises one QEMU process for one VM whose disks
// are NBD exports (tandem volumes), and wraps the QMP mechanics of live
// migration. It knows QEMU, not tandem: fencing the old writer, choosing
// hosts and writer epochs is the caller's (vmcoord's) business, done around
// these calls.
//
// # The command line
//
// Spec.Args builds it (verified against QEMU 7.2): qemu-system-x86_64 with
// TCG (-accel tcg), -nodefaults -no-user-config -display none, QMP on
// QMPSocketFile and COM1 to SerialLogFile in the VM's run directory,
// QEMU's own output in QEMULogFile, and for each disk
//
//	-blockdev {"driver":"nbd","node-name":"diskN","server":{...},"export":"vol0@7","reconnect-delay":5}
//	-device virtio-blk-pci,id=vdiskN,drive=diskN,werror=stop,rerror=stop[,bootindex=0]
//
// The export name goes through untouched (JSON, no option escaping). When
// the NBD server goes away, QEMU's client holds I/O for reconnect-delay
// while it reconnects (its own background retries come 1, 2, 4, 8, 16 s
// apart), then fails it; werror=stop/rerror=stop turn the failure into a
// pause (BLOCK_IO_ERROR, run state io-error) instead of a guest-visible
// error, and "cont" retries the failed requests. QEMU always starts
// paused (-S); Start resumes it once the supervisor watches its events.
//
// # Running a VM
//
//	p, err := qemu.Start(ctx, spec, dir, qemu.Options{Logger: log, StorageReady: ready})
//	st, err := p.Status(ctx)  // "running", "io-error", ...
//	err = p.Stop(ctx)         // quit; SIGKILL after Options.StopTimeout
//	<-p.Done(); err = p.Wait()
//
// The supervisor resumes a VM that a disk error paused: after each
// BLOCK_IO_ERROR with action "stop" it waits (Options.StorageReady if set,
// and a backoff of 100 ms doubling to 2 s), checks that the VM is still in
// io-error (so it never resumes a VM someone else paused), sends "cont",
// and starts again if the retried requests fail again within the backoff.
// A VM already in io-error when the supervisor starts (Attach, after the
// agent was away longer than the disks' reconnect-delay: the error came
// with nobody to resume it) is resumed the same way.
//
// # Live migration
//
// Destination (same Spec, Incoming set, on the other host):
//
//	dst, _ := qemu.Start(ctx, spec /* Incoming: true */, dir, opts)
//	uri, _ := dst.MigrateIncoming(ctx, "tcp:0.0.0.0:0") // late-block-activate; returns the bound URI
//
// Source:
//
//	src.Migrate(ctx, uri, qemu.MigrateParams{})                // events, pause-before-switchover
//	src.WaitMigration(ctx, qemu.MigrationPreSwitchover)        // guest stopped, disks still active
//	// the caller's disk barrier and fence of the source's writer epoch
//	src.MigrateContinue(ctx)
//	src.WaitMigration(ctx, qemu.MigrationCompleted)            // source: postmigrate, disks released
//	dst.WaitMigration(ctx, qemu.MigrationCompleted)            // destination: paused, disks inactive
//	dst.Cont(ctx)                                              // destination takes over its disks and runs
//	src.Stop(ctx)
//
// or, to give up at pre-switchover, src.MigrateCancel: the destination
// exits and QEMU 7.2 resumes the source guest by itself (no "cont"
// needed), so a fence set for the destination must be lifted first.
//
// QEMU takes no lock on NBD disks: a source resumed after the switchover
// and the destination would both write. The storage must fence the old
// writer; this package does not.
package qemu
