package nbd

import (
	"fmt"

	"github.com/tandem-project/tandem/nbd/wire"
)

// Block sizes advertised with NBD_INFO_BLOCK_SIZE.
const (
	minBlockSize       = 1
	preferredBlockSize = 4096
	// MaxPayload is the largest READ or WRITE the server accepts (the
	// protocol's customary 32 MiB).
	MaxPayload = 32 << 20
)

// commandName names a command for logs and errors.
func commandName(t uint16) string {
	switch t {
	case wire.CmdRead:
		return "READ"
	case wire.CmdWrite:
		return "WRITE"
	case wire.CmdDisc:
		return "DISC"
	case wire.CmdFlush:
		return "FLUSH"
	case wire.CmdTrim:
		return "TRIM"
	case wire.CmdCache:
		return "CACHE"
	case wire.CmdWriteZeroes:
		return "WRITE_ZEROES"
	case wire.CmdBlockStatus:
		return "BLOCK_STATUS"
	}
	return fmt.Sprintf("command %d", t)
}
