package nbd

import (
	"fmt"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// Handshake magics and flags.
const (
	magicNBD        = protocol.NEGOTIATION_MAGIC_OLDSTYLE // "NBDMAGIC"
	magicOption     = protocol.NEGOTIATION_MAGIC_OPTION   // "IHAVEOPT"
	magicOptReply   = protocol.NEGOTIATION_MAGIC_REPLY
	flagFixedNew    = protocol.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE
	flagNoZeroes    = uint16(1 << 1)
	clientFixedNew  = uint32(1 << 0)
	clientNoZeroes  = uint32(1 << 1)
	knownClientFlag = clientFixedNew | clientNoZeroes
)

// Option types.
const (
	optExportName      = uint32(1)
	optAbort           = protocol.NEGOTIATION_ID_OPTION_ABORT
	optList            = protocol.NEGOTIATION_ID_OPTION_LIST
	optStartTLS        = uint32(5)
	optInfo            = protocol.NEGOTIATION_ID_OPTION_INFO
	optGo              = protocol.NEGOTIATION_ID_OPTION_GO
	optStructuredReply = uint32(8)
	optListMetaContext = uint32(9)
	optSetMetaContext  = uint32(10)
)

// Option reply types.
const (
	repAck         = protocol.NEGOTIATION_TYPE_REPLY_ACK
	repServer      = protocol.NEGOTIATION_TYPE_REPLY_SERVER
	repInfo        = protocol.NEGOTIATION_TYPE_REPLY_INFO
	repMetaContext = uint32(4)
	repErrBit      = uint32(1 << 31)
	repErrUnsup    = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNSUPPORTED
	repErrPolicy   = repErrBit | 2
	repErrInvalid  = repErrBit | 3
	repErrTLSReqd  = repErrBit | 5
	repErrUnknown  = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN
	repErrShutdown = repErrBit | 7
	repErrTooBig   = repErrBit | 9
)

// NBD_OPT_INFO / NBD_OPT_GO information types.
const (
	infoExport      = protocol.NEGOTIATION_TYPE_INFO_EXPORT
	infoName        = protocol.NEGOTIATION_TYPE_INFO_NAME
	infoDescription = protocol.NEGOTIATION_TYPE_INFO_DESCRIPTION
	infoBlockSize   = protocol.NEGOTIATION_TYPE_INFO_BLOCKSIZE
)

// Transmission flags, sent per export.
const (
	tfHasFlags      = protocol.NEGOTIATION_REPLY_FLAGS_HAS_FLAGS
	tfReadOnly      = uint16(1 << 1)
	tfSendFlush     = uint16(1 << 2)
	tfSendFUA       = uint16(1 << 3)
	tfSendTrim      = uint16(1 << 5)
	tfSendZeroes    = uint16(1 << 6)
	tfSendDF        = uint16(1 << 7)
	tfCanMultiConn  = protocol.NEGOTIATION_REPLY_FLAGS_CAN_MULTI_CONN
	tfSendCache     = uint16(1 << 10)
	tfSendFastZero  = uint16(1 << 11)
	metaContextBase = "base:allocation"
)

// Transmission phase.
const (
	magicRequest    = protocol.TRANSMISSION_MAGIC_REQUEST
	magicSimple     = protocol.TRANSMISSION_MAGIC_REPLY
	magicStructured = uint32(0x668e33ef)

	requestHeaderLen = 28
	simpleHeaderLen  = 16
	chunkHeaderLen   = 20
)

// Commands.
const (
	cmdRead        = protocol.TRANSMISSION_TYPE_REQUEST_READ
	cmdWrite       = protocol.TRANSMISSION_TYPE_REQUEST_WRITE
	cmdDisc        = protocol.TRANSMISSION_TYPE_REQUEST_DISC
	cmdFlush       = uint16(3)
	cmdTrim        = uint16(4)
	cmdCache       = uint16(5)
	cmdWriteZeroes = uint16(6)
	cmdBlockStatus = uint16(7)
)

// Command flags.
const (
	cfFUA      = uint16(1 << 0)
	cfNoHole   = uint16(1 << 1)
	cfDF       = uint16(1 << 2)
	cfReqOne   = uint16(1 << 3)
	cfFastZero = uint16(1 << 4)
)

// Structured reply flags and chunk types.
const (
	replyFlagDone    = uint16(1 << 0)
	chunkNone        = uint16(0)
	chunkOffsetData  = uint16(1)
	chunkBlockStatus = uint16(5)
	chunkError       = uint16(1<<15 | 1)
)

// Errno values of the NBD protocol.
const (
	errPerm     = protocol.TRANSMISSION_ERROR_EPERM
	errIO       = uint32(5)
	errInval    = protocol.TRANSMISSION_ERROR_EINVAL
	errNoSpc    = uint32(28)
	errOverflow = uint32(75)
	errNotSup   = uint32(95)
	errShutdown = uint32(108)
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
	case cmdRead:
		return "READ"
	case cmdWrite:
		return "WRITE"
	case cmdDisc:
		return "DISC"
	case cmdFlush:
		return "FLUSH"
	case cmdTrim:
		return "TRIM"
	case cmdCache:
		return "CACHE"
	case cmdWriteZeroes:
		return "WRITE_ZEROES"
	case cmdBlockStatus:
		return "BLOCK_STATUS"
	}
	return fmt.Sprintf("command %d", t)
}
