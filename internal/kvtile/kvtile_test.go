package kvtile

import (
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/splitzip/splitzip/internal/safetensors"
)

// Tiles keep the fixture's signs and exponents, and change only the low 3 mantissa bits.
func TestTile(t *testing.T) {
	f, err := safetensors.ReadFile("../../tests/data/kv_evaluation.safetensors")
	require.NoError(t, err)
	var kv []byte
	for _, x := range f.Tensors {
		kv = append(kv, x.Data...)
	}
	kv = kv[:1<<16]
	n := 3*len(kv) + 10
	out := Tile(kv, n, 5)
	require.Len(t, out, n)
	changed := 0
	for i := 0; i+1 < n; i += 2 {
		want, got := binary.LittleEndian.Uint16(kv[i%len(kv):]), binary.LittleEndian.Uint16(out[i:])
		require.Equal(t, want&^7, got&^7, "element %d", i/2)
		if want != got {
			changed++
		}
	}
	assert.Greater(t, changed, n/4, "the copies are scrambled")
	assert.Equal(t, out, Tile(kv, n, 5), "deterministic")
}
