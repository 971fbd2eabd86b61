package transport

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"hash/crc32"
)

// Wire format; PROTOCOL.md is the prose version of this file. All integers
// are big-endian.
//
// Version history:
//
//	1: first version.
//	2: authenticated fetches. The producer answers every hello with a
//	   challenge (a fresh random nonce); the consumer proves that it holds
//	   the handoff's secret with an HMAC-SHA256 over the nonce and its
//	   hello, and only then learns anything about the handoff. Version 1
//	   peers are refused (code 4): a producer never serves a fetch that
//	   proves nothing.
const ProtocolVersion uint16 = 2

// magic opens every client hello and server reply. Bytes 0..5 of both (magic
// and version) are frozen across all versions so that any two versions can
// tell each other apart.
var magic = [4]byte{'S', 'Z', 'T', 'P'}

const (
	helloFixedLen = 24   // client hello, before the id
	replyLen      = 32   // server reply, before the message
	reqLen        = 8    // client request
	frameLen      = 16   // server frame header
	trailerLen    = 4    // CRC32C after a chunk's data
	maxIDLen      = 255  // handoff id bytes
	maxMsgLen     = 1024 // error message bytes
	tokenLen      = 16
	nonceLen      = 16 // challenge nonce, carried in the reply's token field
	proofLen      = sha256.Size
	noChunk       = 0xFFFFFFFF
)

// Secret lengths accepted by Offer and Fetch. NewSecret makes 32 bytes.
const (
	MinSecretLen = 16
	MaxSecretLen = 64
)

// proofLabel opens the MAC's input, so that the key proves nothing in any
// other context.
const proofLabel = "splitzip transport v2 fetch proof\x00"

// proof is the consumer's answer to a challenge: HMAC-SHA256 under the
// handoff's secret of the label, the nonce and the hello exactly as sent.
// Binding the hello (kind, id, session token) means a proof opens only the
// connection it was made for; the nonce, fresh on every connection, means
// an observer cannot replay it.
func proof(secret []byte, nonce [nonceLen]byte, hello []byte) [proofLen]byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(proofLabel))
	m.Write(nonce[:])
	m.Write(hello)
	var out [proofLen]byte
	m.Sum(out[:0])
	return out
}

// Hello kinds (client hello byte 6).
const (
	kindOpen byte = 1 // claim the handoff and start a transfer
	kindJoin byte = 2 // add a connection to the transfer named by the token
)

// Client request types (request byte 0).
const (
	reqGet byte = 1 // send chunk index
	reqFin byte = 2 // every chunk received and accepted
)

// Server frame types (frame byte 0).
const (
	frameChunk     byte = 0x11
	frameKeepalive byte = 0x12
	frameError     byte = 0x13
	frameFinAck    byte = 0x14
)

// Status and error codes (reply byte 6, error frame byte 1). 0 is success.
const (
	codeOK       byte = 0
	codeUnknown  byte = 1 // no such handoff
	codeExpired  byte = 2 // handoff expired
	codeBusy     byte = 3 // limits reached, or handoff already being fetched
	codeVersion  byte = 4 // protocol version not supported
	codeProducer byte = 5 // producer failed to produce the chunk
	codeProtocol byte = 6 // malformed or out-of-order message
	codeClosing  byte = 7 // server shutting down
	codeTooLarge byte = 8 // chunk larger than the server's limit
	codeTLS      byte = 9 // the producer serves TLS only

	// statusChallenge marks a reply that is a challenge: its token field
	// holds the nonce the consumer must prove its secret over.
	statusChallenge byte = 0x80
)

// codeKind maps a wire code to the consumer-side sentinel.
func codeKind(c byte) error {
	switch c {
	case codeUnknown:
		return ErrUnknownHandoff
	case codeExpired:
		return ErrExpired
	case codeBusy:
		return ErrBusy
	case codeVersion:
		return ErrIncompatibleVersion
	case codeProducer:
		return ErrProducer
	case codeClosing:
		return ErrPeerClosed
	case codeTooLarge:
		return ErrTooLarge
	case codeTLS:
		return ErrTLS
	}
	return ErrProtocol
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func checksum(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// crcUpdate extends a running CRC32C; chunks are checksummed slice by slice
// while their bytes are in cache, as they are written or read.
func crcUpdate(crc uint32, b []byte) uint32 { return crc32.Update(crc, castagnoli, b) }

// hello is the client's first message on every connection.
type hello struct {
	version uint16
	kind    byte
	token   [tokenLen]byte
	id      string
}

func (h *hello) appendTo(b []byte) []byte {
	b = append(b, magic[:]...)
	b = binary.BigEndian.AppendUint16(b, h.version)
	b = append(b, h.kind, byte(len(h.id)))
	b = append(b, h.token[:]...)
	return append(b, h.id...)
}

// reply is the server's answer to a hello.
type reply struct {
	version   uint16
	status    byte
	numChunks uint32
	token     [tokenLen]byte
	msg       string
}

func (r *reply) appendTo(b []byte) []byte {
	msg := r.msg
	if len(msg) > maxMsgLen {
		msg = msg[:maxMsgLen]
	}
	b = append(b, magic[:]...)
	b = binary.BigEndian.AppendUint16(b, r.version)
	b = append(b, r.status, 0)
	b = binary.BigEndian.AppendUint32(b, r.numChunks)
	b = append(b, r.token[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	b = append(b, 0, 0)
	return append(b, msg...)
}

func putRequest(b []byte, typ byte, index uint32) {
	b[0], b[1], b[2], b[3] = typ, 0, 0, 0
	binary.BigEndian.PutUint32(b[4:], index)
}

// frame is a decoded server frame header. A chunk frame's CRC32C is not in
// the header but in a 4-byte trailer after the data, so that both ends can
// checksum each slice while it is in cache.
type frame struct {
	typ    byte
	code   byte
	index  uint32
	length uint32
	spare  uint32 // bytes 12..15, zero in version 1
}

func (f *frame) put(b []byte) {
	b[0], b[1], b[2], b[3] = f.typ, f.code, 0, 0
	binary.BigEndian.PutUint32(b[4:], f.index)
	binary.BigEndian.PutUint32(b[8:], f.length)
	binary.BigEndian.PutUint32(b[12:], f.spare)
}

func (f *frame) parse(b []byte) {
	f.typ, f.code = b[0], b[1]
	f.index = binary.BigEndian.Uint32(b[4:])
	f.length = binary.BigEndian.Uint32(b[8:])
	f.spare = binary.BigEndian.Uint32(b[12:])
}
