// Package kvtile makes large codec inputs from a small real-KV fixture: copies of it, each with the low
// mantissa bits scrambled, so that a GPU or CPU codec reads real exponent statistics without the repeats that
// caches or a compressor could exploit. The GPU bench and the kernels' tests use it.
package kvtile

import (
	"encoding/binary"
	"math/rand/v2"
)

// Tile fills n bytes with copies of kv (bf16), scrambling the low 3 mantissa bits of each copy; the same seed
// gives the same bytes.
func Tile(kv []byte, n int, seed uint64) []byte {
	out := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, 1))
	for off := 0; off < n; off += len(kv) {
		m := copy(out[off:], kv)
		x := uint16(r.Uint32() & 7)
		for i := off; i+1 < off+m; i += 2 {
			v := binary.LittleEndian.Uint16(out[i:]) ^ x
			binary.LittleEndian.PutUint16(out[i:], v)
			x = (x*5 + 3) & 7
		}
	}
	return out
}
