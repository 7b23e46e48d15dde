// Package volume defines Backend, the block-device interface behind every
// Tandem NBD export, and the pieces shared by its implementations: flags,
// capabilities, extents and the errors a backend may return.
//
// A Backend is a fixed-size array of bytes. Callers (the NBD server, the
// replication layer) validate ranges and flags at the edge; a Backend may
// assume 0 <= off, off+len <= Size() and treats a violation as a bug
// (ErrOutOfRange), not as client input.
//
// Every method is safe for concurrent use. Slices passed in are owned by the
// caller and are not retained after the method returns.
package volume

import (
	"context"
	"errors"
	"fmt"
)

// Flags modify a write-like operation.
type Flags uint8

const (
	// FUA (force unit access) makes the operation durable before it returns.
	FUA Flags = 1 << iota
	// NoHole asks Zero to leave the range allocated rather than punch a hole.
	NoHole
	// FastZero asks Zero to fail with ErrNotFast instead of falling back to
	// something slower than a metadata operation (such as writing zeroes).
	FastZero
)

// Has reports whether all of want are set in f.
func (f Flags) Has(want Flags) bool { return f&want == want }

// Caps describes properties of a Backend that clients may want to know.
// Every Backend implements every method of the interface; Caps only says how
// much the optional effects are worth (the NBD server turns it into
// transmission flags).
type Caps struct {
	// ReadOnly backends refuse WriteAt, Zero and Trim with ErrReadOnly.
	ReadOnly bool
	// Trim is true when Trim may actually release space; when false Trim
	// is accepted and does nothing.
	Trim bool
	// Extents is true when Extents reports real holes; when false it reports
	// the whole range as allocated data.
	Extents bool
	// MultiConn is true when the effects of Flush and FUA are visible to
	// every other user of the backend once they return (a shared cache or no
	// cache at all), so an NBD client may spread I/O over several connections.
	MultiConn bool
	// DurableWrites is true when every write-like operation is durable
	// once it returns, FUA or not: Flush then has nothing to do, and the
	// NBD server answers FLUSH at once without calling it.
	DurableWrites bool
}

// ExtentFlags describes one extent, with the meaning of the NBD
// base:allocation metadata context.
type ExtentFlags uint32

const (
	// Hole marks an unallocated range.
	Hole ExtentFlags = 1 << iota
	// Zero marks a range known to read as zeroes.
	Zero
)

// Extent is a run of bytes with the same allocation status.
type Extent struct {
	Length int64
	Flags  ExtentFlags
}

// Backend is the storage behind one export. See the package comment for the
// conventions shared by every method.
type Backend interface {
	// Size returns the size of the volume in bytes. It may grow over the
	// lifetime of the Backend but never shrinks.
	Size() int64
	// Caps reports what the backend does natively.
	Caps() Caps
	// ReadAt fills p with the bytes at off. It either fills all of p or
	// returns an error.
	ReadAt(ctx context.Context, p []byte, off int64) error
	// WriteAt writes p at off. With FUA the data is durable on return;
	// without it the data is durable after the next successful Flush.
	WriteAt(ctx context.Context, p []byte, off int64, flags Flags) error
	// Zero makes [off, off+n) read as zeroes. Without NoHole the range may
	// be deallocated. With FastZero it returns ErrNotFast rather than do
	// slow work, and nothing was changed.
	Zero(ctx context.Context, off, n int64, flags Flags) error
	// Trim tells the backend that [off, off+n) is no longer needed. Its
	// content afterwards is unspecified until rewritten.
	Trim(ctx context.Context, off, n int64, flags Flags) error
	// Flush makes every write that has returned durable.
	Flush(ctx context.Context) error
	// Cache hints that [off, off+n) will be read soon.
	Cache(ctx context.Context, off, n int64) error
	// Extents describes [off, off+n) as consecutive extents starting at off.
	// It returns at least one and at most max extents (max >= 1) and may
	// cover less than n bytes; no extent reaches past off+n.
	Extents(ctx context.Context, off, n int64, max int) ([]Extent, error)
	// Close releases the backend. Pending operations must have returned.
	Close() error
}

// NowaitReader is implemented by backends that can read without waiting for
// storage when the data is at hand (for a file: in the page cache). The NBD
// server uses it to answer cached reads without handing them to another
// goroutine.
type NowaitReader interface {
	// ReadAtNowait fills p from off like ReadAt when it can do so without
	// blocking on I/O, and reports done. When it would block it returns
	// done == false and p's content is unspecified; the caller then uses
	// ReadAt. The range has been validated by the caller.
	ReadAtNowait(p []byte, off int64) (done bool, err error)
}

// MappedReader is implemented by backends whose data is a file mapped in
// memory, so that the NBD server can write a large cached read to its
// socket straight from the page cache instead of first copying it into a
// buffer of its own.
type MappedReader interface {
	// ReadMapped returns the n bytes at off as a view of the page cache,
	// when they are all cached, and release, to be called once the view
	// is no longer used. Otherwise it returns a nil view and a nil error,
	// and the caller uses ReadAt. The range has been validated by the
	// caller.
	//
	// The view is not a copy: it shows later writes as they happen. The
	// caller passes it to the kernel once (a write to a socket) before it
	// answers the request, so what is sent is what ReadAt would have
	// returned at that moment: the content at some time between the
	// request and the reply. Nothing in the process may read the view
	// itself, since a fault there is fatal where the kernel's copy gets
	// EFAULT.
	ReadMapped(off, n int64) (p []byte, release func(), err error)
}

var (
	// ErrReadOnly is returned by write-like operations on a read-only backend.
	ErrReadOnly = errors.New("volume is read-only")
	// ErrNotFast is returned by Zero with FastZero when zeroing would be slow.
	ErrNotFast = errors.New("fast zero not possible")
	// ErrOutOfRange reports an access outside the volume. Callers validate
	// ranges first, so seeing it means a bug in the caller.
	ErrOutOfRange = errors.New("range outside volume")
	// ErrClosed is returned by operations on a closed backend.
	ErrClosed = errors.New("volume closed")
	// ErrNoSpace reports that the storage under the volume is full.
	ErrNoSpace = errors.New("no space left for volume")
	// ErrFenced is returned by write-like operations from a writer that
	// no longer owns the volume: another writer (a VM's new host after a
	// migration) has taken it over.
	ErrFenced = errors.New("volume fenced")
	// ErrUnavailable reports that this server cannot serve the volume right
	// now (it is not the replica that leads it) and the caller should try
	// another server.
	ErrUnavailable = errors.New("volume not available here")
)

// CheckRange returns ErrOutOfRange, wrapped with the details, unless
// [off, off+n) lies inside a volume of the given size.
func CheckRange(off, n, size int64) error {
	if off < 0 || n < 0 || off > size || n > size-off {
		return fmt.Errorf("%w: offset %d length %d size %d", ErrOutOfRange, off, n, size)
	}
	return nil
}
