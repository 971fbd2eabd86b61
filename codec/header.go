package codec

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
)

// Format constants of version 1 (FORMAT.md).
const (
	HeaderSize     = 64
	Version        = 1
	DefaultBits    = 4  // code width v1 encoders write
	DefaultChunk   = 12 // log2 of the chunk size v1 encoders write: 4,096 elements
	minChunkLog2   = 8
	maxChunkLog2   = 16
	escapeSize     = 3 // uint16 chunk-local position + uint8 exponent
	flagRaw        = 1 << 0
	maxElements    = math.MaxUint32
	sectionAlign   = 16
	crcCoveredSize = 60
)

var magic = [4]byte{'S', 'Z', 'I', 'P'}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Header is the decoded 64-byte frame header. Offsets of the sections follow from it (Layout).
type Header struct {
	DType        DType
	Raw          bool   // payload is the input verbatim
	CodeBits     uint8  // bits per exponent code; 0 for raw frames
	Elements     uint64 // element count
	Escapes      uint64 // escape entries
	ChunkLog2    uint8  // chunk = 1<<ChunkLog2 elements; 0 for raw frames
	ResidualBits uint8
	CodebookLen  uint16
	PayloadLen   uint64 // bytes after the header
	CodesLen     uint64
	ResidualsLen uint64
}

// FrameLen is the whole frame's size in bytes.
func (h *Header) FrameLen() uint64 { return HeaderSize + h.PayloadLen }

// RawLen is the size of the decoded tensor in bytes.
func (h *Header) RawLen() uint64 { return h.Elements * uint64(h.DType.Size()) }

// Ratio is raw bytes over frame bytes.
func (h *Header) Ratio() float64 {
	if h.FrameLen() == 0 {
		return 0
	}
	return float64(h.RawLen()) / float64(h.FrameLen())
}

// Layout gives the byte offsets of a coded frame's sections.
type Layout struct {
	Codebook, Table, Codes, Residuals, Escapes, End uint64
	Chunks                                          uint64
}

func align16(x uint64) uint64 { return (x + sectionAlign - 1) &^ (sectionAlign - 1) }

// codedLayout computes the section offsets of a coded frame of n elements with e escapes.
func codedLayout(n, e uint64, codeBits, residualBits, chunkLog2 uint8) Layout {
	var l Layout
	l.Chunks = (n + 1<<chunkLog2 - 1) >> chunkLog2
	l.Codebook = HeaderSize
	l.Table = align16(l.Codebook + 1<<codeBits)
	l.Codes = align16(l.Table + 4*l.Chunks)
	l.Residuals = align16(l.Codes + (n*uint64(codeBits)+7)/8)
	l.Escapes = align16(l.Residuals + (n*uint64(residualBits)+7)/8)
	l.End = l.Escapes + escapeSize*e
	return l
}

// Layout returns the section offsets of a coded frame (zero Layout for a raw frame).
func (h *Header) Layout() Layout {
	if h.Raw {
		return Layout{End: HeaderSize + h.PayloadLen}
	}
	return codedLayout(h.Elements, h.Escapes, h.CodeBits, h.ResidualBits, h.ChunkLog2)
}

// marshal writes the header into b[:HeaderSize], checksum included.
func (h *Header) marshal(b []byte) {
	b = b[:HeaderSize]
	clear(b)
	copy(b[0:4], magic[:])
	b[4] = Version
	b[5] = byte(h.DType)
	if h.Raw {
		b[6] = flagRaw
	}
	b[7] = h.CodeBits
	binary.LittleEndian.PutUint64(b[8:], h.Elements)
	binary.LittleEndian.PutUint64(b[16:], h.Escapes)
	b[24] = h.ChunkLog2
	b[25] = h.ResidualBits
	binary.LittleEndian.PutUint16(b[26:], h.CodebookLen)
	binary.LittleEndian.PutUint64(b[32:], h.PayloadLen)
	binary.LittleEndian.PutUint64(b[40:], h.CodesLen)
	binary.LittleEndian.PutUint64(b[48:], h.ResidualsLen)
	binary.LittleEndian.PutUint32(b[60:], crc32.Checksum(b[:crcCoveredSize], castagnoli))
}

// ParseHeader decodes and fully validates a frame header from the start of b. It checks everything that can
// be checked without the payload: magic, version, checksum, dtype, and that every length field agrees with the
// element count. It does not require b to hold the whole frame.
func ParseHeader(b []byte) (Header, error) {
	var h Header
	if len(b) < HeaderSize {
		if len(b) >= 4 && [4]byte(b[:4]) != magic {
			return h, ErrBadMagic
		}
		return h, fmt.Errorf("%w: %d bytes, a header is %d", ErrTruncated, len(b), HeaderSize)
	}
	if [4]byte(b[:4]) != magic {
		return h, fmt.Errorf("%w: starts with % x", ErrBadMagic, b[:4])
	}
	if b[4] != Version {
		return h, fmt.Errorf("%w: %d (this decoder reads version %d)", ErrVersion, b[4], Version)
	}
	if got, want := binary.LittleEndian.Uint32(b[60:]), crc32.Checksum(b[:crcCoveredSize], castagnoli); got != want {
		return h, fmt.Errorf("%w: stored %08x, computed %08x", ErrHeaderCRC, got, want)
	}
	h = Header{
		DType:        DType(b[5]),
		Raw:          b[6]&flagRaw != 0,
		CodeBits:     b[7],
		Elements:     binary.LittleEndian.Uint64(b[8:]),
		Escapes:      binary.LittleEndian.Uint64(b[16:]),
		ChunkLog2:    b[24],
		ResidualBits: b[25],
		CodebookLen:  binary.LittleEndian.Uint16(b[26:]),
		PayloadLen:   binary.LittleEndian.Uint64(b[32:]),
		CodesLen:     binary.LittleEndian.Uint64(b[40:]),
		ResidualsLen: binary.LittleEndian.Uint64(b[48:]),
	}
	if err := h.validate(b[6], binary.LittleEndian.Uint32(b[28:]), binary.LittleEndian.Uint32(b[56:])); err != nil {
		return Header{}, err
	}
	return h, nil
}

func (h *Header) validate(flags byte, reserved1, reserved2 uint32) error {
	corrupt := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)
	}
	if !h.DType.Valid() {
		return fmt.Errorf("%w: frame dtype byte %d", ErrDType, uint8(h.DType))
	}
	if flags&^flagRaw != 0 || reserved1 != 0 || reserved2 != 0 {
		return corrupt("reserved header bits set (flags %#02x)", flags)
	}
	if h.Elements > maxElements {
		return corrupt("element count %d exceeds the v1 limit %d", h.Elements, uint64(maxElements))
	}
	size := uint64(h.DType.Size())
	if h.Raw {
		if h.CodeBits != 0 || h.Escapes != 0 || h.ChunkLog2 != 0 || h.ResidualBits != 0 || h.CodebookLen != 0 || h.CodesLen != 0 {
			return corrupt("raw frame with coding fields set")
		}
		if h.ResidualsLen != h.Elements*size || h.PayloadLen != h.ResidualsLen {
			return corrupt("raw frame of %d %s elements has payload %d bytes, section %d bytes", h.Elements, h.DType, h.PayloadLen, h.ResidualsLen)
		}
		return nil
	}
	if !h.DType.Coded() {
		return corrupt("dtype %s is carried raw but the frame is not marked raw", h.DType)
	}
	if h.CodeBits < 1 || h.CodeBits > 8 || int(h.CodeBits) > h.DType.ExponentBits() {
		return corrupt("code width %d bits for dtype %s", h.CodeBits, h.DType)
	}
	if int(h.CodebookLen) != 1<<h.CodeBits {
		return corrupt("codebook length %d for %d-bit codes", h.CodebookLen, h.CodeBits)
	}
	if h.ChunkLog2 < minChunkLog2 || h.ChunkLog2 > maxChunkLog2 {
		return corrupt("chunk size 2^%d outside 2^%d..2^%d", h.ChunkLog2, minChunkLog2, maxChunkLog2)
	}
	if int(h.ResidualBits) != h.DType.ResidualBits() {
		return corrupt("residual width %d bits, dtype %s has %d", h.ResidualBits, h.DType, h.DType.ResidualBits())
	}
	if h.Escapes > h.Elements {
		return corrupt("%d escapes for %d elements", h.Escapes, h.Elements)
	}
	if h.CodesLen != (h.Elements*uint64(h.CodeBits)+7)/8 {
		return corrupt("codes section %d bytes, expected %d", h.CodesLen, (h.Elements*uint64(h.CodeBits)+7)/8)
	}
	if h.ResidualsLen != (h.Elements*uint64(h.ResidualBits)+7)/8 {
		return corrupt("residuals section %d bytes, expected %d", h.ResidualsLen, (h.Elements*uint64(h.ResidualBits)+7)/8)
	}
	if end := codedLayout(h.Elements, h.Escapes, h.CodeBits, h.ResidualBits, h.ChunkLog2).End; h.PayloadLen != end-HeaderSize {
		return corrupt("payload %d bytes, sections need %d", h.PayloadLen, end-HeaderSize)
	}
	return nil
}

// MaxEncodedLen is the largest frame an encoder writes for rawLen input bytes: a frame is never larger than the
// input plus its header (it falls back to raw).
func MaxEncodedLen(rawLen int) int { return HeaderSize + rawLen }
