package pybind

import (
	"encoding/json"
	"fmt"
	"sync"

	"github.com/splitzip/splitzip/codec"
)

// CodebookAdaptive, passed as Encode's book, codes every input with exponents of its own: a codebook calibrated
// on it (fast mode), or the frame's own code table (high-ratio mode).
const CodebookAdaptive = -1

// FormatVersion is the newest frame format version this build writes and reads (it reads every earlier one;
// a frame that uses none of a version's additions is written with the earliest version that has them all).
func FormatVersion() int { return codec.Version }

// HeaderSize is the size of a frame header in bytes.
func HeaderSize() int { return codec.HeaderSize }

// MaxEncodedLen is the largest frame Encode writes for n input bytes: the capacity Encode needs.
func MaxEncodedLen(n int) int { return codec.MaxEncodedLen(n) }

// ParseDType returns the frame format's code of a dtype name: canonical ("bf16"), torch ("torch.bfloat16",
// "bfloat16"), numpy ("float16", "int8") or safetensors ("BF16").
func ParseDType(name string) (code int, err error) {
	dt, err := codec.ParseDType(name)
	return int(dt), wrap(err)
}

// DTypeName returns the canonical name of a dtype code.
func DTypeName(code int) (string, error) {
	dt, err := dtypeOf(code)
	if err != nil {
		return "", err
	}
	return dt.String(), nil
}

// DTypeSize returns the element size in bytes of a dtype code.
func DTypeSize(code int) (int, error) {
	dt, err := dtypeOf(code)
	if err != nil {
		return 0, err
	}
	return dt.Size(), nil
}

// DTypeCoded reports (1 or 0) whether a dtype's exponents are entropy-coded; other dtypes travel raw.
func DTypeCoded(code int) (int, error) {
	dt, err := dtypeOf(code)
	if err != nil {
		return 0, err
	}
	if dt.Coded() {
		return 1, nil
	}
	return 0, nil
}

func dtypeOf(code int) (codec.DType, error) {
	dt := codec.DType(code)
	if code < 0 || code > 255 || !dt.Valid() {
		return 0, wrap(fmt.Errorf("%w: dtype code %d", codec.ErrDType, code))
	}
	return dt, nil
}

// The modes, as Encode's mode argument takes them (codec.Mode's values).
const (
	ModeFast      = int(codec.ModeFast)
	ModeHighRatio = int(codec.ModeHighRatio)
)

// ParseMode returns the code of a mode name: "fast" or "high-ratio" (and the spellings codec.ParseMode accepts).
func ParseMode(name string) (int, error) {
	m, err := codec.ParseMode(name)
	return int(m), wrap(err)
}

// ModeName returns the name of a mode code ("fast", "high-ratio").
func ModeName(code int) (string, error) {
	m, err := modeOf(code)
	return m.String(), err
}

func modeOf(code int) (codec.Mode, error) {
	m := codec.Mode(code)
	if code < 0 || code > 255 || !m.Valid() {
		return 0, wrap(fmt.Errorf("%w: mode code %d", codec.ErrOption, code))
	}
	return m, nil
}

// Encoders are pooled by configuration: an encoder keeps tables and scratch between calls and is not safe for
// concurrent use, and Python threads call in concurrently (gopy releases the GIL). encoderPools[mode][adaptive]
// [checksum]; adaptive is a fast-mode option (a high-ratio encoder without a code table builds one per frame).
var encoderPools [2][2][2]sync.Pool

var decoders = sync.Pool{New: func() any { return mustDecoder() }}

func init() {
	for m := range encoderPools {
		for a := range encoderPools[m] {
			for c := range encoderPools[m][a] {
				opts := []codec.EOption{codec.WithMode(codec.Mode(m)), codec.WithAdaptiveCodebook(a == 1), codec.WithChecksum(c == 1)}
				encoderPools[m][a][c].New = func() any { return mustEncoder(opts...) }
			}
		}
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func mustEncoder(opts ...codec.EOption) *codec.Encoder {
	e, err := codec.NewEncoder(opts...)
	if err != nil {
		panic(err) // constant, valid options
	}
	return e
}

func mustDecoder() *codec.Decoder {
	d, err := codec.NewDecoder()
	if err != nil {
		panic(err)
	}
	return d
}

// Encode writes one frame holding the srcLen bytes at src, a little-endian tensor of dtype code dtype, to
// dst and returns the frame's length. dst must have room for MaxEncodedLen(srcLen) bytes. mode is ModeFast or
// ModeHighRatio; checksum stores a CRC-32C of the payload in the frame (a version 2 frame, checked by every
// decoder). book says how exponents are coded:
//
//   - 0: the built-in codebook (fast) or code table (high-ratio; CodeTableDefault) of the dtype;
//   - CodebookAdaptive: a codebook calibrated on this input (fast), or the frame's own code table (high-ratio,
//     the codec's default in that mode);
//   - a codebook handle (fast) or a code table handle (high-ratio), made for dtype.
//
// Dtypes the mode does not code are carried raw whatever book says.
func Encode(src uintptr, srcLen int, dtype int, mode int, book int, checksum bool, dst uintptr, dstCap int) (n int, err error) {
	defer recoverInto(&err)
	dt, err := dtypeOf(dtype)
	if err != nil {
		return 0, err
	}
	m, err := modeOf(mode)
	if err != nil {
		return 0, err
	}
	in, err := bytesAt(src, srcLen)
	if err != nil {
		return 0, wrap(err)
	}
	if need := codec.MaxEncodedLen(srcLen); dstCap < need {
		return 0, wrap(fmt.Errorf("%w: %d bytes of input need %d bytes of output capacity, got %d",
			codec.ErrShortBuffer, srcLen, need, dstCap))
	}
	out, err := bytesAt(dst, dstCap)
	if err != nil {
		return 0, wrap(err)
	}
	adaptive := m == codec.ModeFast && book == CodebookAdaptive
	pool := &encoderPools[m][b2i(adaptive)][b2i(checksum)]
	e := pool.Get().(*codec.Encoder)
	frame, err := encode(e, out[:0], in, dt, m, book)
	pool.Put(e)
	if err != nil {
		return 0, wrap(err)
	}
	if len(frame) > 0 && &frame[0] != &out[0] {
		return 0, wrap(fmt.Errorf("%w: encoder outgrew the output buffer", codec.ErrShortBuffer))
	}
	return len(frame), nil
}

// encode is Encode's choice of encoder call: e is configured for mode m (and adaptive when book says so).
func encode(e *codec.Encoder, dst, src []byte, dt codec.DType, m codec.Mode, book int) ([]byte, error) {
	if (book == 0 && m == codec.ModeFast) || book == CodebookAdaptive || !dt.CodedIn(m) {
		return e.Encode(dst, src, dt)
	}
	if m == codec.ModeFast {
		cb, err := codebooks.get(book)
		if err != nil {
			return dst, err
		}
		if cb.DType != dt {
			return dst, fmt.Errorf("%w: the codebook is for %s, the tensor is %s", codec.ErrCodebook, cb.DType, dt)
		}
		return e.EncodeWith(dst, src, cb)
	}
	var t *codec.CodeTable
	var err error
	if book == 0 {
		t, err = defaultCodeTable(dt)
	} else {
		t, err = codeTables.get(book)
	}
	if err != nil {
		return dst, err
	}
	if t.DType != dt {
		return dst, fmt.Errorf("%w: the code table is for %s, the tensor is %s", codec.ErrCodebook, t.DType, dt)
	}
	return e.EncodeWithTable(dst, src, t)
}

// Decode decodes the frame of frameLen bytes at frame into the dstLen bytes at dst, which must be exactly the
// frame's decoded size, and returns the decoded size.
func Decode(frame uintptr, frameLen int, dst uintptr, dstLen int) (n int, err error) {
	defer recoverInto(&err)
	in, err := bytesAt(frame, frameLen)
	if err != nil {
		return 0, wrap(err)
	}
	out, err := bytesAt(dst, dstLen)
	if err != nil {
		return 0, wrap(err)
	}
	d := decoders.Get().(*codec.Decoder)
	_, err = d.DecodeInto(out, in)
	decoders.Put(d)
	if err != nil {
		return 0, wrap(err)
	}
	return dstLen, nil
}

// FrameLen validates the header at the start of the n bytes at p and returns the whole frame's length (the
// bytes may hold several frames back to back, or only the start of one).
func FrameLen(p uintptr, n int) (int, error) {
	b, err := bytesAt(p, n)
	if err != nil {
		return 0, wrap(err)
	}
	h, err := codec.ParseHeader(b)
	if err != nil {
		return 0, wrap(err)
	}
	return int(h.FrameLen()), nil
}

// frameInfo is FrameInfo's JSON.
type frameInfo struct {
	DType                string           `json:"dtype"`
	Raw                  bool             `json:"raw"`
	Elements             uint64           `json:"elements"`
	RawLen               uint64           `json:"raw_len"`
	FrameLen             uint64           `json:"frame_len"`
	Ratio                float64          `json:"ratio"`
	CodeBits             uint8            `json:"code_bits"`
	ChunkLog2            uint8            `json:"chunk_log2"`
	ResidualBits         uint8            `json:"residual_bits"`
	Escapes              uint64           `json:"escapes"`
	EscapeRate           float64          `json:"escape_rate"`
	CodesLen             uint64           `json:"codes_len"`
	ResidualsLen         uint64           `json:"residuals_len"`
	Version              uint8            `json:"version"`
	Mode                 string           `json:"mode"`
	Checksum             bool             `json:"checksum"`
	Codebook             []int            `json:"codebook"`
	CodeTable            []int            `json:"code_table"`
	ExponentBits         float64          `json:"exponent_bits"`
	ChunkStreamMin       uint64           `json:"chunk_stream_min"`
	ChunkStreamMax       uint64           `json:"chunk_stream_max"`
	ChunkEscapesMin      uint64           `json:"chunk_escapes_min"`
	ChunkEscapesMax      uint64           `json:"chunk_escapes_max"`
	ChunksWithoutEscapes uint64           `json:"chunks_without_escapes"`
	EscapedExponents     map[uint8]uint64 `json:"escaped_exponents"`
}

// FrameInfo validates the frame of n bytes at p (header, payload checksum when it has one, escape or code and
// chunk tables; the payload is not decoded) and describes it as JSON: the header's fields, the mode, the
// codebook (fast) or code lengths (high-ratio: code_table[x] for exponent x, ESC's last; empty otherwise), how
// escapes spread over chunks (fast) and the exponent stream sizes of the chunks (high-ratio).
func FrameInfo(p uintptr, n int) (js string, err error) {
	defer recoverInto(&err)
	b, err := bytesAt(p, n)
	if err != nil {
		return "", wrap(err)
	}
	fi, err := codec.Inspect(b)
	if err != nil {
		return "", wrap(err)
	}
	h := fi.Header
	out := frameInfo{
		DType: h.DType.String(), Raw: h.Raw, Elements: h.Elements, RawLen: h.RawLen(), FrameLen: h.FrameLen(),
		Ratio: h.Ratio(), CodeBits: h.CodeBits, ChunkLog2: h.ChunkLog2, ResidualBits: h.ResidualBits,
		Escapes: h.Escapes, EscapeRate: fi.EscapeRate(), CodesLen: h.CodesLen, ResidualsLen: h.ResidualsLen,
		Version: h.Version, Mode: h.Mode().String(), Checksum: h.Checksum, ExponentBits: fi.ExponentBits(),
		ChunkStreamMin: fi.ChunkStreamMin, ChunkStreamMax: fi.ChunkStreamMax,
		Codebook: []int{}, CodeTable: []int{}, ChunkEscapesMin: fi.ChunkEscapesMin, ChunkEscapesMax: fi.ChunkEscapesMax,
		ChunksWithoutEscapes: fi.ChunksWithoutEscapes, EscapedExponents: fi.EscapedExponents,
	}
	for _, e := range fi.Codebook {
		out.Codebook = append(out.Codebook, int(e))
	}
	if fi.CodeTable != nil {
		for _, l := range fi.CodeTable.Lengths {
			out.CodeTable = append(out.CodeTable, int(l))
		}
	}
	if out.EscapedExponents == nil {
		out.EscapedExponents = map[uint8]uint64{}
	}
	buf, err := json.Marshal(out)
	return string(buf), wrap(err)
}
