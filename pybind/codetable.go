package pybind

import (
	_ "embed"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/splitzip/splitzip/codec"
)

// codeTables holds the high-ratio code tables Python refers to by handle. A code table is immutable once issued.
var codeTables = newHandles[*codec.CodeTable]("code table")

// MaxCodeTableLen is the longest code table a frame carries (bf16 and fp32: lo, hi and 257 four-bit lengths):
// the room CodeTableBinary needs.
const MaxCodeTableLen = 2 + (256+1+1)/2

// default_codetables.json holds the built-in code tables: learned (codec.Histogram.CodeTable) on the real KV
// calibration fixture, tests/data/kv_calibration.safetensors, by gen_codetables.go, for the dtypes whose
// exponents are the fixture's exactly: bf16, and fp32 (the same 8-bit exponent field). They are what the GPU
// encodes with when no table is given, and what "default" means in the high-ratio mode on the CPU; other
// dtypes have none (their frames get their own table, or one calibrated on their data).
//
//go:generate go run gen_codetables.go
//go:embed default_codetables.json
var defaultCodeTablesJSON []byte

var defaultTables struct {
	once   sync.Once
	tables map[codec.DType]*codec.CodeTable
	err    error
}

// defaultCodeTable returns the built-in code table of dt. Callers must not modify it.
func defaultCodeTable(dt codec.DType) (*codec.CodeTable, error) {
	defaultTables.once.Do(func() {
		var list []*codec.CodeTable
		if err := json.Unmarshal(defaultCodeTablesJSON, &list); err != nil {
			defaultTables.err = fmt.Errorf("built-in code tables: %w", err)
			return
		}
		defaultTables.tables = map[codec.DType]*codec.CodeTable{}
		for _, t := range list {
			defaultTables.tables[t.DType] = t
		}
	})
	if defaultTables.err != nil {
		return nil, defaultTables.err
	}
	if t, ok := defaultTables.tables[dt]; ok {
		return t, nil
	}
	if !dt.CodedIn(codec.ModeHighRatio) {
		return nil, fmt.Errorf("%w: %s has no exponent to code, and no code table", codec.ErrCodebook, dt)
	}
	return nil, fmt.Errorf("%w: no built-in code table for %s (there are for bf16 and fp32); give a calibrated one, "+
		"or let each frame build its own", codec.ErrCodebook, dt)
}

// CodeTableDefault returns a new handle to the built-in code table of dtype (bf16 or fp32).
func CodeTableDefault(dtype int) (int, error) {
	dt, err := dtypeOf(dtype)
	if err != nil {
		return 0, err
	}
	t, err := defaultCodeTable(dt)
	if err != nil {
		return 0, wrap(err)
	}
	return codeTables.put(t), nil
}

// CodeTableFromJSON validates a code table in its file form (CodeTable.MarshalJSON) and returns a handle to
// it. An encoder takes only tables that code every exponent (codec.CodeTable.CodesAll); this refuses others.
func CodeTableFromJSON(js string) (int, error) {
	t := new(codec.CodeTable)
	if err := t.UnmarshalJSON([]byte(js)); err != nil {
		return 0, wrap(err)
	}
	return putEncodingTable(t)
}

// CodeTableLoad reads a code table JSON file (codec.CodeTable.Save) and returns a handle to it.
func CodeTableLoad(path string) (int, error) {
	t, err := codec.LoadCodeTable(path)
	if err != nil {
		return 0, wrap(err)
	}
	return putEncodingTable(t)
}

func putEncodingTable(t *codec.CodeTable) (int, error) {
	if !t.CodesAll() {
		return 0, wrap(fmt.Errorf("%w: the %s code table leaves exponents without a code and gives ESC none, so an "+
			"encoder cannot use it", codec.ErrCodebook, t.DType))
	}
	return codeTables.put(t), nil
}

// CodeTableJSON returns a code table's file form (codec.CodeTable.MarshalJSON).
func CodeTableJSON(h int) (string, error) {
	return jsonOf(codeTables, h)
}

// CodeTableSave writes a code table as a JSON file (codec.CodeTable.Save); it returns the handle.
func CodeTableSave(h int, path string) (int, error) {
	return saveOf(codeTables, h, path)
}

// CodeTableBinary writes the code table as frames carry it (codec.CodeTable.MarshalBinary: what the GPU
// encoder reads from device memory) to the dstCap bytes at dst, and returns its length (at most
// MaxCodeTableLen).
func CodeTableBinary(h int, dst uintptr, dstCap int) (n int, err error) {
	defer recoverInto(&err)
	t, err := codeTables.get(h)
	if err != nil {
		return 0, wrap(err)
	}
	return putBinary(t, dst, dstCap)
}

func putBinary(t *codec.CodeTable, dst uintptr, dstCap int) (int, error) {
	var buf [MaxCodeTableLen]byte
	b, err := t.AppendBinary(buf[:0])
	if err != nil {
		return 0, wrap(err)
	}
	if len(b) > dstCap {
		return 0, wrap(fmt.Errorf("%w: a %d-byte code table, room for %d", codec.ErrShortBuffer, len(b), dstCap))
	}
	out, err := bytesAt(dst, len(b))
	if err != nil {
		return 0, wrap(err)
	}
	return copy(out, b), nil
}

// CodeTableRelease forgets a code table handle; it returns the number of code tables still held.
func CodeTableRelease(h int) (int, error) {
	return releaseOf(codeTables, h)
}

// HistogramCodeTable returns a handle to the code table learned from the exponents counted so far
// (codec.Histogram.CodeTable: a length-limited Huffman code whose escape symbol codes exponents never seen).
func HistogramCodeTable(h int) (int, error) {
	hg, err := histograms.get(h)
	if err != nil {
		return 0, wrap(err)
	}
	hg.mu.Lock()
	defer hg.mu.Unlock()
	if hg.h.Total == 0 {
		return 0, wrap(fmt.Errorf("%w: no calibration data (add at least one non-empty tensor)", codec.ErrCodebook))
	}
	t, err := hg.h.CodeTable()
	if err != nil {
		return 0, wrap(err)
	}
	return codeTables.put(t), nil
}

// CodeTableBinaryFromCounts learns a code table of dtype from an exponent histogram counted elsewhere (on a
// GPU): n little-endian uint64 counts at counts, one per exponent field value (n = 2^exponent bits, 256 for
// bf16), and writes it as frames carry it to the dstCap bytes at dst, as CodeTableBinary does. The table is
// the one Histogram.CodeTable learns from the same counts, so a frame encoded with it is byte for byte the one
// the CPU encoder writes with CodeTable.calibrate on the same tensor.
func CodeTableBinaryFromCounts(dtype int, counts uintptr, n int, dst uintptr, dstCap int) (length int, err error) {
	defer recoverInto(&err)
	h, err := histogramAt(dtype, counts, n)
	if err != nil {
		return 0, err
	}
	t, err := h.CodeTable()
	if err != nil {
		return 0, wrap(err)
	}
	return putBinary(t, dst, dstCap)
}

// CodebookFromCounts returns a handle to the fast-mode codebook (of the built-in codebook's width) learned
// from an exponent histogram counted elsewhere (see CodeTableBinaryFromCounts): the codebook the adaptive CPU
// encoder calibrates on the same tensor, so the frames are byte for byte the same.
func CodebookFromCounts(dtype int, counts uintptr, n int) (handle int, err error) {
	defer recoverInto(&err)
	h, err := histogramAt(dtype, counts, n)
	if err != nil {
		return 0, err
	}
	bits := codec.DefaultBits
	if base, err := codec.DefaultCodebook(h.DType); err == nil {
		bits = int(base.Bits)
	}
	cb, err := h.Codebook(bits)
	if err != nil {
		return 0, wrap(err)
	}
	return codebooks.put(cb), nil
}

// histogramAt reads n little-endian uint64 exponent counts of dtype at counts (n = 2^exponent bits).
func histogramAt(dtype int, counts uintptr, n int) (*codec.Histogram, error) {
	dt, err := dtypeOf(dtype)
	if err != nil {
		return nil, err
	}
	h, err := codec.NewHistogram(dt)
	if err != nil {
		return nil, wrap(err)
	}
	if want := 1 << dt.ExponentBits(); n != want {
		return nil, wrap(fmt.Errorf("%w: %d exponent counts for %s, need %d", errArgument, n, dt, want))
	}
	b, err := bytesAt(counts, 8*n)
	if err != nil {
		return nil, wrap(err)
	}
	for x := range n {
		c := binary.LittleEndian.Uint64(b[8*x:])
		h.Counts[x] = c
		h.Total += c
	}
	if h.Total == 0 {
		return nil, wrap(fmt.Errorf("%w: an empty exponent histogram", codec.ErrCodebook))
	}
	return h, nil
}
