package kernels

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/internal/kvtile"
	"github.com/splitzip/splitzip/internal/safetensors"
	"github.com/splitzip/splitzip/kernels/cuda"
)

const fixturePath = "../tests/data/kv_evaluation.safetensors"

// Test seams: options that force one encoder for every input size, the sm_80 kernels with plain launches, and
// another sm_90 cubin.
func withSmallEncodeBytes(n uint64) Option {
	return func(o *options) error { o.smallBytes = n; return nil }
}

func withTileEncoder() Option      { return withSmallEncodeBytes(math.MaxUint64) }
func withStreamingEncoder() Option { return withSmallEncodeBytes(0) }

// withoutDependentLaunch makes a Codec use the sm_80 kernels and plain launches on any GPU.
func withoutDependentLaunch() Option { return func(o *options) error { o.noPDL = true; return nil } }

// withCubin makes a Codec on compute capability 9.0 try image in place of the embedded sm_90 cubin.
func withCubin(image []byte) Option { return func(o *options) error { o.cubin = image; return nil } }

// gpuEnv is a context, the loaded kernels and a stream; tests skip with the driver's message without a GPU.
type gpuEnv struct {
	ctx   *cuda.Context
	codec *Codec
	s     *cuda.Stream
}

func newGPU(t testing.TB, opts ...Option) *gpuEnv {
	t.Helper()
	if err := cuda.Init(); err != nil {
		t.Skipf("no GPU: %v", err)
	}
	if n, err := cuda.DeviceCount(); err != nil || n == 0 {
		t.Skipf("no GPU: %d devices, %v", n, err)
	}
	ctx, err := cuda.PrimaryContext(0)
	require.NoError(t, err)
	c, err := NewCodec(ctx, opts...)
	require.NoError(t, err)
	s, err := ctx.NewStream(cuda.StreamNonBlocking)
	require.NoError(t, err)
	t.Cleanup(func() {
		assert.NoError(t, s.Close())
		assert.NoError(t, c.Close())
		assert.NoError(t, ctx.Close())
	})
	return &gpuEnv{ctx: ctx, codec: c, s: s}
}

func (g *gpuEnv) alloc(t testing.TB, n int) cuda.DevicePtr {
	t.Helper()
	b, err := g.ctx.Alloc(max(n, 16))
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, b.Free()) })
	return b.Ptr()
}

// workspace allocates an encoder workspace of n bytes, zeroed as its first use requires.
func (g *gpuEnv) workspace(t testing.TB, n int) cuda.DevicePtr {
	t.Helper()
	ws := g.alloc(t, n)
	require.NoError(t, g.s.MemsetD8Async(ws, 0, max(n, 16)))
	return ws
}

// requireReadyWorkspace checks that the encodes before it left their workspace as the next one expects: zero
// but for its counters, of which the copy of every block the codec gives the raw fallback kernel after the
// streaming encoder equals the decision count (and the other copies are zero). It returns that
// count (frames decided by the streaming encoder in the low half; in the high half those that needed the raw
// fallback kernel, lateFrame).
func (g *gpuEnv) requireReadyWorkspace(t testing.TB, ws cuda.DevicePtr, n int, msg ...any) uint64 {
	t.Helper()
	return requireReadyWorkspaceBytes(t, g.download(t, ws, n), g.codec.card.rawBlocks(), msg...)
}

// requireReadyWorkspaceBytes is requireReadyWorkspace on a workspace's bytes (the host emulation's), whose raw
// fallback kernel ran rawBlocks blocks after the streaming encoder.
func requireReadyWorkspaceBytes(t testing.TB, got []byte, rawBlocks uint32, msg ...any) uint64 {
	t.Helper()
	n := len(got)
	decided := binary.LittleEndian.Uint64(got)
	for b := range uint32(rawBlocksMax) {
		want := decided
		if b >= rawBlocks {
			want = 0
		}
		require.Equal(t, want, binary.LittleEndian.Uint64(got[8*(seenWord+b):]), "raw fallback block %d's count: %v", b, fmt.Sprint(msg...))
	}
	if gap := got[8 : 8*seenWord]; !bytes.Equal(gap, make([]byte, len(gap))) {
		require.Failf(t, "workspace counters", "nonzero word between the decision count and the blocks' copies: %v", fmt.Sprint(msg...))
	}
	if body := got[counterBytes:]; !bytes.Equal(body, make([]byte, len(body))) {
		i := slices.IndexFunc(body, func(b byte) bool { return b != 0 })
		require.Failf(t, "workspace not left zero", "first nonzero byte at %d of %d (% x): %v", counterBytes+i, n, body[i&^7:min(i&^7+16, len(body))], fmt.Sprint(msg...))
	}
	return decided
}

// streamMapped is kMapped of encode_stream.cuh: the most escapes a finishing warp places for its group.
const streamMapped = 8 * 32

// lateFrame reports whether the streaming encoder's frame needed the raw fallback kernel after it: a raw frame,
// or one with a group of streamGroup chunks that deferred its escapes to that kernel (more than streamMapped,
// or a chunk with more than streamSlots).
func lateFrame(t testing.TB, frame []byte) bool {
	t.Helper()
	h, err := codec.ParseHeader(frame)
	require.NoError(t, err)
	if h.Raw {
		return true
	}
	chunks := chunksOf(h.Elements)
	table := align16(headerSize + codebookLen)
	at := func(c uint64) uint64 {
		if c >= chunks {
			return h.Escapes
		}
		return uint64(binary.LittleEndian.Uint32(frame[table+4*c:]))
	}
	for c0 := uint64(0); c0 < chunks; c0 += streamGroup {
		if at(min(c0+streamGroup, chunks))-at(c0) > streamMapped {
			return true
		}
		for c := c0; c < min(c0+streamGroup, chunks); c++ {
			if at(c+1)-at(c) > streamSlots {
				return true
			}
		}
	}
	return false
}

func (g *gpuEnv) upload(t testing.TB, data []byte) cuda.DevicePtr {
	t.Helper()
	p := g.alloc(t, len(data))
	require.NoError(t, g.s.CopyHtoD(p, data))
	return p
}

func (g *gpuEnv) download(t testing.TB, p cuda.DevicePtr, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	require.NoError(t, g.s.CopyDtoH(b, p))
	return b
}

func (g *gpuEnv) u64(t testing.TB, p cuda.DevicePtr) uint64 {
	return binary.LittleEndian.Uint64(g.download(t, p, 8))
}

// encode runs EncodeAsync over src into a buffer poisoned with poison, checks that nothing past the frame
// was written and that the workspace was left ready for the next call, and returns the frame.
func (g *gpuEnv) encode(t testing.TB, src []byte, cb *codec.Codebook, poison byte) []byte {
	t.Helper()
	n := EncodeWorkspaceSize(len(src))
	return g.encodeWS(t, src, cb, poison, g.workspace(t, n), n)
}

// encodeWS is encode with a given workspace of wsLen bytes.
func (g *gpuEnv) encodeWS(t testing.TB, src []byte, cb *codec.Codebook, poison byte, ws cuda.DevicePtr, wsLen int) []byte {
	t.Helper()
	in := g.upload(t, src)
	capacity := MaxEncodedLen(len(src)) + 64
	dst := g.alloc(t, capacity)
	size := g.alloc(t, 8)
	require.NoError(t, g.s.MemsetD8Async(dst, poison, capacity))
	require.NoError(t, g.s.MemsetD8Async(size, 0xEE, 8))
	require.NoError(t, g.codec.EncodeAsync(g.s, in, len(src), cb, dst, size, ws))
	n := g.u64(t, size)
	require.LessOrEqual(t, n, uint64(MaxEncodedLen(len(src))), "frame length")
	out := g.download(t, dst, capacity)
	require.Equal(t, bytes.Repeat([]byte{poison}, capacity-int(n)), out[n:], "bytes past the frame's end were written")
	g.requireReadyWorkspace(t, ws, wsLen, "after encoding ", len(src), " bytes")
	return out[:n]
}

// decode runs DecodeAsync over frame into a poisoned buffer of outLen bytes.
func (g *gpuEnv) decode(t testing.TB, frame []byte, frameCap, outLen int, poison byte) ([]byte, error) {
	t.Helper()
	return g.decodeWith(t, g.codec.DecodeAsync, frame, frameCap, outLen, poison)
}

// decodeWith runs a decoder (DecodeAsync, DecodeHighRatioAsync) over frame into a poisoned buffer of outLen
// bytes, and returns what it wrote and its status.
func (g *gpuEnv) decodeWith(t testing.TB, decode func(*cuda.Stream, cuda.DevicePtr, int, cuda.DevicePtr, int, cuda.DevicePtr) error,
	frame []byte, frameCap, outLen int, poison byte) ([]byte, error) {
	t.Helper()
	in := g.upload(t, frame)
	dst := g.alloc(t, outLen)
	status := g.alloc(t, 4)
	require.NoError(t, g.s.MemsetD8Async(dst, poison, max(outLen, 16)))
	require.NoError(t, decode(g.s, in, frameCap, dst, outLen, status))
	st := binary.LittleEndian.Uint32(g.download(t, status, 4))
	return g.download(t, dst, outLen), StatusError(st)
}

func cpuEncode(t testing.TB, src []byte, cb *codec.Codebook) []byte {
	t.Helper()
	enc, err := codec.NewEncoder()
	require.NoError(t, err)
	frame, err := enc.EncodeWith(nil, src, cb)
	require.NoError(t, err)
	return frame
}

func cpuDecode(t testing.TB, frame []byte) []byte {
	t.Helper()
	dec, err := codec.NewDecoder()
	require.NoError(t, err)
	out, _, err := dec.Decode(nil, frame)
	require.NoError(t, err)
	return out
}

func defaultBook(t testing.TB) *codec.Codebook {
	cb, err := codec.DefaultCodebook(codec.BF16)
	require.NoError(t, err)
	return cb
}

// realKV returns the evaluation fixture's tensors in file order (layer 0 K, layer 0 V, layer 1 K, …).
func realKV(t testing.TB) *safetensors.File {
	t.Helper()
	f, err := safetensors.ReadFile(fixturePath)
	require.NoError(t, err)
	return f
}

func concat(f *safetensors.File) []byte {
	var b []byte
	for _, x := range f.Tensors {
		b = append(b, x.Data...)
	}
	return b
}

func randn(r *rand.Rand, n int, scale float64) []byte {
	b := make([]byte, 2*n)
	for i := range n {
		binary.LittleEndian.PutUint16(b[2*i:], uint16(math.Float32bits(float32(r.NormFloat64()*scale))>>16))
	}
	return b
}

func randomBits(r *rand.Rand, n int) []byte {
	b := make([]byte, 2*n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// withEscapes returns randn data where a fraction of elements take an exponent outside cb.
func withEscapes(r *rand.Rand, n int, frac float64, cb *codec.Codebook) []byte {
	b := randn(r, n, 1)
	var outside []uint8
	for e := range 256 {
		if !cb.Contains(uint8(e)) {
			outside = append(outside, uint8(e))
		}
	}
	for i := range n {
		if r.Float64() < frac {
			v := binary.LittleEndian.Uint16(b[2*i:])
			x := uint16(outside[r.IntN(len(outside))])
			binary.LittleEndian.PutUint16(b[2*i:], v&^0x7F80|x<<7)
		}
	}
	return b
}

// heavyChunks is withEscapes applied to every every-th 4,096-element chunk only. With frac over
// streamSlots / 4,096, the streaming encoder's groups then mix chunks past their parked slots (read again)
// with chunks within them, and have more escapes than the streamMapped a finishing warp places itself.
func heavyChunks(r *rand.Rand, n, every int, frac float64, cb *codec.Codebook) []byte {
	b := randn(r, n, 1)
	for c := 0; c*4096 < n; c += every {
		end := min(n, (c+1)*4096)
		copy(b[2*c*4096:2*end], withEscapes(r, end-c*4096, frac, cb))
	}
	return b
}

// denseUnits is n elements of randn with every k-th 8-element unit escaping whole (exponents outside cb):
// escapes clustered in few units.
func denseUnits(r *rand.Rand, n, k int, cb *codec.Codebook) []byte {
	b := randn(r, n, 1)
	for u := 0; 8*u+8 <= n; u += k {
		copy(b[16*u:16*u+16], withEscapes(r, 8, 1, cb))
	}
	return b
}

type input struct {
	name string
	data []byte
}

func inputs(t testing.TB) []input {
	r := rand.New(rand.NewPCG(7, 11))
	cb := defaultBook(t)
	kv := concat(realKV(t))
	in := []input{
		{"real-kv", kv},
		{"real-kv-odd", kv[:2*(len(kv)/2-12345)+2]},
		{"randn", randn(r, 1<<20+5, 1)},
		{"randn-tiny-scale", randn(r, 100003, 1e-3)},
		{"random-bits", randomBits(r, 300001)},
		{"all-escape", withEscapes(r, 70000, 1, cb)},
		{"escapes-15pct", withEscapes(r, 200003, 0.15, cb)},
		{"escapes-17pct", withEscapes(r, 200003, 0.17, cb)},
	}
	for _, n := range []int{0, 1, 2, 7, 8, 9, 15, 16, 17, 40, 41, 255, 4095, 4096, 4097, 8191, 8192, 12345, 65536 + 3} {
		in = append(in, input{fmt.Sprintf("randn-%d", n), randn(r, n, 1)})
	}
	return in
}

// decides reports whether c encodes a frame of n elements with the streaming encoder, whose header warps count
// their decisions in the workspace (the tile encoder and the host's raw frames count none).
func decides(c *Codec, n uint64) bool {
	return 2*n >= c.smallBytes && escapesOffset(n) <= headerSize+2*n
}

// Both encoders write the CPU encoder's frames at every size, from both builds, and the frames decode.
func TestEncoders(t *testing.T) {
	cb := defaultBook(t)
	r := rand.New(rand.NewPCG(8, 8))
	kv := concat(realKV(t))
	// 40 MiB: a streaming encoder's grid interleaves finishing blocks with coding ones from 32 MiB on.
	data := [][]byte{kv, kvtile.Tile(kv, 40<<20+6, 3), kv[:2*12345], withEscapes(r, 100003, 0.15, cb), withEscapes(r, 3*4096+5, 0.001, cb), randomBits(r, 5000),
		heavyChunks(r, 100*4096+77, 5, 0.2, cb)}
	type config struct {
		name string
		opts []Option
	}
	var configs []config
	for name, enc := range map[string]Option{"tile": withTileEncoder(), "streaming": withStreamingEncoder()} {
		// Both builds: the sm_90 PTX with dependent launches (on Hopper) and the sm_80 one with plain launches.
		configs = append(configs, config{name, []Option{enc}}, config{name, []Option{enc, withoutDependentLaunch()}})
	}
	// The default codec: the tile encoder below SmallEncodeBytes and the streaming one above, on one workspace;
	// and the same kernels loaded through WithPTX (the sm_80 build: plain launches).
	configs = append(configs, config{"default", nil}, config{"WithPTX", []Option{WithPTX(ptx)}})
	for _, cf := range configs {
		g := newGPU(t, cf.opts...)
		name := fmt.Sprintf("%s (dependent launch %v)", cf.name, g.codec.DependentLaunch())
		if cf.name == "WithPTX" {
			require.False(t, g.codec.DependentLaunch(), "the sm_80 PTX has no griddepcontrol")
		}
		// One workspace serves every input, large and small, coded and raw, in turn (twice).
		wsLen := EncodeWorkspaceSize(len(data[1]))
		ws := g.workspace(t, wsLen)
		var decided, raw uint64 // the streaming encoder's frame decisions
		for i, in := range slices.Concat(data, data) {
			frame := cpuEncode(t, in, cb)
			require.Equal(t, frame, g.encodeWS(t, in, cb, 0xA5, ws, wsLen), "%s input %d", name, i)
			out, err := g.decode(t, frame, len(frame), len(in), 0x5A)
			require.NoError(t, err)
			require.True(t, bytes.Equal(in, out), "%s input %d", name, i)
			if decides(g.codec, uint64(len(in)/2)) {
				decided++
				if lateFrame(t, frame) {
					raw++
				}
			}
		}
		// The raw fallback kernel learnt each frame's decision from the count (and copied the raw ones and
		// placed the deferred escapes: the frames above are right).
		assert.Equal(t, raw<<32|decided, g.requireReadyWorkspace(t, ws, wsLen), "%s: decisions", name)
	}
	// Hopper gets the dependent launches wherever the driver has cuLaunchKernelEx.
	g := newGPU(t)
	major, _, err := g.codec.Context().Device().ComputeCapability()
	require.NoError(t, err)
	assert.Equal(t, major >= 9 && cuda.CanLaunchWith(), g.codec.DependentLaunch(), "compute capability %d", major)
}

// GPU frames are byte-identical to CPU frames, every byte is written, nothing past the frame is, and the
// frames decode on the CPU.
func TestEncodeMatchesCPU(t *testing.T) {
	g := newGPU(t)
	cb := defaultBook(t)
	for _, in := range inputs(t) {
		want := cpuEncode(t, in.data, cb)
		for _, poison := range []byte{0x00, 0xA5} {
			got := g.encode(t, in.data, cb, poison)
			if !bytes.Equal(want, got) {
				require.Equal(t, len(want), len(got), "%s: frame length", in.name)
				i := 0
				for i < len(want) && want[i] == got[i] {
					i++
				}
				t.Fatalf("%s (poison %#x): frames differ first at byte %d of %d: cpu % x, gpu % x", in.name, poison, i, len(want),
					want[i:min(i+16, len(want))], got[i:min(i+16, len(got))])
			}
		}
		got := g.encode(t, in.data, cb, 0x5A)
		require.True(t, bytes.Equal(in.data, cpuDecode(t, got)), in.name)
		h, err := codec.ParseHeader(got)
		require.NoError(t, err)
		t.Logf("%-18s %9d B -> %9d B  raw=%-5v escapes=%d", in.name, len(in.data), len(got), h.Raw, h.Escapes)
	}
}

// Other codebooks (calibrated on other data, a reordered one) are honoured the same way.
func TestEncodeOtherCodebooks(t *testing.T) {
	g := newGPU(t)
	r := rand.New(rand.NewPCG(1, 1))
	data := randn(r, 300000, 0.02)
	calibrated, err := codec.Calibrate(codec.BF16, 4, data)
	require.NoError(t, err)
	rev := slices.Clone(defaultBook(t).Exponents)
	slices.Reverse(rev)
	reversed, err := codec.NewCodebook(codec.BF16, 4, rev)
	require.NoError(t, err)
	for _, cb := range []*codec.Codebook{calibrated, reversed} {
		require.Equal(t, cpuEncode(t, data, cb), g.encode(t, data, cb, 0x11))
	}
	_, err = codebookWords(&codec.Codebook{DType: codec.FP16, Bits: 4, Exponents: make([]uint8, 16)})
	require.ErrorIs(t, err, codec.ErrCodebook)
}

// The GPU decodes CPU frames bit-exactly, writing every output byte.
func TestDecodeCPUFrames(t *testing.T) {
	g := newGPU(t)
	cb := defaultBook(t)
	for _, in := range inputs(t) {
		frame := cpuEncode(t, in.data, cb)
		for _, poison := range []byte{0x00, 0xFF} {
			out, err := g.decode(t, frame, len(frame), len(in.data), poison)
			require.NoError(t, err, in.name)
			require.True(t, bytes.Equal(in.data, out), "%s (poison %#x)", in.name, poison)
		}
	}
	// Raw frames of other dtypes (odd byte counts too) decode as well.
	r := rand.New(rand.NewPCG(3, 3))
	for _, n := range []int{1, 3, 17, 12345, 65536} {
		data := randomBits(r, n)[:n]
		enc, err := codec.NewEncoder()
		require.NoError(t, err)
		frame, err := enc.Encode(nil, data, codec.Int8)
		require.NoError(t, err)
		out, err := g.decode(t, frame, len(frame), n, 0x77)
		require.NoError(t, err)
		require.Equal(t, data, out, "int8 raw frame of %d bytes", n)
	}
}

func TestDecodeErrors(t *testing.T) {
	g := newGPU(t)
	r := rand.New(rand.NewPCG(5, 5))
	data := withEscapes(r, 50000, 0.01, defaultBook(t))
	frame := cpuEncode(t, data, defaultBook(t))
	h, err := codec.ParseHeader(frame)
	require.NoError(t, err)
	require.False(t, h.Raw)
	mutate := func(f func(b []byte)) []byte {
		b := slices.Clone(frame)
		f(b)
		return b
	}
	_, err = g.decode(t, mutate(func(b []byte) { b[0] = 'X' }), len(frame), len(data), 0)
	assert.ErrorIs(t, err, codec.ErrBadMagic)
	_, err = g.decode(t, mutate(func(b []byte) { b[4] = 2 }), len(frame), len(data), 0)
	assert.ErrorIs(t, err, codec.ErrVersion)
	_, err = g.decode(t, mutate(func(b []byte) { b[20] ^= 1 }), len(frame), len(data), 0)
	assert.ErrorIs(t, err, codec.ErrHeaderCRC)
	_, err = g.decode(t, frame, len(frame), len(data)-2, 0)
	assert.ErrorIs(t, err, codec.ErrShortBuffer)
	_, err = g.decode(t, frame, len(frame)-1, len(data), 0)
	assert.ErrorIs(t, err, codec.ErrTruncated)
	table := int(h.Layout().Table)
	_, err = g.decode(t, mutate(func(b []byte) { binary.LittleEndian.PutUint32(b[table+4:], 1<<30) }), len(frame), len(data), 0)
	assert.ErrorIs(t, err, codec.ErrCorrupt)
	_, err = g.decode(t, mutate(func(b []byte) { binary.LittleEndian.PutUint32(b[table:], 1) }), len(frame), len(data), 0)
	assert.ErrorIs(t, err, codec.ErrCorrupt)
	// A valid frame the GPU decoder does not handle.
	enc, err := codec.NewEncoder()
	require.NoError(t, err)
	// fp32 values of real KV (exactly the bf16 ones), so the fp32 frame is coded, not raw.
	kv := concat(realKV(t))[:2*1000]
	f32 := make([]byte, 4*1000)
	for i := range 1000 {
		binary.LittleEndian.PutUint32(f32[4*i:], uint32(binary.LittleEndian.Uint16(kv[2*i:]))<<16)
	}
	fr, err := enc.Encode(nil, f32, codec.FP32)
	require.NoError(t, err)
	fh, err := codec.ParseHeader(fr)
	require.NoError(t, err)
	require.False(t, fh.Raw, "fp32 test frame should be coded")
	_, err = g.decode(t, fr, len(fr), len(f32), 0)
	assert.ErrorIs(t, err, codec.ErrDType)

	// Misuse is refused before anything is enqueued.
	assert.ErrorIs(t, g.codec.EncodeAsync(g.s, 8, 32, defaultBook(t), 0, 0, 0), ErrAlignment)
	assert.ErrorIs(t, g.codec.EncodeAsync(g.s, 0, 31, defaultBook(t), 0, 0, 0), codec.ErrSize)
	assert.ErrorIs(t, g.codec.DecodeAsync(g.s, 0, 64, 4, 16, 0), ErrAlignment)
}

// Several streams encode and decode at once, from several goroutines.
func TestConcurrentStreams(t *testing.T) {
	g := newGPU(t)
	cb := defaultBook(t)
	const k = 4
	r := rand.New(rand.NewPCG(9, 9))
	kv := concat(realKV(t))
	type job struct {
		s                       *cuda.Stream
		data                    []byte
		src, dst, size, ws, out cuda.DevicePtr
		st                      cuda.DevicePtr
	}
	jobs := make([]job, k)
	for i := range jobs {
		s, err := g.ctx.NewStream(cuda.StreamNonBlocking)
		require.NoError(t, err)
		defer s.Close()
		data := kv
		if i%2 == 1 {
			data = withEscapes(r, len(kv)/2, 0.001*float64(i), cb)
		}
		j := job{s: s, data: data}
		j.src = g.upload(t, data)
		j.dst = g.alloc(t, MaxEncodedLen(len(data)))
		j.size, j.st = g.alloc(t, 8), g.alloc(t, 4)
		j.ws = g.workspace(t, EncodeWorkspaceSize(len(data)))
		j.out = g.alloc(t, len(data))
		jobs[i] = j
	}
	var wg sync.WaitGroup
	errs := make([]error, k)
	for rep := range 3 {
		for i := range jobs {
			wg.Add(1)
			go func(j *job, i int) {
				defer wg.Done()
				for range 5 {
					if err := g.codec.EncodeAsync(j.s, j.src, len(j.data), cb, j.dst, j.size, j.ws); err != nil {
						errs[i] = err
						return
					}
					if err := j.s.MemsetD8Async(j.out, byte(rep), len(j.data)); err != nil {
						errs[i] = err
						return
					}
					if err := g.codec.DecodeAsync(j.s, j.dst, MaxEncodedLen(len(j.data)), j.out, len(j.data), j.st); err != nil {
						errs[i] = err
						return
					}
				}
			}(&jobs[i], i)
		}
		wg.Wait()
		for i, j := range jobs {
			require.NoError(t, errs[i])
			require.NoError(t, j.s.Synchronize())
			size := binary.LittleEndian.Uint64(g.download(t, j.size, 8))
			frame := g.download(t, j.dst, int(size))
			require.Equal(t, cpuEncode(t, j.data, cb), frame, "stream %d", i)
			require.NoError(t, StatusError(binary.LittleEndian.Uint32(g.download(t, j.st, 4))))
			require.True(t, bytes.Equal(j.data, g.download(t, j.out, len(j.data))), "stream %d", i)
			g.requireReadyWorkspace(t, j.ws, EncodeWorkspaceSize(len(j.data)), "stream ", i)
		}
	}
}

// capture records what enqueue queues on g's stream into a CUDA graph and returns it instantiated, closed when
// the test ends.
func (g *gpuEnv) capture(t *testing.T, enqueue func() error) *cuda.GraphExec {
	t.Helper()
	var exec *cuda.GraphExec
	require.NoError(t, g.ctx.Do(func() error {
		if err := g.s.BeginCapture(cuda.CaptureThreadLocal); err != nil {
			return err
		}
		if err := enqueue(); err != nil {
			return err
		}
		graph, err := g.s.EndCapture()
		if err != nil {
			return err
		}
		defer graph.Close()
		exec, err = graph.Instantiate()
		return err
	}))
	t.Cleanup(func() { exec.Close() })
	return exec
}

// Encode and decode can be captured in a CUDA graph and replayed over new data in the same buffers.
// Both encoders: the default one at this size (the small one) and the streaming one, whose finishing blocks
// leave the workspace zero for the next replay.
func TestGraphCapture(t *testing.T) {
	for name, opts := range map[string][]Option{"default": nil, "streaming": {withStreamingEncoder()}} {
		t.Run(name, func(t *testing.T) { testGraphCapture(t, newGPU(t, opts...)) })
	}
}

func testGraphCapture(t *testing.T, g *gpuEnv) {
	cb := defaultBook(t)
	r := rand.New(rand.NewPCG(2, 2))
	const n = 1<<18 + 3
	ws := g.workspace(t, EncodeWorkspaceSize(2*n))
	rt := g.captureRoundTrip(t, 2*n,
		func(src, dst, size cuda.DevicePtr) error {
			return g.codec.EncodeAsync(g.s, src, 2*n, cb, dst, size, ws)
		},
		func(dst, out, st cuda.DevicePtr) error {
			return g.codec.DecodeAsync(g.s, dst, MaxEncodedLen(2*n), out, 2*n, st)
		})
	for rep, frac := range []float64{0, 0.001, 0.3} {
		data := withEscapes(r, n, frac, cb)
		rt.replay(t, rep, data, cpuEncode(t, data, cb))
		g.requireReadyWorkspace(t, ws, EncodeWorkspaceSize(2*n), "replay ", rep)
	}
}

// roundTripGraph is an encode, a copy of the frame's size to the host and a decode, captured in one CUDA graph
// over fixed buffers, so that replays over new inputs check what a captured codec leaves behind.
type roundTripGraph struct {
	g                       *gpuEnv
	src, dst, out, size, st cuda.DevicePtr
	n                       int
	host                    *cuda.HostBuffer
	exec                    *cuda.GraphExec
}

// captureRoundTrip captures encode (src → dst, the frame's size to size) and decode (dst → out, the status to
// st) of n bytes.
func (g *gpuEnv) captureRoundTrip(t *testing.T, n int, encode func(src, dst, size cuda.DevicePtr) error,
	decode func(dst, out, st cuda.DevicePtr) error) *roundTripGraph {
	t.Helper()
	rt := &roundTripGraph{g: g, n: n, src: g.alloc(t, n), out: g.alloc(t, n), dst: g.alloc(t, MaxEncodedLen(n)),
		size: g.alloc(t, 8), st: g.alloc(t, 4)}
	host, err := g.ctx.HostAlloc(8, 0)
	require.NoError(t, err)
	t.Cleanup(func() { host.Free() })
	rt.host = host
	rt.exec = g.capture(t, func() error {
		if err := encode(rt.src, rt.dst, rt.size); err != nil {
			return err
		}
		if err := g.s.MemcpyDtoHAsync(host.Ptr(), rt.size, 8); err != nil {
			return err
		}
		return decode(rt.dst, rt.out, rt.st)
	})
	return rt
}

// replay runs the graph over data and checks its frame against want (the CPU encoder's), the size it copied,
// the decoder's status and its output.
func (rt *roundTripGraph) replay(t *testing.T, rep int, data, want []byte) {
	t.Helper()
	g := rt.g
	require.NoError(t, g.s.CopyHtoD(rt.src, data))
	require.NoError(t, g.s.MemsetD8Async(rt.out, 0xCD, rt.n))
	require.NoError(t, rt.exec.Launch(g.s))
	require.NoError(t, g.s.Synchronize())
	require.Equal(t, uint64(len(want)), binary.LittleEndian.Uint64(rt.host.Bytes()), "replay %d", rep)
	require.Equal(t, want, g.download(t, rt.dst, len(want)), "replay %d", rep)
	require.NoError(t, StatusError(binary.LittleEndian.Uint32(g.download(t, rt.st, 4))), "replay %d", rep)
	require.True(t, bytes.Equal(data, g.download(t, rt.out, rt.n)), "replay %d", rep)
}

// pagedCache is a KV cache on the device: one buffer per layer, laid out FlashAttention-style
// ([2, numBlocks, blockElems]) or FlashInfer-style ([numBlocks, 2, blockElems]), of elements of elem bytes.
type pagedCache struct {
	layout      PagedLayout
	bufs        []cuda.DevicePtr
	elem        int
	numBlocks   int
	interleaved bool
}

// newPagedCache is a pagedCache of bf16 elements.
func newPagedCache(t testing.TB, g *gpuEnv, layers, numBlocks, blockElems int, interleaved bool, fill byte) *pagedCache {
	return newPagedCacheOf(t, g, 2, layers, numBlocks, blockElems, interleaved, fill)
}

func newPagedCacheOf(t testing.TB, g *gpuEnv, elem, layers, numBlocks, blockElems int, interleaved bool, fill byte) *pagedCache {
	c := &pagedCache{elem: elem, numBlocks: numBlocks, interleaved: interleaved}
	bases := make([]byte, 0, 16*layers)
	for range layers {
		p := g.alloc(t, 2*elem*numBlocks*blockElems)
		require.NoError(t, g.s.MemsetD8Async(p, fill, 2*elem*numBlocks*blockElems))
		c.bufs = append(c.bufs, p)
		k, v := p, p.Add(elem*numBlocks*blockElems)
		if interleaved {
			v = p.Add(elem * blockElems)
		}
		bases = binary.LittleEndian.AppendUint64(bases, uint64(k))
		bases = binary.LittleEndian.AppendUint64(bases, uint64(v))
	}
	stride := blockElems
	if interleaved {
		stride = 2 * blockElems
	}
	c.layout = PagedLayout{Bases: g.upload(t, bases), Layers: layers, BlockElems: blockElems, BlockStride: stride}
	return c
}

// blockOff is where block b of K (kv=0) or V (kv=1) of a layer starts, relative to the layer's buffer.
func (c *pagedCache) blockOff(kv, b int) int {
	if c.interleaved {
		return c.elem * (2*b + kv) * c.layout.BlockElems
	}
	return c.elem * (kv*c.numBlocks + b) * c.layout.BlockElems
}

func (c *pagedCache) put(t testing.TB, g *gpuEnv, layer, kv, b int, data []byte) {
	require.NoError(t, g.s.CopyHtoD(c.bufs[layer].Add(c.blockOff(kv, b)), data))
}

func (c *pagedCache) get(t testing.TB, g *gpuEnv, layer, kv, b int) []byte {
	return g.download(t, c.bufs[layer].Add(c.blockOff(kv, b)), c.elem*c.layout.BlockElems)
}

func int32s(ids []int) []byte {
	b := make([]byte, 0, 4*len(ids))
	for _, id := range ids {
		b = binary.LittleEndian.AppendUint32(b, uint32(id))
	}
	return b
}

// A request's blocks are gather-encoded straight from a paged cache (one frame, or one per layer), the
// frames match the CPU encoder's over the gathered tensors, and decode-scatter writes them into another cache
// with other block ids and another layout, touching nothing else.
func TestPagedRoundTrip(t *testing.T) {
	f := realKV(t)
	for name, enc := range map[string]Option{"tile": withTileEncoder(), "streaming": withStreamingEncoder()} {
		for _, nb := range []int{int(f.Tensors[0].Shape[0]) / 16, 3} {
			t.Run(fmt.Sprintf("%s/%d-blocks", name, nb), func(t *testing.T) { testPaged(t, enc, nb) })
		}
	}
}

func testPaged(t *testing.T, enc Option, nb int) {
	g := newGPU(t, enc)
	cb := defaultBook(t)
	f := realKV(t)
	// The fixture: 30 layers × (K, V) of [256 tokens, 3 heads, 64]; 16-token blocks of 3,072 elements.
	const blockTokens, numBlocks = 16, 40
	layers := len(f.Tensors) / 2
	blockElems := blockTokens * int(f.Tensors[0].Shape[1]*f.Tensors[0].Shape[2])
	require.LessOrEqual(t, nb, int(f.Tensors[0].Shape[0])/blockTokens)
	r := rand.New(rand.NewPCG(4, 4))
	escapey := r.IntN(layers)

	for _, tc := range []struct {
		name             string
		perLayer         bool
		srcIL, dstIL     bool
		escapeHeavyLayer bool
	}{
		{"one-frame", false, false, true, false},
		{"per-layer", true, true, false, false},
		{"per-layer-raw-fallback", true, false, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := newPagedCache(t, g, layers, numBlocks, blockElems, tc.srcIL, 0x3C)
			dstCache := newPagedCache(t, g, layers, numBlocks, blockElems, tc.dstIL, 0xC3)
			srcIDs, dstIDs := r.Perm(numBlocks)[:nb], r.Perm(numBlocks)[:nb]
			var gathered [][]byte // per layer: K blocks then V blocks
			for l := range layers {
				var lay []byte
				for kv := range 2 {
					data := f.Tensors[2*l+kv].Data
					if tc.escapeHeavyLayer && l == escapey {
						data = randomBits(r, len(data)/2)
					}
					for b := range nb {
						blk := data[2*b*blockElems : 2*(b+1)*blockElems]
						src.put(t, g, l, kv, srcIDs[b], blk)
						lay = append(lay, blk...)
					}
				}
				gathered = append(gathered, lay)
			}
			req := PagedRequest{BlockIDs: g.upload(t, int32s(srcIDs)), NumBlocks: nb, PerLayer: tc.perLayer}
			frames, elems := src.layout.Frames(req)
			stride := src.layout.FrameStride(req)
			dst := g.alloc(t, frames*stride)
			sizes := g.alloc(t, 8*frames)
			wsLen := src.layout.GatherEncodeWorkspaceSize(req)
			ws := g.workspace(t, wsLen)
			require.NoError(t, g.s.MemsetD8Async(dst, 0x99, frames*stride))
			require.NoError(t, g.codec.GatherEncodeAsync(g.s, src.layout, req, cb, dst, sizes, ws))
			g.requireReadyWorkspace(t, ws, wsLen)
			lens := g.download(t, sizes, 8*frames)
			all := g.download(t, dst, frames*stride)
			var tensors [][]byte
			if tc.perLayer {
				tensors = gathered
			} else {
				tensors = [][]byte{slices.Concat(gathered...)}
			}
			require.Len(t, tensors, frames)
			for i, want := range tensors {
				require.Equal(t, 2*elems, len(want))
				size := binary.LittleEndian.Uint64(lens[8*i:])
				frame := all[i*stride : i*stride+int(size)]
				require.Equal(t, cpuEncode(t, want, cb), frame, "frame %d", i)
			}

			dreq := PagedRequest{BlockIDs: g.upload(t, int32s(dstIDs)), NumBlocks: nb, PerLayer: tc.perLayer}
			status := g.alloc(t, 4)
			require.NoError(t, g.codec.DecodeScatterAsync(g.s, dst, stride, stride, dstCache.layout, dreq, status))
			require.NoError(t, StatusError(binary.LittleEndian.Uint32(g.download(t, status, 4))))
			used := map[int]int{}
			for b, id := range dstIDs {
				used[id] = b
			}
			for l := range layers {
				for kv := range 2 {
					for id := range numBlocks {
						got := dstCache.get(t, g, l, kv, id)
						if b, ok := used[id]; ok {
							want := gathered[l][2*(kv*nb+b)*blockElems : 2*(kv*nb+b+1)*blockElems]
							require.True(t, bytes.Equal(want, got), "layer %d kv %d block %d", l, kv, id)
						} else {
							require.Equal(t, bytes.Repeat([]byte{0xC3}, len(got)), got, "untouched block %d", id)
						}
					}
				}
			}
		})
	}
}
