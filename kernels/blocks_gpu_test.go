package kernels

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/splitzip/splitzip/codec"
)

// TestBlockCopy gathers a request's blocks of a paged cache with GatherBlocksAsync, compares the buffer with
// the blocks read one by one, scatters it into other ids of a cache of the other layout, and checks that
// exactly those blocks changed: bf16 and fp8, K and V packed and interleaved.
func TestBlockCopy(t *testing.T) {
	g := newGPU(t)
	rng := rand.New(rand.NewPCG(3, 4))
	for _, dt := range []codec.DType{codec.BF16, codec.FP8E4M3} {
		for _, interleaved := range []bool{false, true} {
			t.Run(fmt.Sprintf("%v/interleaved=%t", dt, interleaved), func(t *testing.T) {
				const layers, numBlocks, nb, blockElems = 3, 24, 9, 16 * 2 * 64
				elem := dt.Size()
				src := newPagedCacheOf(t, g, elem, layers, numBlocks, blockElems, interleaved, 0)
				for l := range layers {
					data := make([]byte, 2*elem*numBlocks*blockElems)
					for i := range data {
						data[i] = byte(rng.Uint32())
					}
					require.NoError(t, g.s.CopyHtoD(src.bufs[l], data))
				}
				perm := rng.Perm(numBlocks)
				sids, dids := perm[:nb], perm[nb:2*nb]
				r := PagedRequest{BlockIDs: g.upload(t, int32s(sids)), NumBlocks: nb}
				n := BlockBytes(src.layout, r, dt)
				require.Equal(t, 2*layers*nb*blockElems*elem, n)
				buf := g.alloc(t, n)
				require.NoError(t, g.codec.GatherBlocksAsync(g.s, dt, src.layout, r, buf))
				got := g.download(t, buf, n)
				var want []byte
				for l := range layers {
					for kv := range 2 {
						for _, b := range sids {
							want = append(want, src.get(t, g, l, kv, b)...)
						}
					}
				}
				require.True(t, bytes.Equal(want, got), "gathered blocks differ")

				dst := newPagedCacheOf(t, g, elem, layers, numBlocks, blockElems, !interleaved, 0x5A)
				dr := PagedRequest{BlockIDs: g.upload(t, int32s(dids)), NumBlocks: nb}
				require.NoError(t, g.codec.ScatterBlocksAsync(g.s, dt, buf, dst.layout, dr))
				fill := bytes.Repeat([]byte{0x5A}, elem*blockElems)
				pos := 0
				for l := range layers {
					for kv := range 2 {
						written := map[int]bool{}
						for _, b := range dids {
							assert.True(t, bytes.Equal(want[pos:pos+elem*blockElems], dst.get(t, g, l, kv, b)), "layer %d kv %d block %d", l, kv, b)
							pos += elem * blockElems
							written[b] = true
						}
						for b := range numBlocks {
							if !written[b] {
								assert.True(t, bytes.Equal(fill, dst.get(t, g, l, kv, b)), "layer %d kv %d block %d changed", l, kv, b)
							}
						}
					}
				}
			})
		}
	}
	c := newPagedCache(t, g, 1, 4, 64, false, 0)
	r := PagedRequest{BlockIDs: g.upload(t, int32s([]int{1, 2})), NumBlocks: 2}
	buf := g.alloc(t, 1024)
	assert.ErrorIs(t, g.codec.GatherBlocksAsync(g.s, codec.BF16, c.layout, r, buf.Add(8)), ErrAlignment)
	odd := c.layout
	odd.BlockElems, odd.BlockStride = 12, 12 // 24-byte blocks
	assert.ErrorIs(t, g.codec.ScatterBlocksAsync(g.s, codec.BF16, buf, odd, r), ErrAlignment)
	assert.ErrorIs(t, g.codec.GatherBlocksAsync(g.s, codec.BF16, c.layout, PagedRequest{BlockIDs: r.BlockIDs}, buf), codec.ErrSize)
	assert.ErrorIs(t, g.codec.GatherBlocksAsync(g.s, codec.DType(200), c.layout, r, buf), codec.ErrDType)
}

// BenchmarkBlockCopy times the gather and scatter of a 16,384-token request's blocks of one layer of a
// Llama-3-8B-shaped cache (16-token blocks of 8 heads × 128, bf16, K and V interleaved as FLASH_ATTN lays them
// out) beside a device-to-device copy of the same bytes and the one-copy-per-block loop it replaces.
func BenchmarkBlockCopy(b *testing.B) {
	g := newGPU(b)
	const blockElems, numBlocks, nb = 16 * 8 * 128, 2048, 1024
	c := newPagedCache(b, g, 1, numBlocks, blockElems, true, 1)
	ids := rand.New(rand.NewPCG(1, 2)).Perm(numBlocks)[:nb]
	r := PagedRequest{BlockIDs: g.upload(b, int32s(ids)), NumBlocks: nb}
	n := BlockBytes(c.layout, r, codec.BF16)
	buf, other := g.alloc(b, n), g.alloc(b, n)
	bb := 2 * blockElems
	benchOp(b, g, "copy", n, n, func() error { return g.s.MemcpyDtoDAsync(other, buf, n) })
	benchOp(b, g, "gather", n, n, func() error { return g.codec.GatherBlocksAsync(g.s, codec.BF16, c.layout, r, buf) })
	benchOp(b, g, "scatter", n, n, func() error { return g.codec.ScatterBlocksAsync(g.s, codec.BF16, buf, c.layout, r) })
	benchOp(b, g, "memcpy-per-block", n, n, func() error {
		pos := 0
		for kv := range 2 {
			for _, id := range ids {
				if err := g.s.MemcpyDtoDAsync(buf.Add(pos), c.bufs[0].Add(c.blockOff(kv, id)), bb); err != nil {
					return err
				}
				pos += bb
			}
		}
		return nil
	})
}
