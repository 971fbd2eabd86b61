package kernels

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/internal/kvtile"
)

// TestCRC32C checks CRC32CAsync against hash/crc32 on inputs of every shape of tail and size, at offsets into
// a larger buffer.
func TestCRC32C(t *testing.T) {
	g := newGPU(t)
	in := crcInputs(rand.New(rand.NewPCG(7, 8)))
	kv := concat(realKV(t))
	in = append(in, kvtile.Tile(kv, 64<<20+4, 1))
	out := g.alloc(t, 4*len(in))
	for i, b := range in {
		buf := g.alloc(t, len(b)+256)
		for _, off := range []int{0, 16, 256} {
			require.NoError(t, g.s.CopyHtoD(buf.Add(off), b))
			require.NoError(t, g.codec.CRC32CAsync(g.s, buf.Add(off), len(b), out.Add(4*i)))
			got := binary.LittleEndian.Uint32(g.download(t, out.Add(4*i), 4))
			assert.Equal(t, crc32.Checksum(b, castagnoli), got, "%d bytes at offset %d", len(b), off)
		}
	}
	// A flipped bit anywhere changes it.
	b := in[len(in)-1]
	buf := g.upload(t, b)
	b[len(b)/3] ^= 4
	require.NoError(t, g.s.CopyHtoD(buf, b))
	require.NoError(t, g.codec.CRC32CAsync(g.s, buf, len(b), out))
	assert.Equal(t, crc32.Checksum(b, castagnoli), binary.LittleEndian.Uint32(g.download(t, out, 4)))

	assert.ErrorIs(t, g.codec.CRC32CAsync(g.s, buf.Add(8), 64, out), ErrAlignment)
	assert.ErrorIs(t, g.codec.CRC32CAsync(g.s, buf, 64, out.Add(2)), ErrAlignment)
	assert.ErrorIs(t, g.codec.CRC32CAsync(g.s, buf, -1, out), codec.ErrSize)
}

// BenchmarkCRC32C times CRC32CAsync on real KV beside a device-to-device copy of the same size.
func BenchmarkCRC32C(b *testing.B) {
	g := newGPU(b)
	kv := concat(realKV(b))
	for _, size := range []int{1 << 20, 16 << 20, 256 << 20} {
		src := kvtile.Tile(kv, size, uint64(size))
		in := g.upload(b, src)
		dst := g.alloc(b, size)
		out := g.alloc(b, 4)
		benchOp(b, g, fmt.Sprintf("copy/%dMiB", size>>20), size, size, func() error { return g.s.MemcpyDtoDAsync(dst, in, size) })
		benchOp(b, g, fmt.Sprintf("crc32c/%dMiB", size>>20), size, size, func() error { return g.codec.CRC32CAsync(g.s, in, size, out) })
		require.Equal(b, crc32.Checksum(src, castagnoli), binary.LittleEndian.Uint32(g.download(b, out, 4)))
	}
}
