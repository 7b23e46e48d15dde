// Package e2e holds Tandem's end-to-end tests: each test builds the real
// tandem binary (internal/testbin), starts "tandem agent" on its own
// temporary data directory and drives it with real NBD clients, never with
// our own client code:
//
//   - qemu-io: pattern writes and reads, FUA writes, discard, write-zeroes
//     with and without unmap, byte-granular I/O and queued AIO, with the
//     resulting allocation checked through nbdinfo --map;
//   - qemu-img: convert into and out of an export, compare, map;
//   - nbdinfo: advertised transmission flags (--can, --is), export listing,
//     sizes, description, block sizes and metadata contexts;
//   - nbdsh (libnbd's Python bindings): 64 requests in flight on one
//     connection, multi-conn consistency between connections after FUA and
//     FLUSH, and the NBD error codes (ENOSPC, EINVAL, EPERM) of requests
//     sent with libnbd's strict mode off, with and without structured
//     replies;
//   - nbdcopy: round trips, also over several connections;
//   - fio's nbd engine: random and sequential writes with verification;
//   - the agent process: unix sockets, the default export, unknown export
//     names, data surviving SIGTERM and kill -9 restarts, shutdown with a
//     connected client, growing and refusing to shrink volumes, and the
//     errors of bad command lines.
//
// The package has no non-test code besides this comment. A test skips when
// a client tool is missing, and fails instead with TANDEM_REQUIRE_TOOLS=1
// (see testbin.Require).
package e2e
