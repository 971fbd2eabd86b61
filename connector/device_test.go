package connector

import (
	"errors"
	"testing"

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
}

// A host cache's producer sends high-ratio frames to a GPU consumer, which decodes them on the CPU into raw
// frames for the kernels to scatter; a GPU cache's producer never codes high-ratio frames, and refuses the
// mode outright.
func TestDeviceHighRatio(t *testing.T) {
	ctx := needGPU(t)
	plane := startPlane(t)
	t.Run("host to GPU", func(t *testing.T) {
		p, c := newPair(t, plane, []Option{WithMode(ModeHighRatio), WithBypass(BypassNever), WithFrameBytes(3 * 2 * 6144)}, nil)
		srcHost := newTestCache(t, smallLayout(40), true, 124)
		dstHost := newTestCache(t, smallLayout(40), false, 0)
		dst := newGPUCache(t, ctx, dstHost)
		require.NoError(t, p.RegisterHostCache(srcHost.layout, srcHost.bases))
		require.NoError(t, c.RegisterDeviceCache(dst.layout, 0, dst.bases))
		srcBlocks := []int{5, 0, 39, 17, 3, 22, 9}
		dstBlocks := []int{30, 1, 2, 33, 12, 8, 11}
		h, err := p.Save("req", srcBlocks)
		require.NoError(t, err)
		require.NoError(t, c.Load("req", h, dstBlocks))
		require.NoError(t, waitLoad(t, c, "req"))
		dst.download(t, ctx, dstHost)
		requireSameBlocks(t, srcHost, srcBlocks, dstHost, dstBlocks)
		require.EqualValues(t, 1, c.Stats().HighRatioLoads)
		require.Greater(t, float64(p.Stats().RawBytes)/float64(p.Stats().EncodedBytes), 1.4)
	})
	t.Run("GPU producer", func(t *testing.T) {
		p, c := newPair(t, plane, []Option{WithEngineID("prefill-g"), WithLinkRate(0.1e9 / 8)}, []Option{WithEngineID("decode-g")})
		srcHost := newTestCache(t, smallLayout(40), true, 124)
		dstHost := newTestCache(t, smallLayout(40), false, 0)
		src, dst := newGPUCache(t, ctx, srcHost), newGPUCache(t, ctx, dstHost)
		require.NoError(t, p.RegisterDeviceCache(src.layout, 0, src.bases))
		require.NoError(t, c.RegisterDeviceCache(dst.layout, 0, dst.bases))
		require.ErrorIs(t, p.SetMode(ModeHighRatio), ErrOption)
		h, err := p.Save("req", []int{1, 2, 3})
		require.NoError(t, err)
		require.NoError(t, c.Load("req", h, []int{4, 5, 6}))
		require.NoError(t, waitLoad(t, c, "req"))
		dst.download(t, ctx, dstHost)
		requireSameBlocks(t, srcHost, []int{1, 2, 3}, dstHost, []int{4, 5, 6})
		require.EqualValues(t, 1, p.Stats().FastHandoffs, "a slow link, but no high-ratio kernels: fast")

		hr, err := NewProducer(plane, WithEngineID("prefill-h"), WithMode(ModeHighRatio))
		require.NoError(t, err)
		defer hr.Close()
		require.ErrorIs(t, hr.RegisterDeviceCache(src.layout, 0, src.bases), ErrOption)
	})
}
