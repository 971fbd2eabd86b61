package pybind

import (
	"encoding/json"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/splitzip/splitzip/codec"
)

// addr returns the address of b's first byte as Python would pass it (0 for an empty slice). Callers keep b
// alive (runtime.KeepAlive) until the call returns, as Python keeps its arrays.
func addr(b []byte) uintptr {
	if len(b) == 0 {
		return 0
	}
	return uintptr(unsafe.Pointer(&b[0]))
}

// bf16Data returns n bf16 values of a normal distribution, little-endian, as real KV caches look.
func bf16Data(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, 2*n)
	for i := range n {
		f := float32(r.NormFloat64())
		bits := *(*uint32)(unsafe.Pointer(&f)) >> 16
		b[2*i], b[2*i+1] = byte(bits), byte(bits>>8)
	}
	return b
}

func kindPrefix(t *testing.T, err error) string {
	t.Helper()
	require.Error(t, err)
	msg := err.Error()
	require.True(t, strings.HasPrefix(msg, "["), "error %q has no kind prefix", msg)
	return msg[1:strings.Index(msg, "]")]
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	bf16, err := ParseDType("torch.bfloat16")
	require.NoError(t, err)
	for _, n := range []int{0, 1, 7, 4096, 4097, 1 << 20} {
		src := bf16Data(n, uint64(n))
		dst := make([]byte, MaxEncodedLen(len(src)))
		fl, err := Encode(addr(src), len(src), bf16, ModeFast, 0, false, addr(dst), len(dst))
		require.NoError(t, err, "n=%d", n)
		want, err := mustEncoder().Encode(nil, src, codec.BF16)
		require.NoError(t, err)
		require.Equal(t, want, dst[:fl], "n=%d: the binding writes what the codec writes", n)

		got := make([]byte, len(src))
		dn, err := Decode(addr(dst), fl, addr(got), len(got))
		require.NoError(t, err)
		assert.Equal(t, len(src), dn)
		assert.Equal(t, src, got)

		frameLen, err := FrameLen(addr(dst), len(dst))
		require.NoError(t, err)
		assert.Equal(t, fl, frameLen)
		runtime.KeepAlive(src)
		runtime.KeepAlive(dst)
		runtime.KeepAlive(got)
	}
}

func TestEncodeRawDTypesAndAdaptive(t *testing.T) {
	src := bf16Data(10000, 3)
	dst := make([]byte, MaxEncodedLen(len(src)))
	for _, name := range []string{"int16", "uint8", "fp16", "bytes"} {
		dt, err := ParseDType(name)
		require.NoError(t, err)
		n, err := Encode(addr(src), len(src), dt, ModeFast, 0, false, addr(dst), len(dst))
		require.NoError(t, err, name)
		got := make([]byte, len(src))
		_, err = Decode(addr(dst), n, addr(got), len(got))
		require.NoError(t, err, name)
		assert.Equal(t, src, got, name)
	}
	n, err := Encode(addr(src), len(src), int(codec.BF16), ModeFast, CodebookAdaptive, false, addr(dst), len(dst))
	require.NoError(t, err)
	assert.Less(t, n, len(src))
	runtime.KeepAlive(src)
	runtime.KeepAlive(dst)
}

func TestErrorsCarryKinds(t *testing.T) {
	src := bf16Data(4096, 5)
	dst := make([]byte, MaxEncodedLen(len(src)))

	_, err := Encode(addr(src), len(src), int(codec.BF16), ModeFast, 0, false, addr(dst), len(dst)-1)
	assert.Equal(t, KindBuffer, kindPrefix(t, err))
	_, err = Encode(addr(src), len(src)-1, int(codec.BF16), ModeFast, 0, false, addr(dst), len(dst))
	assert.Equal(t, KindSize, kindPrefix(t, err))
	_, err = Encode(addr(src), len(src), 99, ModeFast, 0, false, addr(dst), len(dst))
	assert.Equal(t, KindDType, kindPrefix(t, err))
	_, err = ParseDType("complex64")
	assert.Equal(t, KindDType, kindPrefix(t, err))
	_, err = Encode(addr(src), len(src), int(codec.BF16), ModeFast, 12345, false, addr(dst), len(dst))
	assert.Equal(t, KindHandle, kindPrefix(t, err))
	_, err = Encode(0, 16, int(codec.BF16), ModeFast, 0, false, addr(dst), len(dst))
	assert.Equal(t, KindArgument, kindPrefix(t, err))

	n, err := Encode(addr(src), len(src), int(codec.BF16), ModeFast, 0, false, addr(dst), len(dst))
	require.NoError(t, err)
	out := make([]byte, len(src))
	_, err = Decode(addr(dst), n-1, addr(out), len(out))
	assert.Equal(t, KindTruncated, kindPrefix(t, err))
	_, err = Decode(addr(dst), n, addr(out), len(out)-2)
	assert.Equal(t, KindBuffer, kindPrefix(t, err))
	bad := append([]byte(nil), dst[:n]...)
	bad[0] = 'X'
	_, err = Decode(addr(bad), n, addr(out), len(out))
	assert.Equal(t, KindBadMagic, kindPrefix(t, err))
	bad = append([]byte(nil), dst[:n]...)
	bad[20] ^= 1 // inside the header: checksum mismatch
	_, err = Decode(addr(bad), n, addr(out), len(out))
	assert.Equal(t, KindCorrupt, kindPrefix(t, err))
	_, err = CodebookLoad(filepath.Join(t.TempDir(), "missing.json"))
	assert.Equal(t, KindIO, kindPrefix(t, err))
	runtime.KeepAlive(src)
	runtime.KeepAlive(dst)
	runtime.KeepAlive(out)
	runtime.KeepAlive(bad)
}

func TestCalibrateCodebookAndInfo(t *testing.T) {
	src := bf16Data(50000, 7)
	h, err := HistogramNew(int(codec.BF16))
	require.NoError(t, err)
	total, err := HistogramAdd(h, addr(src), len(src))
	require.NoError(t, err)
	assert.Equal(t, 50000, total)
	cb, err := HistogramCodebook(h, 4)
	require.NoError(t, err)
	cov, err := HistogramCoverage(h, cb)
	require.NoError(t, err)
	assert.Greater(t, cov, 0.99)

	js, err := CodebookJSON(cb)
	require.NoError(t, err)
	dir := t.TempDir()
	_, err = CodebookSave(cb, filepath.Join(dir, "cb.json"))
	require.NoError(t, err)
	cb2, err := CodebookLoad(filepath.Join(dir, "cb.json"))
	require.NoError(t, err)
	js2, err := CodebookJSON(cb2)
	require.NoError(t, err)
	assert.JSONEq(t, js, js2)
	cb3, err := CodebookFromJSON(js)
	require.NoError(t, err)

	dst := make([]byte, MaxEncodedLen(len(src)))
	n, err := Encode(addr(src), len(src), int(codec.BF16), ModeFast, cb3, false, addr(dst), len(dst))
	require.NoError(t, err)
	info, err := FrameInfo(addr(dst), n)
	require.NoError(t, err)
	var fi map[string]any
	require.NoError(t, json.Unmarshal([]byte(info), &fi))
	assert.Equal(t, "bf16", fi["dtype"])
	assert.EqualValues(t, 50000, fi["elements"])
	assert.EqualValues(t, n, fi["frame_len"])
	assert.Len(t, fi["codebook"], 16)

	fp32, _ := ParseDType("fp32")
	_, err = Encode(addr(src), len(src), fp32, ModeFast, cb3, false, addr(dst), len(dst))
	assert.Equal(t, KindCodebook, kindPrefix(t, err))

	for _, c := range []int{cb, cb2, cb3} {
		_, err = CodebookRelease(c)
		require.NoError(t, err)
	}
	_, err = CodebookRelease(cb)
	assert.Equal(t, KindHandle, kindPrefix(t, err))
	_, err = HistogramRelease(h)
	require.NoError(t, err)
	runtime.KeepAlive(src)
	runtime.KeepAlive(dst)
}

func TestConcurrentEncode(t *testing.T) {
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			src := bf16Data(20000+g, uint64(g))
			dst := make([]byte, MaxEncodedLen(len(src)))
			got := make([]byte, len(src))
			for range 20 {
				n, err := Encode(addr(src), len(src), int(codec.BF16), ModeFast, 0, false, addr(dst), len(dst))
				assert.NoError(t, err)
				_, err = Decode(addr(dst), n, addr(got), len(got))
				assert.NoError(t, err)
				assert.Equal(t, src, got)
			}
			runtime.KeepAlive(src)
			runtime.KeepAlive(dst)
			runtime.KeepAlive(got)
		})
	}
	wg.Wait()
}

func TestCUDAWithoutDriver(t *testing.T) {
	if n, err := CUDADeviceCount(); err == nil && n > 0 {
		t.Skip("a GPU is present; the GPU paths are tested from Python (tests/python, -m cuda)")
	}
	_, err := CUDADeviceCount()
	if err != nil {
		assert.Equal(t, KindNoDriver, kindPrefix(t, err))
	}
	_, err = CUDAEncode(0, 0, 0x1000, 16, 0, 0x2000, 0x3000, 0x4000)
	require.Error(t, err)
	assert.Contains(t, []string{KindNoDriver, KindCUDA}, kindPrefix(t, err))
	assert.Empty(t, CUDAStatusError(0))
	assert.True(t, strings.HasPrefix(CUDAStatusError(6), "["+KindCorrupt+"]"))
}
