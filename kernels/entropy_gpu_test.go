package kernels

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/internal/fp8"
	"github.com/splitzip/splitzip/internal/kvtile"
	"github.com/splitzip/splitzip/internal/safetensors"
	"github.com/splitzip/splitzip/kernels/cuda"
)

// hrTable is the code table the CPU encoder would choose for bf16 data, and its bytes as frames carry them.
func hrTable(t testing.TB, data ...[]byte) (*codec.CodeTable, []byte) {
	t.Helper()
	return hrTableOf(t, codec.BF16, data...)
}

// hrTableOf is hrTable for data of dt.
func hrTableOf(t testing.TB, dt codec.DType, data ...[]byte) (*codec.CodeTable, []byte) {
	t.Helper()
	h, err := codec.NewHistogram(dt)
	require.NoError(t, err)
	for _, d := range data {
		require.NoError(t, h.Add(d))
	}
	tab, err := h.CodeTable()
	require.NoError(t, err)
	b, err := tab.MarshalBinary()
	require.NoError(t, err)
	return tab, b
}

func cpuEncodeHR(t testing.TB, src []byte, tab *codec.CodeTable) []byte {
	t.Helper()
	return cpuEncodeHROf(t, codec.BF16, src, tab)
}

func cpuEncodeHROf(t testing.TB, dt codec.DType, src []byte, tab *codec.CodeTable) []byte {
	t.Helper()
	enc, err := codec.NewEncoder(codec.WithMode(codec.ModeHighRatio), codec.WithCodeTable(tab))
	require.NoError(t, err)
	frame, err := enc.Encode(nil, src, dt)
	require.NoError(t, err)
	return frame
}

// encodeHR runs EncodeHighRatioAsync over src into a poisoned buffer and checks nothing past the frame was
// written.
func (g *gpuEnv) encodeHR(t testing.TB, src, table []byte, poison byte) []byte {
	t.Helper()
	return g.encodeHROf(t, codec.BF16, src, table, poison)
}

// encodeHROf is encodeHR for src of dt, through EncodeHighRatioDTypeAsync.
func (g *gpuEnv) encodeHROf(t testing.TB, dt codec.DType, src, table []byte, poison byte) []byte {
	t.Helper()
	in := g.upload(t, src)
	tab := g.upload(t, table)
	capacity := MaxEncodedLen(len(src)) + 64
	dst := g.alloc(t, capacity)
	size := g.alloc(t, 8)
	ws := g.alloc(t, HighRatioDTypeWorkspaceSize(dt, len(src)))
	require.NoError(t, g.s.MemsetD8Async(dst, poison, capacity))
	require.NoError(t, g.codec.EncodeHighRatioDTypeAsync(g.s, dt, in, len(src), tab, len(table), dst, size, ws))
	n := g.u64(t, size)
	require.LessOrEqual(t, n, uint64(MaxEncodedLen(len(src))), "frame length")
	out := g.download(t, dst, capacity)
	require.Equal(t, bytes.Repeat([]byte{poison}, capacity-int(n)), out[n:], "bytes past the frame's end were written")
	return out[:n]
}

func (g *gpuEnv) decodeHR(t testing.TB, frame []byte, frameCap, outLen int, poison byte) ([]byte, error) {
	t.Helper()
	return g.decodeWith(t, g.codec.DecodeHighRatioAsync, frame, frameCap, outLen, poison)
}

// decodeHROf is decodeHR into a tensor of dt, through DecodeHighRatioDTypeAsync.
func (g *gpuEnv) decodeHROf(t testing.TB, dt codec.DType, frame []byte, frameCap, outLen int, poison byte) ([]byte, error) {
	t.Helper()
	decode := func(s *cuda.Stream, src cuda.DevicePtr, frameLen int, dst cuda.DevicePtr, dstLen int, status cuda.DevicePtr) error {
		return g.codec.DecodeHighRatioDTypeAsync(s, dt, src, frameLen, dst, dstLen, status)
	}
	return g.decodeWith(t, decode, frame, frameCap, outLen, poison)
}

// TestHighRatioMatchesCPU: GPU frames are byte-identical to the CPU encoder's for the same code table, and both
// decoders restore every input bit for bit, over sizes around the chunk and unit boundaries and over inputs
// that exercise escapes, exact zeros and the raw fallback.
func TestHighRatioMatchesCPU(t *testing.T) {
	g := newGPU(t)
	kv := concat(realKV(t))
	r := rand.New(rand.NewPCG(7, 8))
	_, kvTable := hrTable(t, kv)
	kvTab, _ := hrTable(t, kv)
	// A table learned on the fixture's first tensors only: later data escapes through ESC.
	partTab, partTable := hrTable(t, kv[:4096])
	tile := func(n int) []byte { return kvtile.Tile(kv, 2*n, uint64(n)) }
	zeros := tile(50_000)
	for i := 0; i < len(zeros); i += 6 {
		zeros[i], zeros[i+1] = 0, 0
	}
	// 6,000 elements in a row with random exponents (escapes under the KV table) inside a compressible frame:
	// some of the decoder's 16-step groups then take more stream bytes than its copies ahead bring.
	burst := tile(200_000)
	for i := 50_000; i < 56_000; i++ {
		burst[2*i+1] = burst[2*i+1]&0x80 | byte(r.IntN(128))
	}
	wide := randn(r, 70_000, 1)
	for i := 0; i < len(wide); i += 2 {
		wide[i+1] = (wide[i+1] & 0x80) | byte(r.IntN(128))
	}
	cases := []struct {
		name  string
		src   []byte
		tab   *codec.CodeTable
		table []byte
	}{
		{"one element", tile(1), kvTab, kvTable},
		{"31 elements", tile(31), kvTab, kvTable},
		{"33 elements", tile(33), kvTab, kvTable},
		{"a chunk less one", tile(hrChunkElems - 1), kvTab, kvTable},
		{"a chunk", tile(hrChunkElems), kvTab, kvTable},
		{"a chunk and one", tile(hrChunkElems + 1), kvTab, kvTable},
		{"the fixture", kv, kvTab, kvTable},
		{"5 MiB + 6", tile(5<<19 + 3), kvTab, kvTable},
		{"40 MiB", tile(20 << 20), kvTab, kvTable},
		{"escapes", tile(300_000), partTab, partTable},
		{"exact zeros", zeros, kvTab, kvTable},
		{"escape burst", burst, kvTab, kvTable},
		{"wide exponents", wide, partTab, partTable},
		{"random bits (raw)", randomBits(r, 100_000), kvTab, kvTable},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want := cpuEncodeHR(t, tc.src, tc.tab)
			got := g.encodeHR(t, tc.src, tc.table, 0xA5)
			if !bytes.Equal(want, got) {
				i := 0
				for i < min(len(want), len(got)) && want[i] == got[i] {
					i++
				}
				require.Failf(t, "GPU frame differs from the CPU's", "lengths %d (CPU) and %d (GPU), first difference at byte %d", len(want), len(got), i)
			}
			require.Equal(t, tc.src, cpuDecode(t, got))
			out, err := g.decodeHR(t, got, len(got), len(tc.src), 0x5A)
			require.NoError(t, err)
			require.True(t, bytes.Equal(tc.src, out), "GPU decode differs from the input")
		})
	}
}

// TestHighRatioDecodesChunk14: a frame of 16,384-element chunks, the size encoders wrote before 8,192
// (tests/data/hr_chunk14.sz: the fixture's first 20,001 elements), decodes bit-exactly on the GPU.
func TestHighRatioDecodesChunk14(t *testing.T) {
	g := newGPU(t)
	frame, err := os.ReadFile(filepath.Join("..", "tests", "data", "hr_chunk14.sz"))
	require.NoError(t, err)
	h, err := codec.ParseHeader(frame)
	require.NoError(t, err)
	require.Equal(t, uint8(14), h.ChunkLog2)
	want := concat(realKV(t))[:2*20001]
	out, err := g.decodeHR(t, frame, len(frame), len(want), 0x5A)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, out), "GPU decode differs from the input")
}

// TestHighRatioDecodeRejects: a malformed frame ends with an error status, never a silent wrong result or a read
// past the frame.
func TestHighRatioDecodeRejects(t *testing.T) {
	g := newGPU(t)
	kv := concat(realKV(t))
	_, table := hrTable(t, kv)
	frame := g.encodeHR(t, kv, table, 0)
	hdr, err := codec.ParseHeader(frame)
	require.NoError(t, err)
	require.Equal(t, codec.ModeHighRatio, hdr.Mode())
	lay := hdr.Layout()

	_, err = g.decodeHR(t, frame, len(frame)-1, len(kv), 0)
	require.ErrorIs(t, err, codec.ErrTruncated)
	_, err = g.decodeHR(t, frame, len(frame), len(kv)-2, 0)
	require.ErrorIs(t, err, codec.ErrShortBuffer)

	// A chunk table entry past the streams.
	bad := bytes.Clone(frame)
	binary.LittleEndian.PutUint32(bad[lay.Table+4:], uint32(hdr.CodesLen+1))
	_, err = g.decodeHR(t, bad, len(bad), len(kv), 0)
	require.ErrorIs(t, err, codec.ErrCorrupt)
	// A stream that ends early or late: the chunk boundary moved by one byte.
	bad = bytes.Clone(frame)
	binary.LittleEndian.PutUint32(bad[lay.Table+4:], binary.LittleEndian.Uint32(frame[lay.Table+4:])-1)
	_, err = g.decodeHR(t, bad, len(bad), len(kv), 0)
	require.ErrorIs(t, err, codec.ErrCorrupt)
}

// BenchmarkHighRatio times the GPU codec on tiled real KV beside a device-to-device copy of the same size: bf16
// (rows named copy, encode, decode), then the fixture quantised to fp8_e4m3 and fp8_e5m2 (rows prefixed with
// the dtype). SPLITZIP_HR_BENCH_ONLY=bf16/256 narrows it to one dtype and size in MiB, so that a profiler
// (tests/gpu/profile-hr.sh) sees no other launches of the kernels. SPLITZIP_HR_BENCH_NO_STORE=1 is for a build
// whose kernels store nothing (tests/gpu/nostore.py, a compute ceiling): its decode rows decode the CPU
// encoder's frame, and nothing is checked.
func BenchmarkHighRatio(b *testing.B) {
	g := newGPU(b)
	f := realKV(b)
	kv := concat(f)
	onlyDType, onlyMiB := "", 0
	noStore := os.Getenv("SPLITZIP_HR_BENCH_NO_STORE") == "1"
	if only := os.Getenv("SPLITZIP_HR_BENCH_ONLY"); only != "" {
		if _, err := fmt.Sscanf(strings.Replace(only, "/", " ", 1), "%s %d", &onlyDType, &onlyMiB); err != nil {
			b.Fatalf("SPLITZIP_HR_BENCH_ONLY=%q: want DTYPE/MIB, e.g. bf16/256", only)
		}
	}
	for _, dt := range []codec.DType{codec.BF16, codec.FP8E4M3, codec.FP8E5M2} {
		if onlyDType != "" && dt.String() != onlyDType {
			continue
		}
		prefix, tileOf := "", func(size int) []byte { return kvtile.Tile(kv, size, uint64(size)) }
		sample := kv
		if dt != codec.BF16 {
			q := quantizeFP8(b, f, dt)
			prefix, tileOf, sample = dt.String()+"/", func(size int) []byte { return tileFP8(q, size, uint64(size)) }, q
		}
		tab, table := hrTableOf(b, dt, sample)
		for _, size := range []int{4 << 20, 64 << 20, 256 << 20, 1 << 30} {
			if onlyMiB != 0 && size != onlyMiB<<20 {
				continue
			}
			src := tileOf(size)
			in := g.upload(b, src)
			tabDev := g.upload(b, table)
			dst := g.alloc(b, MaxEncodedLen(size))
			out := g.alloc(b, size)
			sz := g.alloc(b, 8)
			status := g.alloc(b, 4)
			ws := g.alloc(b, HighRatioDTypeWorkspaceSize(dt, size))
			require.NoError(b, g.codec.EncodeHighRatioDTypeAsync(g.s, dt, in, size, tabDev, len(table), dst, sz, ws))
			frameLen := int(g.u64(b, sz))
			time := func(name string, f func() error) {
				benchOp(b, g, fmt.Sprintf("%s%s/%dMiB", prefix, name, size>>20), size, frameLen, f)
			}
			time("copy", func() error { return g.s.MemcpyDtoDAsync(out, in, size) })
			time("encode", func() error {
				return g.codec.EncodeHighRatioDTypeAsync(g.s, dt, in, size, tabDev, len(table), dst, sz, ws)
			})
			if noStore { // the encoder wrote nothing: decode the CPU encoder's frame, which the GPU's equals
				frame := cpuEncodeHROf(b, dt, src, tab)
				require.NoError(b, g.s.CopyHtoD(dst, frame))
				frameLen = len(frame)
			}
			time("decode", func() error {
				return g.codec.DecodeHighRatioDTypeAsync(g.s, dt, dst, frameLen, out, size, status)
			})
			if noStore {
				continue
			}
			got := make([]byte, size)
			require.NoError(b, g.s.CopyDtoH(got, out))
			require.True(b, bytes.Equal(src, got), "%s decode of %d MiB", dt, size>>20)
		}
	}
}

// benchOp times f, queued on g's stream, as sub-benchmark name of size raw bytes (after one untimed call),
// and reports the ratio of size to frameLen.
func benchOp(b *testing.B, g *gpuEnv, name string, size, frameLen int, f func() error) {
	b.Run(name, func(b *testing.B) {
		b.SetBytes(int64(size))
		require.NoError(b, f())
		require.NoError(b, g.s.Synchronize())
		b.ResetTimer()
		for range b.N {
			if err := f(); err != nil {
				b.Fatal(err)
			}
		}
		require.NoError(b, g.s.Synchronize())
		b.ReportMetric(float64(size)/float64(frameLen), "ratio")
	})
}

// BenchmarkHighRatioPagedKV times the connector's high-ratio path on one layer of a Llama-3-8B-shaped paged
// cache (16-token blocks of 8 heads × 128, K and V interleaved per block as vLLM's FLASH_ATTN lays them out): a
// 16,384-token request's K blocks gather-encoded into one frame and decode-scattered back, beside the dense
// kernels on the same 32 MiB gathered, so that the table tells the paged kernels' cost from the dense ones'.
func BenchmarkHighRatioPagedKV(b *testing.B) {
	g := newGPU(b)
	kv := concat(realKV(b))
	const blockElems, numBlocks, nb = 16 * 8 * 128, 2048, 1024
	c := newPagedCache(b, g, 1, numBlocks, blockElems, true, 0)
	require.NoError(b, g.s.CopyHtoD(c.bufs[0], kvtile.Tile(kv, 2*2*numBlocks*blockElems, 7)))
	ids := rand.New(rand.NewPCG(7, 8)).Perm(numBlocks)[:nb]
	req := PagedRequest{BlockIDs: g.upload(b, int32s(ids)), NumBlocks: nb}
	size := 2 * nb * blockElems
	var gathered []byte
	for _, id := range ids {
		gathered = append(gathered, c.get(b, g, 0, 0, id)...)
	}
	_, table := hrTable(b, gathered)
	tab := g.upload(b, table)
	in := g.upload(b, gathered)
	dst, out := g.alloc(b, MaxEncodedLen(size)), g.alloc(b, size)
	sz, status := g.alloc(b, 8), g.alloc(b, 8)
	ws := g.alloc(b, max(HighRatioWorkspaceSize(size), c.layout.GatherEncodeKVHighRatioWorkspaceSize(req)))
	require.NoError(b, g.codec.EncodeHighRatioAsync(g.s, in, size, tab, len(table), dst, sz, ws))
	frameLen := int(g.u64(b, sz))
	time := func(name string, f func() error) {
		benchOp(b, g, fmt.Sprintf("%s/%dMiB", name, size>>20), size, frameLen, f)
	}
	time("copy", func() error { return g.s.MemcpyDtoDAsync(out, in, size) })
	time("dense-encode", func() error { return g.codec.EncodeHighRatioAsync(g.s, in, size, tab, len(table), dst, sz, ws) })
	time("dense-decode", func() error { return g.codec.DecodeHighRatioAsync(g.s, dst, frameLen, out, size, status) })
	time("paged-encode", func() error {
		return g.codec.GatherEncodeKVHighRatioAsync(g.s, c.layout, req, 0, 0, tab, len(table), dst, sz, ws)
	})
	require.NoError(b, g.s.Synchronize())
	require.Equal(b, frameLen, int(g.u64(b, sz)), "the paged frame is the dense one")
	time("paged-decode", func() error {
		return g.codec.DecodeScatterKVHighRatioAsync(g.s, dst, frameLen, c.layout, req, 0, 0, status)
	})
	for i, id := range ids[:8] {
		require.Equal(b, gathered[2*i*blockElems:2*(i+1)*blockElems], c.get(b, g, 0, 0, id), "block %d", id)
	}
}

// The high-ratio mode's paged kernels: a request's blocks gather-encoded straight from a paged cache match the
// CPU encoder over the gathered tensors, and decode-scatter restores them into other block ids of a cache
// laid out the other way.
func TestHighRatioPagedRoundTrip(t *testing.T) {
	g := newGPU(t)
	f := realKV(t)
	_, table := hrTable(t, concat(f))
	tab, _ := hrTable(t, concat(f))
	const blockTokens, numBlocks, nb = 16, 24, 7
	layers := len(f.Tensors) / 2
	blockElems := blockTokens * int(f.Tensors[0].Shape[1]*f.Tensors[0].Shape[2])
	r := rand.New(rand.NewPCG(5, 6))
	for _, perLayer := range []bool{false, true} {
		t.Run(fmt.Sprintf("per-layer=%v", perLayer), func(t *testing.T) {
			src := newPagedCache(t, g, layers, numBlocks, blockElems, false, 0x3C)
			dstCache := newPagedCache(t, g, layers, numBlocks, blockElems, true, 0xC3)
			srcIDs, dstIDs := r.Perm(numBlocks)[:nb], r.Perm(numBlocks)[:nb]
			var gathered [][]byte
			for l := range layers {
				var lay []byte
				for kv := range 2 {
					data := f.Tensors[2*l+kv].Data
					for b := range nb {
						blk := data[2*b*blockElems : 2*(b+1)*blockElems]
						src.put(t, g, l, kv, srcIDs[b], blk)
						lay = append(lay, blk...)
					}
				}
				gathered = append(gathered, lay)
			}
			if !perLayer {
				gathered = [][]byte{bytes.Join(gathered, nil)}
			}
			req := PagedRequest{BlockIDs: g.upload(t, int32s(srcIDs)), NumBlocks: nb, PerLayer: perLayer}
			frames, _ := src.layout.Frames(req)
			stride := src.layout.FrameStride(req)
			dst := g.alloc(t, frames*stride)
			sizes := g.alloc(t, 8*frames)
			ws := g.alloc(t, src.layout.GatherEncodeHighRatioWorkspaceSize(req))
			require.NoError(t, g.codec.GatherEncodeHighRatioAsync(g.s, src.layout, req, g.upload(t, table), len(table), dst, sizes, ws))
			lens := g.download(t, sizes, 8*frames)
			all := g.download(t, dst, frames*stride)
			for i, want := range gathered {
				size := binary.LittleEndian.Uint64(lens[8*i:])
				require.True(t, bytes.Equal(cpuEncodeHR(t, want, tab), all[i*stride:i*stride+int(size)]), "frame %d", i)
			}
			dreq := PagedRequest{BlockIDs: g.upload(t, int32s(dstIDs)), NumBlocks: nb, PerLayer: perLayer}
			status := g.alloc(t, 4)
			require.NoError(t, g.codec.DecodeScatterHighRatioAsync(g.s, dst, stride, stride, dstCache.layout, dreq, status))
			require.NoError(t, StatusError(binary.LittleEndian.Uint32(g.download(t, status, 4))))
			for l := range layers {
				for kv := range 2 {
					for b := range nb {
						want := f.Tensors[2*l+kv].Data[2*b*blockElems : 2*(b+1)*blockElems]
						require.True(t, bytes.Equal(want, dstCache.get(t, g, l, kv, dstIDs[b])), "layer %d kv %d block %d", l, kv, b)
					}
				}
			}
		})
	}
}

// One layer's K or V blocks alone, each with a table of its own (the connector's high-ratio chunk): the frame
// is the CPU encoder's for those blocks, and decoding it scatters exactly those blocks, no others.
func TestHighRatioKVFrames(t *testing.T) {
	g := newGPU(t)
	f := realKV(t)
	const blockTokens, numBlocks, nb = 16, 24, 7
	layers := len(f.Tensors) / 2
	blockElems := blockTokens * int(f.Tensors[0].Shape[1]*f.Tensors[0].Shape[2])
	r := rand.New(rand.NewPCG(9, 10))
	src := newPagedCache(t, g, layers, numBlocks, blockElems, false, 0x3C)
	dstCache := newPagedCache(t, g, layers, numBlocks, blockElems, true, 0xC3)
	srcIDs, dstIDs := r.Perm(numBlocks)[:nb], r.Perm(numBlocks)[:nb]
	for l := range layers {
		for kv := range 2 {
			for b := range nb {
				src.put(t, g, l, kv, srcIDs[b], f.Tensors[2*l+kv].Data[2*b*blockElems:2*(b+1)*blockElems])
			}
		}
	}
	req := PagedRequest{BlockIDs: g.upload(t, int32s(srcIDs)), NumBlocks: nb}
	dreq := PagedRequest{BlockIDs: g.upload(t, int32s(dstIDs)), NumBlocks: nb}
	half := 2 * nb * blockElems
	dst := g.alloc(t, MaxEncodedLen(half)+16)
	sizes := g.alloc(t, 8)
	ws := g.alloc(t, src.layout.GatherEncodeKVHighRatioWorkspaceSize(req))
	status := g.alloc(t, 4)
	for _, l := range []int{0, layers / 2, layers - 1} {
		for kv := range 2 {
			want := f.Tensors[2*l+kv].Data[:half]
			tab, table := hrTable(t, want)
			require.NoError(t, g.codec.GatherEncodeKVHighRatioAsync(g.s, src.layout, req, l, kv, g.upload(t, table), len(table), dst, sizes, ws))
			size := int(binary.LittleEndian.Uint64(g.download(t, sizes, 8)))
			frame := g.download(t, dst, size)
			require.True(t, bytes.Equal(cpuEncodeHR(t, want, tab), frame), "layer %d kv %d", l, kv)
			require.NoError(t, g.codec.DecodeScatterKVHighRatioAsync(g.s, dst, size, dstCache.layout, dreq, l, kv, status))
			require.NoError(t, StatusError(binary.LittleEndian.Uint32(g.download(t, status, 4))))
			for b := range nb {
				require.True(t, bytes.Equal(want[2*b*blockElems:2*(b+1)*blockElems], dstCache.get(t, g, l, kv, dstIDs[b])), "layer %d kv %d block %d", l, kv, b)
			}
			if kv == 0 { // V, decoded next, is still the destination's poison
				v := dstCache.get(t, g, l, 1, dstIDs[0])
				require.Equal(t, bytes.Repeat([]byte{0xC3}, len(v)), v, "layer %d V", l)
			}
		}
	}
	require.Error(t, g.codec.GatherEncodeKVHighRatioAsync(g.s, src.layout, req, layers, 0, dst, 3, dst, sizes, ws))
	require.Error(t, g.codec.DecodeScatterKVHighRatioAsync(g.s, dst, 16, dstCache.layout, dreq, 0, 2, status))
}

// hrFP8Types are the fp8 dtypes the high-ratio kernels code.
var hrFP8Types = []codec.DType{codec.FP8E4M3, codec.FP8E5M2}

// quantizeFP8 quantises each bf16 tensor of f to dt with a per-tensor scale (amax / the dtype's largest finite
// value, as an fp8 KV cache does), round to nearest even, and concatenates them.
func quantizeFP8(t testing.TB, f *safetensors.File, dt codec.DType) []byte {
	t.Helper()
	var q []byte
	for _, x := range f.Tensors {
		switch dt {
		case codec.FP8E4M3:
			q = append(q, fp8.QuantizeBF16E4M3(x.Data)...)
		case codec.FP8E5M2:
			q = append(q, fp8.QuantizeBF16E5M2(x.Data)...)
		default:
			require.Failf(t, "quantizeFP8", "not an fp8 dtype: %s", dt)
		}
	}
	return q
}

// tileFP8 fills n bytes with copies of q (fp8), flipping the lowest mantissa bit of each copy's elements by a
// pseudo-random pattern (the exponents stay those of q); the same seed gives the same bytes.
func tileFP8(q []byte, n int, seed uint64) []byte {
	out := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, 1))
	for off := 0; off < n; off += len(q) {
		m := copy(out[off:], q)
		x := byte(r.Uint32())
		for i := off; i < off+m; i++ {
			out[i] ^= x & 1
			x = x*5 + 3
		}
	}
	return out
}

// Layout helpers agree with the codec: where a frame's streams start, and the longest code table.
func TestHighRatioLayoutMatchesCodec(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, dt := range []codec.DType{codec.BF16, codec.FP8E4M3, codec.FP8E5M2} {
		eb := dt.ExponentBits()
		// A table coding every exponent: lo = 0, hi = 2^eb - 1, the longest compact table.
		lengths := make([]uint8, 1<<eb+1)
		lengths[0], lengths[1<<eb-1], lengths[1<<eb] = 2, 2, 2
		full, err := codec.NewCodeTable(dt, lengths)
		require.NoError(t, err)
		b, err := full.MarshalBinary()
		require.NoError(t, err)
		assert.Equal(t, int(hrMaxTableLen(dt)), len(b), "%s", dt)
		for _, n := range []int{1000, 8191, 8192, 8193, 16383, 16384, 16385, 50001} {
			src := make([]byte, n*dt.Size())
			for i := range src {
				src[i] = byte(r.Uint32()) & 0x83 // exponents 0 and 1 of any dtype; sign and low mantissa bits
			}
			tab, table := hrTableOf(t, dt, src)
			frame := cpuEncodeHROf(t, dt, src, tab)
			h, err := codec.ParseHeader(frame)
			require.NoError(t, err)
			require.True(t, h.Entropy, "%s, %d elements", dt, n)
			assert.Equal(t, h.Layout().Codes, hrStreamsOffset(dt, uint64(n), hrChunks(uint64(n)), uint64(len(table))), "%s, %d elements", dt, n)
		}
	}
	assert.Len(t, hrFP8EntryPoints(), 14) // per fp8 dtype: prepare, then encode, raw and decode dense and paged
}

// TestHighRatioFP8MatchesCPU: for fp8 KV (the fixture quantised with a per-tensor scale), GPU frames are
// byte-identical to the CPU encoder's for the same code table, and both decoders restore every input bit for bit,
// over sizes around the chunk and unit boundaries and inputs that exercise escapes, zeros and the raw fallback.
func TestHighRatioFP8MatchesCPU(t *testing.T) {
	g := newGPU(t)
	f := realKV(t)
	for _, dt := range hrFP8Types {
		t.Run(dt.String(), func(t *testing.T) {
			q := quantizeFP8(t, f, dt)
			r := rand.New(rand.NewPCG(11, uint64(dt)))
			kvTab, kvTable := hrTableOf(t, dt, q)
			// A table learned on the first 4,096 elements only: later exponents escape through ESC.
			partTab, partTable := hrTableOf(t, dt, q[:4096])
			tile := func(n int) []byte { return tileFP8(q, n, uint64(n)) }
			// Every 16th element a random byte: exponents the KV table codes rarely or escapes.
			escapes := tile(300_001)
			for i := 0; i < len(escapes); i += 16 {
				escapes[i] = byte(r.Uint32())
			}
			escTab, escTable := hrTableOf(t, dt, escapes)
			burst := tile(200_000) // 6,000 random bytes in a row: an escape burst in a compressible frame
			for i := 50_000; i < 56_000; i++ {
				burst[i] = byte(r.Uint32())
			}
			zeros := make([]byte, 40_003)
			zeroTab, zeroTable := hrTableOf(t, dt, zeros)
			random := make([]byte, 100_003)
			for i := range random {
				random[i] = byte(r.Uint32())
			}
			randTab, randTable := hrTableOf(t, dt, random)
			cases := []struct {
				name  string
				src   []byte
				tab   *codec.CodeTable
				table []byte
			}{
				{"one element", tile(1), kvTab, kvTable},
				{"7 elements", tile(7), kvTab, kvTable},
				{"31 elements", tile(31), kvTab, kvTable},
				{"33 elements", tile(33), kvTab, kvTable},
				{"a chunk less one", tile(hrChunkElems - 1), kvTab, kvTable},
				{"a chunk", tile(hrChunkElems), kvTab, kvTable},
				{"a chunk and one", tile(hrChunkElems + 1), kvTab, kvTable},
				{"50,001 elements", tile(50_001), kvTab, kvTable},
				{"the fixture", q, kvTab, kvTable},
				{"5 MiB + 3", tile(5<<20 + 3), kvTab, kvTable},
				{"40 MiB", tile(40 << 20), kvTab, kvTable},
				{"escapes", escapes, partTab, partTable},
				{"escapes, own table", escapes, escTab, escTable},
				{"escape burst", burst, kvTab, kvTable},
				{"all zero", zeros, zeroTab, zeroTable},
				{"all zero, KV table (raw)", zeros, kvTab, kvTable},
				{"random bytes (raw)", random, randTab, randTable},
				{"random bytes, KV table (raw)", random, kvTab, kvTable},
			}
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					want := cpuEncodeHROf(t, dt, tc.src, tc.tab)
					got := g.encodeHROf(t, dt, tc.src, tc.table, 0xA5)
					if !bytes.Equal(want, got) {
						i := 0
						for i < min(len(want), len(got)) && want[i] == got[i] {
							i++
						}
						require.Failf(t, "GPU frame differs from the CPU's", "lengths %d (CPU) and %d (GPU), first difference at byte %d", len(want), len(got), i)
					}
					require.Equal(t, tc.src, cpuDecode(t, got))
					out, err := g.decodeHROf(t, dt, want, len(want), len(tc.src), 0x5A)
					require.NoError(t, err)
					require.True(t, bytes.Equal(tc.src, out), "GPU decode differs from the input")
				})
			}
			h, err := codec.ParseHeader(cpuEncodeHROf(t, dt, escapes, partTab))
			require.NoError(t, err)
			require.True(t, h.Entropy)
			require.Greater(t, h.Escapes, uint64(1000), "the escapes case escapes")
		})
	}
}

// reseal recomputes a frame header's CRC after a test damaged a field, so that the decoder checks the field.
func reseal(frame []byte) []byte {
	binary.LittleEndian.PutUint32(frame[60:], crc32.Checksum(frame[:60], crc32.MakeTable(crc32.Castagnoli)))
	return frame
}

// TestHighRatioFP8DecodeRejects: a malformed fp8 frame, or a frame of another dtype, ends with an error status.
func TestHighRatioFP8DecodeRejects(t *testing.T) {
	g := newGPU(t)
	f := realKV(t)
	for _, dt := range hrFP8Types {
		t.Run(dt.String(), func(t *testing.T) {
			q := quantizeFP8(t, f, dt)
			tab, _ := hrTableOf(t, dt, q)
			frame := cpuEncodeHROf(t, dt, q, tab)
			hdr, err := codec.ParseHeader(frame)
			require.NoError(t, err)
			require.Equal(t, codec.ModeHighRatio, hdr.Mode())
			lay := hdr.Layout()
			out, err := g.decodeHROf(t, dt, frame, len(frame), len(q), 0)
			require.NoError(t, err)
			require.True(t, bytes.Equal(q, out))

			_, err = g.decodeHROf(t, dt, frame, len(frame)-1, len(q), 0)
			require.ErrorIs(t, err, codec.ErrTruncated)
			_, err = g.decodeHROf(t, dt, frame, len(frame), len(q)-1, 0)
			require.ErrorIs(t, err, codec.ErrShortBuffer)
			damaged := map[string][]byte{}
			bad := bytes.Clone(frame) // a chunk table entry past the streams
			binary.LittleEndian.PutUint32(bad[lay.Table+4:], uint32(hdr.CodesLen+1))
			damaged["chunk table entry"] = bad
			bad = bytes.Clone(frame) // a stream that ends early or late
			binary.LittleEndian.PutUint32(bad[lay.Table+4:], binary.LittleEndian.Uint32(frame[lay.Table+4:])-1)
			damaged["chunk boundary"] = bad
			bad = bytes.Clone(frame) // a code table range past the dtype's exponents
			bad[lay.Codebook+1] = byte(1 << dt.ExponentBits())
			damaged["table range"] = bad
			bad = bytes.Clone(frame) // ESC's code length 15
			bad[lay.Codebook+2] |= 0x0F
			damaged["table length"] = bad
			bad = bytes.Clone(frame) // the longest code length the header states
			bad[7]++
			damaged["codeBits"] = reseal(bad)
			bad = bytes.Clone(frame) // the residual width
			bad[25]++
			damaged["residualBits"] = reseal(bad)
			dec, err := codec.NewDecoder()
			require.NoError(t, err)
			for name, bad := range damaged {
				_, err := g.decodeHROf(t, dt, bad, len(bad), len(q), 0)
				require.ErrorIs(t, err, codec.ErrCorrupt, name)
				_, _, err = dec.Decode(nil, bad)
				require.Error(t, err, "the CPU decoder accepts the damaged frame (%s)", name)
			}

			// A frame of another dtype: the other fp8, and bf16 of the same byte count.
			other := codec.FP8E5M2
			if dt == other {
				other = codec.FP8E4M3
			}
			otherTab, _ := hrTableOf(t, other, q)
			otherFrame := cpuEncodeHROf(t, other, q, otherTab)
			_, err = g.decodeHROf(t, dt, otherFrame, len(otherFrame), len(q), 0)
			require.ErrorIs(t, err, codec.ErrDType)
			bf := concat(f)[:len(q)]
			bfTab, _ := hrTable(t, bf)
			bfFrame := cpuEncodeHR(t, bf, bfTab)
			_, err = g.decodeHROf(t, dt, bfFrame, len(bfFrame), len(bf), 0)
			require.ErrorIs(t, err, codec.ErrDType)
		})
	}
}

// The fp8 entry points refuse the dtypes they do not code, and sizes that are not whole elements.
func TestHighRatioDTypeErrors(t *testing.T) {
	g := newGPU(t)
	buf := g.alloc(t, 1<<16)
	for _, dt := range []codec.DType{codec.FP16, codec.FP32, codec.Int8, codec.Bytes, codec.DType(0), codec.DType(200)} {
		require.ErrorIs(t, g.codec.EncodeHighRatioDTypeAsync(g.s, dt, buf, 256, buf, 11, buf, buf, buf), codec.ErrDType, "%s", dt)
		require.ErrorIs(t, g.codec.DecodeHighRatioDTypeAsync(g.s, dt, buf, 256, buf, 256, buf), codec.ErrDType, "%s", dt)
		l := PagedLayout{Bases: buf, Layers: 1, BlockElems: 64, BlockStride: 64}
		r := PagedRequest{BlockIDs: buf, NumBlocks: 1}
		require.ErrorIs(t, g.codec.GatherEncodeKVHighRatioDTypeAsync(g.s, dt, l, r, 0, 0, buf, 11, buf, buf, buf), codec.ErrDType, "%s", dt)
		require.ErrorIs(t, g.codec.DecodeScatterKVHighRatioDTypeAsync(g.s, dt, buf, 256, l, r, 0, 0, buf), codec.ErrDType, "%s", dt)
	}
	require.ErrorIs(t, g.codec.EncodeHighRatioDTypeAsync(g.s, codec.BF16, buf, 255, buf, 11, buf, buf, buf), codec.ErrSize)
	require.ErrorIs(t, g.codec.DecodeHighRatioDTypeAsync(g.s, codec.BF16, buf, 256, buf, 255, buf), codec.ErrSize)
	// A table longer than any of the dtype's: fp8_e4m3's longest is 11 bytes.
	require.ErrorIs(t, g.codec.EncodeHighRatioDTypeAsync(g.s, codec.FP8E4M3, buf, 256, buf, 12, buf, buf, buf), codec.ErrCodebook)
	require.ErrorIs(t, g.codec.EncodeHighRatioDTypeAsync(g.s, codec.FP8E5M2, buf, 256, buf, 20, buf, buf, buf), codec.ErrCodebook)
}

// One layer's fp8 K or V blocks alone, each with a table of its own: the frame is the CPU encoder's for those
// blocks, and decoding it scatters exactly those blocks into another cache laid out the other way, no others.
// Blocks of 24 elements (8-byte aligned, not 16) and a short last unit of the frame are covered too.
func TestHighRatioFP8KVFrames(t *testing.T) {
	g := newGPU(t)
	f := realKV(t)
	for _, dt := range hrFP8Types {
		for _, shape := range []struct{ blockElems, numBlocks, nb int }{
			{16 * int(f.Tensors[0].Shape[1]*f.Tensors[0].Shape[2]), 24, 7},
			{24, 40, 33},
		} {
			t.Run(fmt.Sprintf("%s/blocks of %d", dt, shape.blockElems), func(t *testing.T) {
				q := quantizeFP8(t, f, dt)
				per := len(q) / len(f.Tensors) // elements of one tensor
				layers := len(f.Tensors) / 2
				blockElems, nb := shape.blockElems, shape.nb
				require.LessOrEqual(t, nb*blockElems, per)
				r := rand.New(rand.NewPCG(9, uint64(blockElems)))
				src := newPagedCacheOf(t, g, 1, layers, shape.numBlocks, blockElems, true, 0x3C)
				dstCache := newPagedCacheOf(t, g, 1, layers, shape.numBlocks, blockElems, false, 0xC3)
				srcIDs, dstIDs := r.Perm(shape.numBlocks)[:nb], r.Perm(shape.numBlocks)[:nb]
				tensor := func(l, kv int) []byte { return q[(2*l+kv)*per : (2*l+kv+1)*per] }
				for l := range layers {
					for kv := range 2 {
						for b := range nb {
							src.put(t, g, l, kv, srcIDs[b], tensor(l, kv)[b*blockElems:(b+1)*blockElems])
						}
					}
				}
				req := PagedRequest{BlockIDs: g.upload(t, int32s(srcIDs)), NumBlocks: nb}
				dreq := PagedRequest{BlockIDs: g.upload(t, int32s(dstIDs)), NumBlocks: nb}
				half := nb * blockElems
				dst := g.alloc(t, MaxEncodedLen(half)+16)
				sizes := g.alloc(t, 8)
				ws := g.alloc(t, src.layout.GatherEncodeKVHighRatioWorkspaceSize(req))
				status := g.alloc(t, 4)
				for _, l := range []int{0, layers / 2, layers - 1} {
					for kv := range 2 {
						want := tensor(l, kv)[:half]
						tab, table := hrTableOf(t, dt, want)
						require.NoError(t, g.codec.GatherEncodeKVHighRatioDTypeAsync(g.s, dt, src.layout, req, l, kv, g.upload(t, table), len(table), dst, sizes, ws))
						size := int(binary.LittleEndian.Uint64(g.download(t, sizes, 8)))
						frame := g.download(t, dst, size)
						require.True(t, bytes.Equal(cpuEncodeHROf(t, dt, want, tab), frame), "layer %d kv %d", l, kv)
						require.NoError(t, g.codec.DecodeScatterKVHighRatioDTypeAsync(g.s, dt, dst, size, dstCache.layout, dreq, l, kv, status))
						require.NoError(t, StatusError(binary.LittleEndian.Uint32(g.download(t, status, 4))))
						for b := range nb {
							require.True(t, bytes.Equal(want[b*blockElems:(b+1)*blockElems], dstCache.get(t, g, l, kv, dstIDs[b])), "layer %d kv %d block %d", l, kv, b)
						}
						if kv == 0 { // V, decoded next, is still the destination's poison
							v := dstCache.get(t, g, l, 1, dstIDs[0])
							require.Equal(t, bytes.Repeat([]byte{0xC3}, len(v)), v, "layer %d V", l)
						}
					}
				}
				// Blocks outside the request were not touched.
				written := map[int]bool{}
				for _, b := range dstIDs {
					written[b] = true
				}
				for b := range shape.numBlocks {
					if !written[b] {
						k := dstCache.get(t, g, 0, 0, b)
						require.Equal(t, bytes.Repeat([]byte{0xC3}, len(k)), k, "block %d", b)
					}
				}
				// A raw frame of the blocks (random bytes do not code) decodes too.
				random := make([]byte, half)
				for i := range random {
					random[i] = byte(r.Uint32())
				}
				for b := range nb {
					src.put(t, g, 0, 1, srcIDs[b], random[b*blockElems:(b+1)*blockElems])
				}
				tab, table := hrTableOf(t, dt, random)
				require.NoError(t, g.codec.GatherEncodeKVHighRatioDTypeAsync(g.s, dt, src.layout, req, 0, 1, g.upload(t, table), len(table), dst, sizes, ws))
				size := int(binary.LittleEndian.Uint64(g.download(t, sizes, 8)))
				frame := g.download(t, dst, size)
				require.True(t, bytes.Equal(cpuEncodeHROf(t, dt, random, tab), frame), "raw frame")
				h, err := codec.ParseHeader(frame)
				require.NoError(t, err)
				require.True(t, h.Raw)
				require.NoError(t, g.codec.DecodeScatterKVHighRatioDTypeAsync(g.s, dt, dst, size, dstCache.layout, dreq, 0, 1, status))
				require.NoError(t, StatusError(binary.LittleEndian.Uint32(g.download(t, status, 4))))
				for b := range nb {
					require.True(t, bytes.Equal(random[b*blockElems:(b+1)*blockElems], dstCache.get(t, g, 0, 1, dstIDs[b])), "raw frame, block %d", b)
				}
			})
		}
	}
}

// The high-ratio encode (hr_prepare, the encoder and the raw fallback, chained by programmatic dependent launch
// on sm_90) and decode can be captured in a CUDA graph and replayed over new data in the same buffers: frames
// byte-identical to the CPU encoder's each time, including a replay whose input goes raw.
func TestHighRatioGraphCapture(t *testing.T) {
	for name, opts := range map[string][]Option{"default": nil, "plain launches": {withoutDependentLaunch()}} {
		t.Run(name, func(t *testing.T) { testHighRatioGraphCapture(t, newGPU(t, opts...)) })
	}
}

func testHighRatioGraphCapture(t *testing.T, g *gpuEnv) {
	kv := concat(realKV(t))
	tab, table := hrTable(t, kv)
	const n = 3<<16 + 40 // elements: several encode blocks and a partial chunk
	tb := g.upload(t, table)
	ws := g.alloc(t, HighRatioWorkspaceSize(2*n))
	require.NoError(t, g.s.MemsetD8Async(ws, 0xA5, HighRatioWorkspaceSize(2*n))) // the encode readies it itself
	rt := g.captureRoundTrip(t, 2*n,
		func(src, dst, size cuda.DevicePtr) error {
			return g.codec.EncodeHighRatioAsync(g.s, src, 2*n, tb, len(table), dst, size, ws)
		},
		func(dst, out, st cuda.DevicePtr) error {
			return g.codec.DecodeHighRatioAsync(g.s, dst, MaxEncodedLen(2*n), out, 2*n, st)
		})
	noise, r := make([]byte, 2*n), rand.New(rand.NewPCG(4, 4))
	for i := range noise {
		noise[i] = byte(r.Uint32())
	}
	for rep, data := range [][]byte{kvtile.Tile(kv, 2*n, 1), kvtile.Tile(kv, 2*n, 9), noise} {
		rt.replay(t, rep, data, cpuEncodeHR(t, data, tab))
	}
	h, err := codec.ParseHeader(cpuEncodeHR(t, noise, tab))
	require.NoError(t, err)
	require.False(t, h.Entropy, "the last replay's input goes raw")
}
