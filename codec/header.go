package codec

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
)

// Format constants (FORMAT.md).
const (
	HeaderSize = 64
	// Version is the newest frame format version this package reads and writes. Frames without a version 2
	// flag (entropy, checksum) are written as version 1, byte for byte what a version 1 encoder writes.
	Version      = 2
	version1     = 1
	DefaultBits  = 4  // code width fast-mode encoders write
	DefaultChunk = 12 // log2 of the chunk size fast-mode encoders write: 4,096 elements
	// EntropyChunk is log2 of the chunk size high-ratio encoders write: 8,192 elements, 256 per lane. (Before,
	// encoders wrote 2^14; decoders read any size from 2^10 to 2^16.)
	EntropyChunk = 13
	// MaxCodeLen is the longest exponent code of an entropy frame: a decoder's table has 2^8 entries.
	MaxCodeLen          = 8
	minChunkLog2        = 8
	minEntropyChunkLog2 = 10
	maxChunkLog2        = 16
	escapeSize          = 3 // uint16 chunk-local position + uint8 exponent
	flagRaw             = 1 << 0
	flagEntropy         = 1 << 1
	flagChecksum        = 1 << 2
	flagsV2             = flagEntropy | flagChecksum
	maxElements         = math.MaxUint32
	sectionAlign        = 16
	crcCoveredSize      = 60
	payloadCRCOffset    = 56
	lanes               = 32 // interleaved streams of an entropy chunk
)

var magic = [4]byte{'S', 'Z', 'I', 'P'}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Header is the decoded 64-byte frame header. Offsets of the sections follow from it (Layout).
type Header struct {
	Version uint8 // 1, or 2 when Entropy or Checksum is set
	DType   DType
	Raw     bool // payload is the input verbatim
	// Entropy: exponents are Huffman-coded in interleaved lanes (high-ratio mode, FORMAT.md "Entropy mode").
	Entropy bool
	// Checksum: PayloadCRC is the CRC-32C of the payload, checked by the decoder.
	Checksum bool
	// CodeBits is the code width of a fast-mode frame, the longest code length L of an entropy frame; 0 for raw
	// frames.
	CodeBits uint8
	Elements uint64 // element count
	// Escapes is the number of escape entries of a fast-mode frame, of elements coded as ESC and a raw
	// exponent in an entropy frame.
	Escapes      uint64
	ChunkLog2    uint8 // chunk = 1<<ChunkLog2 elements; 0 for raw frames
	ResidualBits uint8
	CodebookLen  uint16 // codebook (fast mode) or code table (entropy) bytes
	PayloadLen   uint64 // bytes after the header
	CodesLen     uint64 // codes (fast mode) or exponent streams (entropy) bytes
	ResidualsLen uint64
	PayloadCRC   uint32 // CRC-32C of the payload when Checksum, else 0
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

// Mode is the mode that writes a coded frame like this one: ModeHighRatio for entropy frames, else ModeFast
// (raw frames included).
func (h *Header) Mode() Mode {
	if h.Entropy {
		return ModeHighRatio
	}
	return ModeFast
}

// Layout gives the byte offsets of a frame's sections. In a fast-mode frame the sections come in the order
// Codebook, Table, Codes, Residuals, Escapes. In an entropy frame Codebook is the code table, Table the chunk
// table, and the exponent streams (Codes) follow the residuals; Escapes equals End (escapes are inline).
type Layout struct {
	Codebook, Table, Codes, Residuals, Escapes, End uint64
	Chunks                                          uint64
}

func align16(x uint64) uint64 { return (x + sectionAlign - 1) &^ (sectionAlign - 1) }

// codedLayout computes the section offsets of a fast-mode frame of n elements with e escapes.
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

// codeTableLen is the size of an entropy frame's code table whose exponents with a code lie in lo..hi: lo
// and hi, then a 4-bit length for ESC and for each exponent lo..hi.
func codeTableLen(lo, hi int) uint64 { return 2 + uint64(hi-lo+2+1)/2 }

// maxCodeTableLen is the largest code table of dtype dt (every exponent in range).
func maxCodeTableLen(dt DType) uint64 { return codeTableLen(0, 1<<dt.ExponentBits()-1) }

// entropyLayout computes the section offsets of an entropy frame of n elements whose code table takes
// tableLen bytes and exponent streams codesLen bytes. Every offset but End follows from n, the dtype and the
// code table's length, all known before the first element is coded.
func entropyLayout(n, codesLen uint64, dt DType, chunkLog2 uint8, tableLen uint64) Layout {
	var l Layout
	l.Chunks = (n + 1<<chunkLog2 - 1) >> chunkLog2
	l.Codebook = HeaderSize
	l.Table = align16(l.Codebook + tableLen)
	l.Residuals = align16(l.Table + 4*l.Chunks)
	l.Codes = align16(l.Residuals + (n*uint64(dt.ResidualBits())+7)/8)
	l.End = l.Codes + codesLen
	l.Escapes = l.End
	return l
}

// Layout returns the section offsets of a coded frame (for a raw frame only End is set).
func (h *Header) Layout() Layout {
	switch {
	case h.Raw:
		return Layout{End: HeaderSize + h.PayloadLen}
	case h.Entropy:
		return entropyLayout(h.Elements, h.CodesLen, h.DType, h.ChunkLog2, uint64(h.CodebookLen))
	}
	return codedLayout(h.Elements, h.Escapes, h.CodeBits, h.ResidualBits, h.ChunkLog2)
}

// flags is the header's flags byte.
func (h *Header) flags() byte {
	var f byte
	if h.Raw {
		f |= flagRaw
	}
	if h.Entropy {
		f |= flagEntropy
	}
	if h.Checksum {
		f |= flagChecksum
	}
	return f
}

// version is the version a frame with h's flags is written as.
func (h *Header) version() uint8 {
	if h.flags()&flagsV2 != 0 {
		return Version
	}
	return version1
}

// marshal writes the header into b[:HeaderSize], checksum included. The version byte follows from the flags
// (h.Version is not consulted).
func (h *Header) marshal(b []byte) {
	b = b[:HeaderSize]
	clear(b)
	copy(b[0:4], magic[:])
	b[4] = h.version()
	b[5] = byte(h.DType)
	b[6] = h.flags()
	b[7] = h.CodeBits
	binary.LittleEndian.PutUint64(b[8:], h.Elements)
	binary.LittleEndian.PutUint64(b[16:], h.Escapes)
	b[24] = h.ChunkLog2
	b[25] = h.ResidualBits
	binary.LittleEndian.PutUint16(b[26:], h.CodebookLen)
	binary.LittleEndian.PutUint64(b[32:], h.PayloadLen)
	binary.LittleEndian.PutUint64(b[40:], h.CodesLen)
	binary.LittleEndian.PutUint64(b[48:], h.ResidualsLen)
	if h.Checksum {
		binary.LittleEndian.PutUint32(b[payloadCRCOffset:], h.PayloadCRC)
	}
	binary.LittleEndian.PutUint32(b[60:], crc32.Checksum(b[:crcCoveredSize], castagnoli))
}

// ParseHeader decodes and fully validates a frame header from the start of b. It checks everything that can
// be checked without the payload: magic, version, checksum, dtype, flags, and that every length field agrees
// with the element count. It does not require b to hold the whole frame (nor check the payload checksum).
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
	if b[4] != version1 && b[4] != Version {
		return h, fmt.Errorf("%w: %d (this decoder reads versions 1 and %d)", ErrVersion, b[4], Version)
	}
	if got, want := binary.LittleEndian.Uint32(b[60:]), crc32.Checksum(b[:crcCoveredSize], castagnoli); got != want {
		return h, fmt.Errorf("%w: stored %08x, computed %08x", ErrHeaderCRC, got, want)
	}
	flags := b[6]
	h = Header{
		Version:      b[4],
		DType:        DType(b[5]),
		Raw:          flags&flagRaw != 0,
		Entropy:      flags&flagEntropy != 0,
		Checksum:     flags&flagChecksum != 0,
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
	crc := binary.LittleEndian.Uint32(b[payloadCRCOffset:])
	if h.Checksum {
		h.PayloadCRC = crc
		crc = 0
	}
	if err := h.validate(flags, binary.LittleEndian.Uint32(b[28:]), crc); err != nil {
		return Header{}, err
	}
	return h, nil
}

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)
}

// validate checks the parsed fields; reserved1 is bytes 28-31, reserved2 bytes 56-59 unless they hold the
// payload checksum (then 0).
func (h *Header) validate(flags byte, reserved1, reserved2 uint32) error {
	if !h.DType.Valid() {
		return fmt.Errorf("%w: frame dtype byte %d", ErrDType, uint8(h.DType))
	}
	if flags&^(flagRaw|flagsV2) != 0 || reserved1 != 0 || reserved2 != 0 {
		return corrupt("reserved header bits set (flags %#02x)", flags)
	}
	if h.Version == version1 && flags&flagsV2 != 0 {
		return corrupt("version 1 frame with version 2 flags %#02x", flags)
	}
	if h.Version == Version && flags&flagsV2 == 0 {
		return corrupt("version 2 frame without a version 2 flag (flags %#02x): such frames are version 1", flags)
	}
	if h.Raw && h.Entropy {
		return corrupt("frame marked both raw and entropy-coded")
	}
	if h.Elements > maxElements {
		return corrupt("element count %d exceeds the limit %d", h.Elements, uint64(maxElements))
	}
	size := uint64(h.DType.Size())
	switch {
	case h.Raw:
		if h.CodeBits != 0 || h.Escapes != 0 || h.ChunkLog2 != 0 || h.ResidualBits != 0 || h.CodebookLen != 0 || h.CodesLen != 0 {
			return corrupt("raw frame with coding fields set")
		}
		if h.ResidualsLen != h.Elements*size || h.PayloadLen != h.ResidualsLen {
			return corrupt("raw frame of %d %s elements has payload %d bytes, section %d bytes", h.Elements, h.DType, h.PayloadLen, h.ResidualsLen)
		}
		return nil
	case h.Entropy:
		return h.validateEntropy()
	}
	if !h.DType.Coded() {
		return corrupt("dtype %s is carried raw in fast mode but the frame is not marked raw", h.DType)
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
	if err := h.validateResiduals(); err != nil {
		return err
	}
	if h.CodesLen != (h.Elements*uint64(h.CodeBits)+7)/8 {
		return corrupt("codes section %d bytes, expected %d", h.CodesLen, (h.Elements*uint64(h.CodeBits)+7)/8)
	}
	if end := codedLayout(h.Elements, h.Escapes, h.CodeBits, h.ResidualBits, h.ChunkLog2).End; h.PayloadLen != end-HeaderSize {
		return corrupt("payload %d bytes, sections need %d", h.PayloadLen, end-HeaderSize)
	}
	return nil
}

// validateResiduals checks what both coded kinds of frame share: the residual width and section length the
// dtype and element count fix, and no more escapes than elements.
func (h *Header) validateResiduals() error {
	if int(h.ResidualBits) != h.DType.ResidualBits() {
		return corrupt("residual width %d bits, dtype %s has %d", h.ResidualBits, h.DType, h.DType.ResidualBits())
	}
	if h.Escapes > h.Elements {
		return corrupt("%d escapes for %d elements", h.Escapes, h.Elements)
	}
	if h.ResidualsLen != (h.Elements*uint64(h.ResidualBits)+7)/8 {
		return corrupt("residuals section %d bytes, expected %d", h.ResidualsLen, (h.Elements*uint64(h.ResidualBits)+7)/8)
	}
	return nil
}

func (h *Header) validateEntropy() error {
	if !h.DType.CodedIn(ModeHighRatio) {
		return corrupt("dtype %s has no exponent to entropy-code", h.DType)
	}
	if h.CodeBits < 1 || h.CodeBits > MaxCodeLen {
		return corrupt("longest code length %d outside 1..%d", h.CodeBits, MaxCodeLen)
	}
	if n := uint64(h.CodebookLen); n < codeTableLen(0, 0) || n > maxCodeTableLen(h.DType) {
		return corrupt("code table of %d bytes, %s's take %d..%d", n, h.DType, codeTableLen(0, 0), maxCodeTableLen(h.DType))
	}
	if h.ChunkLog2 < minEntropyChunkLog2 || h.ChunkLog2 > maxChunkLog2 {
		return corrupt("chunk size 2^%d outside 2^%d..2^%d", h.ChunkLog2, minEntropyChunkLog2, maxChunkLog2)
	}
	if err := h.validateResiduals(); err != nil {
		return err
	}
	chunks := (h.Elements + 1<<h.ChunkLog2 - 1) >> h.ChunkLog2
	if most := maxChunkBytes(h.Elements); h.CodesLen > most || h.CodesLen > math.MaxUint32 {
		return corrupt("exponent streams of %d bytes, %d elements take at most %d", h.CodesLen, h.Elements, min(most, math.MaxUint32))
	}
	full, last := h.Elements>>h.ChunkLog2, h.Elements&(1<<h.ChunkLog2-1)
	if least := full*lanes + min(last, lanes); h.CodesLen < least {
		return corrupt("exponent streams of %d bytes, %d elements in %d chunks take at least %d", h.CodesLen, h.Elements, chunks, least)
	}
	if end := h.Layout().End; h.PayloadLen != end-HeaderSize {
		return corrupt("payload %d bytes, sections need %d", h.PayloadLen, end-HeaderSize)
	}
	return nil
}

// MaxEncodedLen is the largest frame an encoder writes for rawLen input bytes: a frame is never larger than the
// input plus its header (it falls back to raw).
func MaxEncodedLen(rawLen int) int { return HeaderSize + rawLen }
