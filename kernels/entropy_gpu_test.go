package kernels

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/internal/kvtile"
)

// hrTable is the code table the CPU encoder would choose for data, and its bytes as frames carry them.
func hrTable(t testing.TB, data ...[]byte) (*codec.CodeTable, []byte) {
	t.Helper()
	h, err := codec.NewHistogram(codec.BF16)
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
	enc, err := codec.NewEncoder(codec.WithMode(codec.ModeHighRatio), codec.WithCodeTable(tab))
	require.NoError(t, err)
	frame, err := enc.Encode(nil, src, codec.BF16)
	require.NoError(t, err)
	return frame
}

// encodeHR runs EncodeHighRatioAsync over src into a poisoned buffer and checks nothing past the frame was
// written.
func (g *gpuEnv) encodeHR(t testing.TB, src, table []byte, poison byte) []byte {
	t.Helper()
	in := g.upload(t, src)
	tab := g.upload(t, table)
	capacity := MaxEncodedLen(len(src)) + 64
	dst := g.alloc(t, capacity)
	size := g.alloc(t, 8)
	ws := g.alloc(t, HighRatioWorkspaceSize(len(src)))
	require.NoError(t, g.s.MemsetD8Async(dst, poison, capacity))
	require.NoError(t, g.codec.EncodeHighRatioAsync(g.s, in, len(src), tab, len(table), dst, size, ws))
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

// BenchmarkHighRatio times the GPU codec on tiled real KV beside a device-to-device copy of the same size.
func BenchmarkHighRatio(b *testing.B) {
	g := newGPU(b)
	kv := concat(realKV(b))
	_, table := hrTable(b, kv)
	for _, size := range []int{4 << 20, 64 << 20, 256 << 20, 1 << 30} {
		src := kvtile.Tile(kv, size, uint64(size))
		in := g.upload(b, src)
		tab := g.upload(b, table)
		dst := g.alloc(b, MaxEncodedLen(size))
		out := g.alloc(b, size)
		sz := g.alloc(b, 8)
		status := g.alloc(b, 4)
		ws := g.alloc(b, HighRatioWorkspaceSize(size))
		require.NoError(b, g.codec.EncodeHighRatioAsync(g.s, in, size, tab, len(table), dst, sz, ws))
		frameLen := int(g.u64(b, sz))
		time := func(name string, f func() error) {
			b.Run(fmt.Sprintf("%s/%dMiB", name, size>>20), func(b *testing.B) {
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
		time("copy", func() error { return g.s.MemcpyDtoDAsync(out, in, size) })
		time("encode", func() error {
			return g.codec.EncodeHighRatioAsync(g.s, in, size, tab, len(table), dst, sz, ws)
		})
		time("decode", func() error { return g.codec.DecodeHighRatioAsync(g.s, dst, frameLen, out, size, status) })
		got := make([]byte, size)
		require.NoError(b, g.s.CopyDtoH(got, out))
		require.True(b, bytes.Equal(src, got), "decode of %d MiB", size>>20)
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
