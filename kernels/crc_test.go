package kernels

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"regexp"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// TestCRCTable checks crc.cuh's table of shifts against crcX8, which squares x^8 again and again.
func TestCRCTable(t *testing.T) {
	src, err := os.ReadFile("crc.cuh")
	require.NoError(t, err)
	body := regexp.MustCompile(`(?s)kCRCX8\[64\] = \{(.*?)\};`).FindSubmatch(src)
	require.NotNil(t, body, "crc.cuh has no kCRCX8 table")
	words := regexp.MustCompile(`0x([0-9A-F]{8})u`).FindAllSubmatch(body[1], -1)
	require.Len(t, words, len(crcX8))
	for k, w := range words {
		v, err := strconv.ParseUint(string(w[1]), 16, 32)
		require.NoError(t, err)
		assert.Equal(t, crcX8[k], uint32(v), "kCRCX8[%d]", k)
	}
}

// rawCRC is the CRC-32C register after b from 0, without the final complement: what each GPU thread computes
// for its piece.
func rawCRC(b []byte) uint32 {
	var c uint32
	for _, x := range b {
		c = castagnoli[byte(c)^x] ^ c>>8
	}
	return c
}

// TestCRCAlgebra checks the identities the GPU kernel rests on, against hash/crc32: the raw CRC of A || B is
// raw(A) shifted by |B| bytes XOR raw(B), and a CRC-32C is the raw CRC XOR the preset the launcher writes.
func TestCRCAlgebra(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{0, 1, 15, 16, 17, 512, 1000, 4096 + 3, 70_001} {
		x := make([]byte, n)
		for i := range x {
			x[i] = byte(r.Uint32())
		}
		assert.Equal(t, crc32.Checksum(x, castagnoli), rawCRC(x)^crcPreset(uint64(n)), "%d bytes", n)
		for _, cut := range []int{0, n / 3, n} {
			a, b := x[:cut], x[cut:]
			assert.Equal(t, rawCRC(x), crcShift(rawCRC(a), uint64(len(b)))^rawCRC(b), "%d bytes cut at %d", n, cut)
		}
	}
	assert.Equal(t, uint32(0), crcPreset(0), "the CRC of nothing is 0")
	// Shifting by 2^k bytes through the table's last entries agrees with shifting twice by half as much.
	for k := 1; k < len(crcX8); k++ {
		assert.Equal(t, crcX8[k], crcMulMod(crcX8[k-1], crcX8[k-1]), "x^(8·2^%d)", k)
	}
}

// crcInputs are the lengths the CRC kernel is checked at: empty, below a unit, around a piece (512 bytes), a
// warp's pieces (16 KiB) and a block's (128 KiB), with tails of every kind.
func crcInputs(r *rand.Rand) [][]byte {
	var in [][]byte
	for _, n := range []int{0, 1, 15, 16, 17, 511, 512, 513, 528, 16 << 10, 16<<10 + 16, 16<<10 + 5, 128 << 10, 128<<10 + 48 + 9, 3<<20 + 7} {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		in = append(in, b)
	}
	// Long runs of zeros and of ones: a raw CRC of zeros is zero, so every shift must still land.
	z := make([]byte, 200_003)
	z[0], z[100_000], z[len(z)-1] = 1, 0x80, 0xFF
	in = append(in, z, []byte(fmt.Sprint(binary.LittleEndian.Uint64([]byte("splitzip")))))
	return in
}
