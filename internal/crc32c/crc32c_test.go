package crc32c

import (
	"hash/crc32"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestCombine(t *testing.T) {
	rng := rand.New(rand.NewPCG(45, 46))
	tab := crc32.MakeTable(crc32.Castagnoli)
	b := make([]byte, 1<<16)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	for _, cut := range []int{0, 1, 7, 1000, 1 << 15, len(b) - 1, len(b)} {
		a, c := b[:cut], b[cut:]
		require.Equal(t, crc32.Checksum(b, tab), Combine(crc32.Checksum(a, tab), crc32.Checksum(c, tab), uint64(len(c))), "cut at %d", cut)
	}
	// Three pieces, combined left to right.
	x, y, z := b[:100], b[100:5000], b[5000:]
	got := Combine(Combine(crc32.Checksum(x, tab), crc32.Checksum(y, tab), uint64(len(y))), crc32.Checksum(z, tab), uint64(len(z)))
	require.Equal(t, crc32.Checksum(b, tab), got)
}
