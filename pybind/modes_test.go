package pybind

import (
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/internal/fp8"
	"github.com/splitzip/splitzip/internal/safetensors"
)

func TestModeNames(t *testing.T) {
	for _, c := range []struct {
		name string
		code int
	}{{"fast", ModeFast}, {"high-ratio", ModeHighRatio}, {"high_ratio", ModeHighRatio}, {"HIGH-RATIO", ModeHighRatio}} {
		got, err := ParseMode(c.name)
		require.NoError(t, err, c.name)
		assert.Equal(t, c.code, got, c.name)
	}
	for _, m := range []codec.Mode{codec.ModeFast, codec.ModeHighRatio} {
		name, err := ModeName(int(m))
		require.NoError(t, err)
		assert.Equal(t, m.String(), name)
	}
	_, err := ParseMode("slow")
	assert.Equal(t, KindOption, kindPrefix(t, err))
	_, err = ModeName(7)
	assert.Equal(t, KindOption, kindPrefix(t, err))
	src := bf16Data(100, 1)
	dst := make([]byte, MaxEncodedLen(len(src)))
	_, err = Encode(addr(src), len(src), int(codec.BF16), 2, 0, false, addr(dst), len(dst))
	assert.Equal(t, KindOption, kindPrefix(t, err))
	runtime.KeepAlive(src)
	runtime.KeepAlive(dst)
}

// encodeOK runs Encode and returns a copy of the frame.
func encodeOK(t *testing.T, src []byte, dt codec.DType, mode, book int, checksum bool) []byte {
	t.Helper()
	dst := make([]byte, MaxEncodedLen(len(src)))
	n, err := Encode(addr(src), len(src), int(dt), mode, book, checksum, addr(dst), len(dst))
	require.NoError(t, err)
	runtime.KeepAlive(src)
	return dst[:n]
}

func decodeOK(t *testing.T, frame []byte, rawLen int) []byte {
	t.Helper()
	out := make([]byte, rawLen)
	_, err := Decode(addr(frame), len(frame), addr(out), len(out))
	require.NoError(t, err)
	runtime.KeepAlive(frame)
	return out
}

// TestEncodeHighRatioIsTheCodecs: every way of choosing a high-ratio table writes what the codec's encoder
// writes, and decodes back bit-exactly.
func TestEncodeHighRatioIsTheCodecs(t *testing.T) {
	bf16 := bf16Data(70_000, 9)
	e4m3 := fp8.QuantizeBF16E4M3(bf16)
	fp32 := make([]byte, 2*len(bf16))
	for i := 0; i < len(bf16); i += 2 {
		binary.LittleEndian.PutUint32(fp32[2*i:], uint32(binary.LittleEndian.Uint16(bf16[i:]))<<16)
	}
	def, err := defaultCodeTable(codec.BF16)
	require.NoError(t, err)
	for _, c := range []struct {
		dt   codec.DType
		data []byte
	}{{codec.BF16, bf16}, {codec.FP16, bf16}, {codec.FP32, fp32}, {codec.FP8E4M3, e4m3}, {codec.Int16, bf16}} {
		for _, checksum := range []bool{false, true} {
			own, err := codec.NewEncoder(codec.WithMode(codec.ModeHighRatio), codec.WithChecksum(checksum))
			require.NoError(t, err)
			want, err := own.Encode(nil, c.data, c.dt)
			require.NoError(t, err)
			got := encodeOK(t, c.data, c.dt, ModeHighRatio, CodebookAdaptive, checksum)
			require.Equal(t, want, got, "%s: the frame's own table", c.dt)
			h, err := codec.ParseHeader(got)
			require.NoError(t, err)
			assert.Equal(t, c.dt.CodedIn(codec.ModeHighRatio), h.Entropy, c.dt)
			assert.Equal(t, checksum, h.Checksum, c.dt)
			assert.Equal(t, c.data, decodeOK(t, got, len(c.data)), c.dt)
		}
	}
	// The built-in table, and a handle to a calibrated one.
	pinned, err := codec.NewEncoder(codec.WithMode(codec.ModeHighRatio))
	require.NoError(t, err)
	want, err := pinned.EncodeWithTable(nil, bf16, def)
	require.NoError(t, err)
	got := encodeOK(t, bf16, codec.BF16, ModeHighRatio, 0, false)
	require.Equal(t, want, got, "book 0 is the built-in table")
	hg, err := HistogramNew(int(codec.BF16))
	require.NoError(t, err)
	_, err = HistogramAdd(hg, addr(bf16), len(bf16))
	require.NoError(t, err)
	th, err := HistogramCodeTable(hg)
	require.NoError(t, err)
	table, err := codeTables.get(th)
	require.NoError(t, err)
	want, err = pinned.EncodeWithTable(nil, bf16, table)
	require.NoError(t, err)
	assert.Equal(t, want, encodeOK(t, bf16, codec.BF16, ModeHighRatio, th, false))

	// Wrong dtype, a codebook handle where a code table's belongs, no built-in table for fp16.
	dst := make([]byte, MaxEncodedLen(len(fp32)))
	_, err = Encode(addr(fp32), len(fp32), int(codec.FP16), ModeHighRatio, th, false, addr(dst), len(dst))
	assert.Equal(t, KindCodebook, kindPrefix(t, err))
	cb, err := CodebookDefault(int(codec.BF16))
	require.NoError(t, err)
	_, err = Encode(addr(bf16), len(bf16), int(codec.BF16), ModeHighRatio, cb, false, addr(dst), len(dst))
	assert.Equal(t, KindHandle, kindPrefix(t, err))
	_, err = Encode(addr(bf16), len(bf16), int(codec.BF16), ModeFast, th, false, addr(dst), len(dst))
	assert.Equal(t, KindHandle, kindPrefix(t, err))
	_, err = Encode(addr(bf16), len(bf16), int(codec.FP16), ModeHighRatio, 0, false, addr(dst), len(dst))
	assert.Equal(t, KindCodebook, kindPrefix(t, err))
	_, err = CodeTableDefault(int(codec.Int8))
	assert.Equal(t, KindCodebook, kindPrefix(t, err))
	_, err = CodeTableRelease(th)
	require.NoError(t, err)
	_, err = CodebookRelease(cb)
	require.NoError(t, err)
	_, err = HistogramRelease(hg)
	require.NoError(t, err)
	runtime.KeepAlive(bf16)
	runtime.KeepAlive(fp32)
	runtime.KeepAlive(dst)
}

func TestFastModeChecksumAndTheChecksumKind(t *testing.T) {
	src := bf16Data(30_000, 4)
	for _, mode := range []int{ModeFast, ModeHighRatio} {
		frame := encodeOK(t, src, codec.BF16, mode, 0, true)
		h, err := codec.ParseHeader(frame)
		require.NoError(t, err)
		assert.True(t, h.Checksum)
		assert.EqualValues(t, 2, h.Version)
		assert.Equal(t, src, decodeOK(t, frame, len(src)))
		bad := append([]byte(nil), frame...)
		bad[len(bad)-1] ^= 0x10 // the payload: the header still checks
		out := make([]byte, len(src))
		_, err = Decode(addr(bad), len(bad), addr(out), len(out))
		assert.Equal(t, KindChecksum, kindPrefix(t, err), "mode %d", mode)
		_, err = FrameInfo(addr(bad), len(bad))
		assert.Equal(t, KindChecksum, kindPrefix(t, err))
		runtime.KeepAlive(bad)
		runtime.KeepAlive(out)
	}
}

func TestCodeTableJSONBinaryAndFiles(t *testing.T) {
	src := bf16Data(50_000, 8)
	hg, err := HistogramNew(int(codec.BF16))
	require.NoError(t, err)
	_, err = HistogramAdd(hg, addr(src), len(src))
	require.NoError(t, err)
	th, err := HistogramCodeTable(hg)
	require.NoError(t, err)

	// The codec's own table of the same data, by its JSON and its bytes.
	h, err := codec.NewHistogram(codec.BF16)
	require.NoError(t, err)
	require.NoError(t, h.Add(src))
	want, err := h.CodeTable()
	require.NoError(t, err)
	wantJS, err := want.MarshalJSON()
	require.NoError(t, err)
	js, err := CodeTableJSON(th)
	require.NoError(t, err)
	assert.Equal(t, string(wantJS), js)
	wantBin, err := want.MarshalBinary()
	require.NoError(t, err)
	buf := make([]byte, MaxCodeTableLen)
	n, err := CodeTableBinary(th, addr(buf), len(buf))
	require.NoError(t, err)
	assert.Equal(t, wantBin, buf[:n])
	_, err = CodeTableBinary(th, addr(buf), n-1)
	assert.Equal(t, KindBuffer, kindPrefix(t, err))

	// Counts from elsewhere (a GPU) give the same table.
	counts := make([]byte, 8*256)
	for x, c := range h.Counts {
		binary.LittleEndian.PutUint64(counts[8*x:], c)
	}
	clear(buf)
	n, err = CodeTableBinaryFromCounts(int(codec.BF16), addr(counts), 256, addr(buf), len(buf))
	require.NoError(t, err)
	assert.Equal(t, wantBin, buf[:n])
	_, err = CodeTableBinaryFromCounts(int(codec.BF16), addr(counts), 32, addr(buf), len(buf))
	assert.Equal(t, KindArgument, kindPrefix(t, err))
	_, err = CodeTableBinaryFromCounts(int(codec.BF16), addr(make([]byte, 8*256)), 256, addr(buf), len(buf))
	assert.Equal(t, KindCodebook, kindPrefix(t, err))

	// The frames carry exactly those bytes.
	frame := encodeOK(t, src, codec.BF16, ModeHighRatio, th, false)
	hdr, err := codec.ParseHeader(frame)
	require.NoError(t, err)
	assert.Equal(t, wantBin, frame[codec.HeaderSize:codec.HeaderSize+int(hdr.CodebookLen)])
	info, err := FrameInfo(addr(frame), len(frame))
	require.NoError(t, err)
	var fi map[string]any
	require.NoError(t, json.Unmarshal([]byte(info), &fi))
	assert.Equal(t, "high-ratio", fi["mode"])
	assert.EqualValues(t, 2, fi["version"])
	assert.Equal(t, false, fi["checksum"])
	assert.Len(t, fi["code_table"], 257)
	assert.Empty(t, fi["codebook"])

	// Files: what the binding saves the codec loads, and the other way round.
	dir := t.TempDir()
	_, err = CodeTableSave(th, filepath.Join(dir, "a.json"))
	require.NoError(t, err)
	loaded, err := codec.LoadCodeTable(filepath.Join(dir, "a.json"))
	require.NoError(t, err)
	assert.True(t, loaded.Equal(want))
	require.NoError(t, want.Save(filepath.Join(dir, "b.json")))
	tb, err := CodeTableLoad(filepath.Join(dir, "b.json"))
	require.NoError(t, err)
	jsb, err := CodeTableJSON(tb)
	require.NoError(t, err)
	assert.JSONEq(t, js, jsb)
	tc, err := CodeTableFromJSON(js)
	require.NoError(t, err)
	_, err = CodeTableLoad(filepath.Join(dir, "missing.json"))
	assert.Equal(t, KindIO, kindPrefix(t, err))
	_, err = CodeTableFromJSON(`{"format":"splitzip-codetable","version":1,"dtype":"bf16","lengths":[1]}`)
	assert.Equal(t, KindCodebook, kindPrefix(t, err))
	// Valid, but codes only exponent 0 and gives ESC no code: no encoder takes it.
	lengths := make([]int, 257)
	lengths[0] = 1
	bad, err := json.Marshal(map[string]any{"format": "splitzip-codetable", "version": 1, "dtype": "bf16", "lengths": lengths})
	require.NoError(t, err)
	_, err = CodeTableFromJSON(string(bad))
	assert.Equal(t, KindCodebook, kindPrefix(t, err))

	for _, x := range []int{th, tb, tc} {
		_, err = CodeTableRelease(x)
		require.NoError(t, err)
	}
	_, err = CodeTableRelease(th)
	assert.Equal(t, KindHandle, kindPrefix(t, err))
	_, err = HistogramRelease(hg)
	require.NoError(t, err)
	runtime.KeepAlive(src)
	runtime.KeepAlive(buf)
	runtime.KeepAlive(counts)
}

// TestDefaultCodeTablesAreTheFixtures keeps default_codetables.json current: the tables gen_codetables.go
// learns from the calibration fixture.
func TestDefaultCodeTablesAreTheFixtures(t *testing.T) {
	f, err := safetensors.ReadFile(filepath.Join("..", "tests", "data", "kv_calibration.safetensors"))
	require.NoError(t, err)
	h, err := codec.NewHistogram(codec.BF16)
	require.NoError(t, err)
	for _, x := range f.Tensors {
		if x.DType == "BF16" {
			require.NoError(t, h.Add(x.Data))
		}
	}
	want, err := h.CodeTable()
	require.NoError(t, err)
	for _, dt := range []codec.DType{codec.BF16, codec.FP32} {
		got, err := defaultCodeTable(dt)
		require.NoError(t, err, "%s: run go generate ./pybind", dt)
		assert.Equal(t, dt, got.DType)
		assert.Equal(t, want.Lengths, got.Lengths, "%s: default_codetables.json is stale; run go generate ./pybind", dt)
		assert.Equal(t, want.Samples, got.Samples)
		require.NoError(t, got.Validate())
		assert.True(t, got.CodesAll())
	}
	b, err := os.ReadFile("default_codetables.json")
	require.NoError(t, err)
	assert.Equal(t, defaultCodeTablesJSON, b)
	th, err := CodeTableDefault(int(codec.BF16))
	require.NoError(t, err)
	_, err = CodeTableRelease(th)
	require.NoError(t, err)
}

func TestCUDAHighRatioWithoutDriver(t *testing.T) {
	if n, err := CUDADeviceCount(); err == nil && n > 0 {
		t.Skip("a GPU is present; the GPU paths are tested from Python (tests/python, -m cuda)")
	}
	assert.Positive(t, CUDAHighRatioWorkspaceSize(1<<20))
	_, err := CUDAEncodeHighRatio(0, 0, 0x1000, 16, 0x5000, 3, 0x2000, 0x3000, 0x4000)
	assert.Contains(t, []string{KindNoDriver, KindCUDA}, kindPrefix(t, err))
	_, err = CUDADecodeHighRatio(0, 0, 0x1000, 100, 0x2000, 16, 0x3000)
	assert.Contains(t, []string{KindNoDriver, KindCUDA}, kindPrefix(t, err))
}
