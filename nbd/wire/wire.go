// Package wire holds the NBD protocol's constants (magics, options,
// replies, commands, flags, errno values; see the NBD protocol's
// doc/proto.md), shared by Tandem's server (nbd) and client (nbdclient).
// Where pojntfx/go-nbd's protocol package names a value, it is used.
package wire

import "github.com/pojntfx/go-nbd/pkg/protocol"

// Handshake magics and flags.
const (
	MagicNBD        = protocol.NEGOTIATION_MAGIC_OLDSTYLE // "NBDMAGIC"
	MagicOption     = protocol.NEGOTIATION_MAGIC_OPTION   // "IHAVEOPT"
	MagicOptReply   = protocol.NEGOTIATION_MAGIC_REPLY
	FlagFixedNew    = protocol.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE
	FlagNoZeroes    = uint16(1 << 1)
	ClientFixedNew  = uint32(1 << 0)
	ClientNoZeroes  = uint32(1 << 1)
	KnownClientFlag = ClientFixedNew | ClientNoZeroes
)

// Option types.
const (
	OptExportName      = uint32(1)
	OptAbort           = protocol.NEGOTIATION_ID_OPTION_ABORT
	OptList            = protocol.NEGOTIATION_ID_OPTION_LIST
	OptStartTLS        = uint32(5)
	OptInfo            = protocol.NEGOTIATION_ID_OPTION_INFO
	OptGo              = protocol.NEGOTIATION_ID_OPTION_GO
	OptStructuredReply = uint32(8)
	OptListMetaContext = uint32(9)
	OptSetMetaContext  = uint32(10)
)

// Option reply types.
const (
	RepAck         = protocol.NEGOTIATION_TYPE_REPLY_ACK
	RepServer      = protocol.NEGOTIATION_TYPE_REPLY_SERVER
	RepInfo        = protocol.NEGOTIATION_TYPE_REPLY_INFO
	RepMetaContext = uint32(4)
	RepErrBit      = uint32(1 << 31)
	RepErrUnsup    = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNSUPPORTED
	RepErrPolicy   = RepErrBit | 2
	RepErrInvalid  = RepErrBit | 3
	RepErrTLSReqd  = RepErrBit | 5
	RepErrUnknown  = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN
	RepErrShutdown = RepErrBit | 7
	RepErrTooBig   = RepErrBit | 9
)

// NBD_OPT_INFO / NBD_OPT_GO information types.
const (
	InfoExport      = protocol.NEGOTIATION_TYPE_INFO_EXPORT
	InfoName        = protocol.NEGOTIATION_TYPE_INFO_NAME
	InfoDescription = protocol.NEGOTIATION_TYPE_INFO_DESCRIPTION
	InfoBlockSize   = protocol.NEGOTIATION_TYPE_INFO_BLOCKSIZE
)

// Transmission flags, sent per export.
const (
	TfHasFlags      = protocol.NEGOTIATION_REPLY_FLAGS_HAS_FLAGS
	TfReadOnly      = uint16(1 << 1)
	TfSendFlush     = uint16(1 << 2)
	TfSendFUA       = uint16(1 << 3)
	TfSendTrim      = uint16(1 << 5)
	TfSendZeroes    = uint16(1 << 6)
	TfSendDF        = uint16(1 << 7)
	TfCanMultiConn  = protocol.NEGOTIATION_REPLY_FLAGS_CAN_MULTI_CONN
	TfSendCache     = uint16(1 << 10)
	TfSendFastZero  = uint16(1 << 11)
	MetaContextBase = "base:allocation"
)

// Transmission phase.
const (
	MagicRequest    = protocol.TRANSMISSION_MAGIC_REQUEST
	MagicSimple     = protocol.TRANSMISSION_MAGIC_REPLY
	MagicStructured = uint32(0x668e33ef)

	RequestHeaderLen = 28
	SimpleHeaderLen  = 16
	ChunkHeaderLen   = 20
)

// Commands.
const (
	CmdRead        = protocol.TRANSMISSION_TYPE_REQUEST_READ
	CmdWrite       = protocol.TRANSMISSION_TYPE_REQUEST_WRITE
	CmdDisc        = protocol.TRANSMISSION_TYPE_REQUEST_DISC
	CmdFlush       = uint16(3)
	CmdTrim        = uint16(4)
	CmdCache       = uint16(5)
	CmdWriteZeroes = uint16(6)
	CmdBlockStatus = uint16(7)
)

// Command flags.
const (
	CfFUA      = uint16(1 << 0)
	CfNoHole   = uint16(1 << 1)
	CfDF       = uint16(1 << 2)
	CfReqOne   = uint16(1 << 3)
	CfFastZero = uint16(1 << 4)
)

// Structured reply flags and chunk types.
const (
	ReplyFlagDone    = uint16(1 << 0)
	ChunkNone        = uint16(0)
	ChunkOffsetData  = uint16(1)
	ChunkBlockStatus = uint16(5)
	ChunkError       = uint16(1<<15 | 1)
)

// Errno values of the NBD protocol.
const (
	ErrPerm     = protocol.TRANSMISSION_ERROR_EPERM
	ErrIO       = uint32(5)
	ErrInval    = protocol.TRANSMISSION_ERROR_EINVAL
	ErrNoSpc    = uint32(28)
	ErrOverflow = uint32(75)
	ErrNotSup   = uint32(95)
	ErrShutdown = uint32(108)
)

// Structured reply chunk types and flags only clients need.
const (
	ChunkOffsetHole = uint16(2)
	ChunkErrorBit   = uint16(1 << 15)
)
