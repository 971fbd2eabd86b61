package nixl

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"sync/atomic"
	"unsafe"
)

// The chunk table of a handoff lives in the producer's registered memory, where consumers read it with NIXL;
// PROTOCOL.md describes it byte by byte. All integers are little-endian.
const (
	tableMagic    = 0x584E5A53 // "SZNX" in little-endian byte order
	tableVersion  = 2
	headerSize    = 256 // header (32 bytes) and the failure message
	maxMessage    = headerSize - 32
	entrySize     = 24
	stateOpen     = 0 // chunks are being published
	stateFailed   = 1 // the producer failed to produce a chunk; the message says why
	stateExpired  = 2 // the handoff's time to live ran out
	stateReleased = 3 // withdrawn, or the producer shut down
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// entry is one chunk's row: where it lies in the producer's memory (host memory, or a GPU's: mem and dev), its
// length and CRC-32C.
type entry struct {
	addr uint64
	n    uint32
	crc  uint32
	mem  MemType
	dev  uint16
}

// entryCheck binds an entry to its handoff (nonce) and index: a row read half-written, or left over from a
// handoff that used the memory before, fails it.
func entryCheck(nonce uint64, i int, e entry) uint32 {
	var b [32]byte
	binary.LittleEndian.PutUint64(b[0:], nonce)
	binary.LittleEndian.PutUint32(b[8:], uint32(i))
	binary.LittleEndian.PutUint64(b[12:], e.addr)
	binary.LittleEndian.PutUint32(b[20:], e.n)
	binary.LittleEndian.PutUint32(b[24:], e.crc)
	binary.LittleEndian.PutUint32(b[28:], e.where())
	return crc32.Checksum(b[:], castagnoli) | 1 // never 0, the value of an unpublished row
}

// where is the row's memory word: the memory type in its low byte, the GPU ordinal in its high 16 bits.
func (e entry) where() uint32 { return uint32(uint8(e.mem)) | uint32(e.dev)<<16 }

// region is the chunk's place in the producer's memory, as a transfer names it.
func (e entry) region() Region {
	return Region{Addr: uintptr(e.addr), Len: int(e.n), Mem: e.mem, Device: uint64(e.dev)}
}

func tableLen(chunks int) int { return headerSize + entrySize*chunks }

// putHeader writes a fresh table header: open, no message.
func putHeader(t []byte, chunks int, nonce uint64) {
	clear(t[:headerSize])
	binary.LittleEndian.PutUint32(t[0:], tableMagic)
	binary.LittleEndian.PutUint16(t[4:], tableVersion)
	binary.LittleEndian.PutUint16(t[6:], stateOpen)
	binary.LittleEndian.PutUint32(t[8:], uint32(chunks))
	binary.LittleEndian.PutUint64(t[16:], nonce)
}

// setState ends the table with a state and message; the message is written before the state word.
func setState(t []byte, state uint16, msg string) {
	if len(msg) > maxMessage {
		msg = msg[:maxMessage]
	}
	n := copy(t[32:headerSize], msg)
	binary.LittleEndian.PutUint32(t[12:], uint32(n))
	// The state shares an aligned 32-bit word with the version (bytes 4..7): the word is stored whole, after
	// the message (little-endian hosts: x86-64 and arm64).
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&t[4])), uint32(tableVersion)|uint32(state)<<16)
}

// putEntry publishes row i: the fields first, the check word last (a reader that sees the check sees the
// fields it covers on a machine that orders stores, as x86 and the atomic store's barrier on others do).
func putEntry(t []byte, nonce uint64, i int, e entry) {
	r := t[headerSize+entrySize*i:][:entrySize]
	binary.LittleEndian.PutUint64(r[0:], e.addr)
	binary.LittleEndian.PutUint32(r[8:], e.n)
	binary.LittleEndian.PutUint32(r[12:], e.crc)
	binary.LittleEndian.PutUint32(r[20:], e.where())
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&r[16])), entryCheck(nonce, i, e))
}

// header is a table header as a consumer reads it.
type header struct {
	magic   uint32
	version uint16
	state   uint16
	chunks  int
	nonce   uint64
	msg     string
}

func parseHeader(b []byte) header {
	h := header{
		magic:   binary.LittleEndian.Uint32(b[0:]),
		version: binary.LittleEndian.Uint16(b[4:]),
		state:   binary.LittleEndian.Uint16(b[6:]),
		chunks:  int(binary.LittleEndian.Uint32(b[8:])),
		nonce:   binary.LittleEndian.Uint64(b[16:]),
	}
	if n := int(binary.LittleEndian.Uint32(b[12:])); n <= maxMessage {
		h.msg = string(b[32 : 32+n])
	}
	return h
}

// parseEntry reads row i from its bytes; ok is false for a row not (or not wholly) published.
func parseEntry(r []byte, nonce uint64, i int) (entry, bool) {
	w := binary.LittleEndian.Uint32(r[20:])
	e := entry{addr: binary.LittleEndian.Uint64(r[0:]), n: binary.LittleEndian.Uint32(r[8:]), crc: binary.LittleEndian.Uint32(r[12:]),
		mem: MemType(uint8(w)), dev: uint16(w >> 16)}
	return e, binary.LittleEndian.Uint32(r[16:]) == entryCheck(nonce, i, e) && w&0xFF00 == 0 && (e.mem == MemDRAM || e.mem == MemVRAM)
}

// Locator is what a consumer needs to read one handoff over NIXL, carried by the control plane (the shard
// record's "locator"): the producer agent's name and metadata, and where the handoff's chunk table is.
type Locator struct {
	V        int    `json:"v"`
	Agent    string `json:"agent"`
	Metadata []byte `json:"md"`
	Table    uint64 `json:"table"`
	Chunks   int    `json:"chunks"`
	Nonce    uint64 `json:"nonce"`
}

// ParseLocator decodes and checks a locator.
func ParseLocator(b []byte) (Locator, error) {
	var l Locator
	if err := json.Unmarshal(b, &l); err != nil {
		return l, fmt.Errorf("%w: %v", ErrLocator, err)
	}
	switch {
	case l.V != tableVersion:
		return l, fmt.Errorf("%w: version %d, this build reads %d", ErrLocator, l.V, tableVersion)
	case l.Agent == "" || len(l.Metadata) == 0:
		return l, fmt.Errorf("%w: no agent name or metadata", ErrLocator)
	case l.Table == 0 || l.Chunks < 0:
		return l, fmt.Errorf("%w: table at %#x with %d chunks", ErrLocator, l.Table, l.Chunks)
	}
	return l, nil
}
