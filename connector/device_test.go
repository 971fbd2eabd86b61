package connector

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/internal/fp8"
	"github.com/splitzip/splitzip/kernels/cuda"
	"github.com/stretchr/testify/require"
)

// gpuCache is a paged KV cache in device memory, laid out as vLLM's [2, num_blocks, ...] per layer.
type gpuCache struct {
	layout Layout
	bufs   []*cuda.DeviceBuffer
	bases  []uintptr
}

func needGPU(t *testing.T) *cuda.Context {
	t.Helper()
	ctx, err := cuda.PrimaryContext(0)
	if errors.Is(err, cuda.ErrNoDriver) {
		t.Skipf("no GPU: %v", err)
	}
	require.NoError(t, err)
	return ctx
}

func newGPUCache(t *testing.T, ctx *cuda.Context, host *testCache) *gpuCache {
	g := &gpuCache{layout: host.layout}
	require.NoError(t, ctx.Do(func() error {
		s, err := ctx.NewStream(cuda.StreamNonBlocking)
		if err != nil {
			return err
		}
		defer s.Close()
		for _, m := range host.mem {
			b, err := ctx.Alloc(len(m))
			if err != nil {
				return err
			}
			if err := s.CopyHtoD(b.Ptr(), m); err != nil {
				return err
			}
			g.bufs = append(g.bufs, b)
			g.bases = append(g.bases, uintptr(b.Ptr()))
		}
		return s.Synchronize()
	}))
	t.Cleanup(func() {
		_ = ctx.Do(func() error {
			for _, b := range g.bufs {
				_ = b.Free()
			}
			return nil
		})
	})
	return g
}

// download copies the device cache back into host's memory.
func (g *gpuCache) download(t *testing.T, ctx *cuda.Context, host *testCache) {
	require.NoError(t, ctx.Do(func() error {
		s, err := ctx.NewStream(cuda.StreamNonBlocking)
		if err != nil {
			return err
		}
		defer s.Close()
		for i, b := range g.bufs {
			if err := s.CopyDtoH(host.mem[i], b.Ptr()); err != nil {
				return err
			}
		}
		return s.Synchronize()
	}))
}

// saveAndCheck saves request req's blocks from of the producer's cache (holding srcHost's contents), loads them
// into blocks to of the consumer's, and requires them equal: dst, the consumer's GPU cache, is downloaded into
// dstHost first (nil: dstHost is the consumer's cache itself).
func saveAndCheck(t *testing.T, ctx *cuda.Context, p *Producer, c *Consumer, req string, srcHost *testCache, from []int, dst *gpuCache, dstHost *testCache, to []int) {
	t.Helper()
	h, err := p.Save(req, from)
	require.NoError(t, err)
	require.NoError(t, c.Load(req, h, to))
	require.NoError(t, waitLoad(t, c, req))
	if dst != nil {
		dst.download(t, ctx, dstHost)
	}
	requireSameBlocks(t, srcHost, from, dstHost, to)
}

func TestDeviceHandoff(t *testing.T) {
	ctx := needGPU(t)
	plane := startPlane(t)
	for _, bypass := range []Bypass{BypassNever, BypassAlways} {
		t.Run(bypass.String(), func(t *testing.T) {
			p, c := newPair(t, plane, []Option{WithBypass(bypass)}, nil)
			srcHost := newTestCache(t, smallLayout(40), true, 124) // even: whole bf16 values
			dstHost := newTestCache(t, smallLayout(40), false, 0)
			src, dst := newGPUCache(t, ctx, srcHost), newGPUCache(t, ctx, dstHost)
			require.NoError(t, p.RegisterDeviceCache(src.layout, 0, src.bases))
			require.NoError(t, c.RegisterDeviceCache(dst.layout, 0, dst.bases))

			srcBlocks := []int{5, 0, 39, 17, 3, 22, 9}
			dstBlocks := []int{30, 1, 2, 33, 12, 8, 11}
			h, err := p.Begin("req", srcBlocks)
			require.NoError(t, err)
			for l := range src.layout.Layers {
				require.NoError(t, p.SaveLayerAfter("req", l, 0))
			}
			require.NoError(t, c.Load("req", h, dstBlocks))
			require.NoError(t, waitLoad(t, c, "req"))
			dst.download(t, ctx, dstHost)
			requireSameBlocks(t, srcHost, srcBlocks, dstHost, dstBlocks)
			st := p.Stats()
			if bypass == BypassNever {
				require.Greater(t, float64(st.RawBytes)/float64(st.EncodedBytes), 1.3)
			}
		})
	}
	// Fast frames of a GPU cache learn per-layer codebooks from sampled blocks, then code with them.
	t.Run("learned codebooks", func(t *testing.T) {
		p, c := newPair(t, plane, []Option{WithEngineID("prefill-cb"), WithMode(ModeFast), WithBypass(BypassNever)}, []Option{WithEngineID("decode-cb")})
		srcHost := newTestCache(t, smallLayout(40), true, 124)
		dstHost := newTestCache(t, smallLayout(40), false, 0)
		src, dst := newGPUCache(t, ctx, srcHost), newGPUCache(t, ctx, dstHost)
		require.NoError(t, p.RegisterDeviceCache(src.layout, 0, src.bases))
		require.NoError(t, c.RegisterDeviceCache(dst.layout, 0, dst.bases))
		all := make([]int, 40)
		for i := range all {
			all[i] = i
		}
		for i := range 7 {
			saveAndCheck(t, ctx, p, c, fmt.Sprintf("cb-%d", i), srcHost, all, dst, dstHost, all)
		}
		require.NotNil(t, p.tables.codebook(0))
		require.NotNil(t, p.tables.codebook(src.layout.Layers-1))
	})
}

// High-ratio chunks on the GPU path: a host cache's frames decoded by the kernels; a GPU cache's frames coded
// by the kernels (first with tables from each frame's sample, then with the learned per-layer tables) and
// decoded by a GPU consumer and by a host one; and auto picks the mode for a GPU cache on a slow link.
func TestDeviceHighRatio(t *testing.T) {
	ctx := needGPU(t)
	plane := startPlane(t)
	hrOpts := []Option{WithMode(ModeHighRatio), WithBypass(BypassNever), WithFrameBytes(3 * 2 * 6144)}
	srcBlocks := []int{5, 0, 39, 17, 3, 22, 9}
	dstBlocks := []int{30, 1, 2, 33, 12, 8, 11}
	t.Run("host to GPU", func(t *testing.T) {
		p, c := newPair(t, plane, hrOpts, nil)
		srcHost := newTestCache(t, smallLayout(40), true, 124)
		dstHost := newTestCache(t, smallLayout(40), false, 0)
		dst := newGPUCache(t, ctx, dstHost)
		require.NoError(t, p.RegisterHostCache(srcHost.layout, srcHost.bases))
		require.NoError(t, c.RegisterDeviceCache(dst.layout, 0, dst.bases))
		saveAndCheck(t, ctx, p, c, "req", srcHost, srcBlocks, dst, dstHost, dstBlocks)
		require.EqualValues(t, 1, c.Stats().HighRatioLoads)
		require.Greater(t, float64(p.Stats().RawBytes)/float64(p.Stats().EncodedBytes), 1.4)
	})
	for _, consumerOnGPU := range []bool{true, false} {
		t.Run(fmt.Sprintf("GPU to GPU=%v", consumerOnGPU), func(t *testing.T) {
			p, c := newPair(t, plane, append([]Option{WithEngineID("prefill-g")}, hrOpts...), []Option{WithEngineID("decode-g")})
			srcHost := newTestCache(t, smallLayout(40), true, 124)
			src := newGPUCache(t, ctx, srcHost)
			require.NoError(t, p.RegisterDeviceCache(src.layout, 0, src.bases))
			dstHost := newTestCache(t, smallLayout(40), false, 0)
			var dst *gpuCache
			if consumerOnGPU {
				dst = newGPUCache(t, ctx, dstHost)
				require.NoError(t, c.RegisterDeviceCache(dst.layout, 0, dst.bases))
			} else {
				require.NoError(t, c.RegisterHostCache(dstHost.layout, dstHost.bases))
			}
			all := make([]int, 40)
			for i := range all {
				all[i] = i
			}
			// Enough handoffs for every (layer, K/V) to learn its table (learnFirst samples).
			for i := range 6 {
				req := fmt.Sprintf("req-%d", i)
				from, to := srcBlocks, dstBlocks
				if i < 5 {
					from, to = all, all
				}
				h, err := p.Begin(req, from)
				require.NoError(t, err)
				for l := range src.layout.Layers {
					require.NoError(t, p.SaveLayerAfter(req, l, 0))
				}
				require.NoError(t, c.Load(req, h, to))
				require.NoError(t, waitLoad(t, c, req))
				if dst != nil {
					dst.download(t, ctx, dstHost)
				}
				requireSameBlocks(t, srcHost, from, dstHost, to)
			}
			require.NotNil(t, p.tables.table(0, 0))
			require.NotNil(t, p.tables.table(src.layout.Layers-1, 1))
			st := waitHandoffs(t, p, 6)
			require.EqualValues(t, 6, st.HighRatioHandoffs)
			require.Greater(t, float64(st.RawBytes)/float64(st.EncodedBytes), 1.4)
		})
	}
	t.Run("auto on a slow link", func(t *testing.T) {
		p, c := newPair(t, plane, []Option{WithEngineID("prefill-a"), WithLinkRate(0.1e9 / 8)}, []Option{WithEngineID("decode-a")})
		srcHost := newTestCache(t, smallLayout(40), true, 124)
		dstHost := newTestCache(t, smallLayout(40), false, 0)
		src, dst := newGPUCache(t, ctx, srcHost), newGPUCache(t, ctx, dstHost)
		require.NoError(t, p.RegisterDeviceCache(src.layout, 0, src.bases))
		require.NoError(t, c.RegisterDeviceCache(dst.layout, 0, dst.bases))
		for i := range 3 {
			saveAndCheck(t, ctx, p, c, fmt.Sprintf("req-%d", i), srcHost, []int{1, 2, 3}, dst, dstHost, []int{4, 5, 6})
		}
		require.Positive(t, waitHandoffs(t, p, 3).HighRatioHandoffs, "0.1 Gbit/s: the high-ratio mode pays")
	})
}

// fp8Layout is smallLayout for an fp8 cache of dtype dt.
func fp8Layout(numBlocks int, dt codec.DType) Layout {
	l := smallLayout(numBlocks)
	l.DType = dt
	l.BlockStride = int64(l.BlockSize * l.KVHeads * l.HeadSize)
	l.KVOffset = int64(numBlocks) * l.BlockStride
	return l
}

// newFP8TestCache is newTestCache for fp8 caches: the real KV quantised to the layout's fp8 dtype with a
// per-tensor scale, as an fp8 KV cache holds it.
func newFP8TestCache(t *testing.T, l Layout, offset int) *testCache {
	c := newTestCache(t, l, false, 0)
	src := fp8.QuantizeBF16E4M3(realKV(t))
	if l.DType == codec.FP8E5M2 {
		src = fp8.QuantizeBF16E5M2(realKV(t))
	}
	for _, m := range c.mem {
		for i := range m {
			m[i] = src[(i+offset)%len(src)]
		}
		offset += len(m)
	}
	return c
}

// fp8 caches on the GPU path: high-ratio frames coded and decoded by the fp8 kernels (GPU to GPU, and to a host
// consumer), fast mode falling back to raw frames (the fast kernels code bf16), and a host producer's fast
// e5m2 frames decoded on the CPU for a GPU consumer; every block bit-exact.
func TestDeviceFP8(t *testing.T) {
	ctx := needGPU(t)
	plane := startPlane(t)
	srcBlocks := []int{5, 0, 39, 17, 3, 22, 9}
	dstBlocks := []int{30, 1, 2, 33, 12, 8, 11}
	for _, dt := range []codec.DType{codec.FP8E4M3, codec.FP8E5M2} {
		for _, tc := range []struct {
			name               string
			mode               Mode
			hostSrc, hostDst   bool
			highRatio, rawOnly bool
		}{
			{name: "high-ratio GPU to GPU", mode: ModeHighRatio, highRatio: true},
			{name: "high-ratio GPU to host", mode: ModeHighRatio, hostDst: true, highRatio: true},
			{name: "high-ratio host to GPU", mode: ModeHighRatio, hostSrc: true, highRatio: true},
			{name: "fast GPU to GPU", mode: ModeFast, rawOnly: true},
			{name: "fast host to GPU", mode: ModeFast, hostSrc: true},
		} {
			t.Run(fmt.Sprintf("%s/%s", dt, tc.name), func(t *testing.T) {
				id := strings.ReplaceAll(fmt.Sprintf("%s-%s", dt, tc.name), " ", "-") // engine ids take no spaces
				p, c := newPair(t, plane, []Option{WithEngineID("p-" + id), WithMode(tc.mode), WithBypass(BypassNever)},
					[]Option{WithEngineID("d-" + id)})
				l := fp8Layout(40, dt)
				srcHost, dstHost := newFP8TestCache(t, l, 124), newTestCache(t, l, false, 0)
				if tc.hostSrc {
					require.NoError(t, p.RegisterHostCache(srcHost.layout, srcHost.bases))
				} else {
					src := newGPUCache(t, ctx, srcHost)
					require.NoError(t, p.RegisterDeviceCache(src.layout, 0, src.bases))
				}
				var dst *gpuCache
				if tc.hostDst {
					require.NoError(t, c.RegisterHostCache(dstHost.layout, dstHost.bases))
				} else {
					dst = newGPUCache(t, ctx, dstHost)
					require.NoError(t, c.RegisterDeviceCache(dst.layout, 0, dst.bases))
				}
				for i := range 3 {
					saveAndCheck(t, ctx, p, c, fmt.Sprintf("req-%d", i), srcHost, srcBlocks, dst, dstHost, dstBlocks)
				}
				st := waitHandoffs(t, p, 3)
				switch {
				case tc.highRatio:
					require.EqualValues(t, 3, st.HighRatioHandoffs)
					require.Greater(t, float64(st.RawBytes)/float64(st.EncodedBytes), 1.05)
				case tc.rawOnly:
					require.EqualValues(t, 3, st.RawHandoffs, "the fast kernels code bf16: fp8 goes raw")
				}
			})
		}
	}
}
