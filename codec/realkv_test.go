package codec

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/splitzip/splitzip/internal/safetensors"
	"github.com/stretchr/testify/require"
)

// The real-KV fixture: K and V of every layer of SmolLM2-135M on English text (tests/data/README.md).
func loadFixture(t testing.TB, name string) *safetensors.File {
	t.Helper()
	f, err := safetensors.ReadFile(filepath.Join("..", "tests", "data", name))
	require.NoError(t, err, "the real KV fixture is committed under tests/data")
	require.NotEmpty(t, f.Tensors)
	return f
}

func TestRealKV(t *testing.T) {
	cal := loadFixture(t, "kv_calibration.safetensors")
	eval := loadFixture(t, "kv_evaluation.safetensors")
	h, err := NewHistogram(BF16)
	require.NoError(t, err)
	for _, x := range cal.Tensors {
		require.NoError(t, h.Add(x.Data))
	}
	cb, err := h.Codebook(DefaultBits)
	require.NoError(t, err)
	// Calibrated on one set, measured on the other.
	enc, dec := newCodecs(t, WithCodebook(cb))
	var raw, framed int
	for _, x := range eval.Tensors {
		require.Equal(t, "BF16", x.DType)
		hdr := roundTrip(t, enc, dec, x.Data, BF16)
		require.False(t, hdr.Raw, x.Name)
		raw += int(hdr.RawLen())
		framed += int(hdr.FrameLen())
	}
	ratio := float64(raw) / float64(framed)
	t.Logf("real KV evaluation set: %d → %d bytes, ratio %.4f", raw, framed, ratio)
	require.GreaterOrEqual(t, ratio, 1.32)

	// The whole evaluation set as one frame goes through the parallel path.
	var all []byte
	for _, x := range eval.Tensors {
		all = append(all, x.Data...)
	}
	roundTrip(t, enc, dec, all, BF16)
}

func TestCodebookJSON(t *testing.T) {
	cb, err := Calibrate(BF16, 4, randomNormalBF16(newRand(), 5000, 1))
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "cb.json")
	require.NoError(t, cb.Save(path))
	back, err := LoadCodebook(path)
	require.NoError(t, err)
	require.True(t, cb.Equal(back))
	require.InDelta(t, cb.Coverage, back.Coverage, 1e-12)

	require.NoError(t, os.WriteFile(path, []byte(`{"format":"splitzip-codebook","version":1,"dtype":"bf16","bits":4,"exponents":[1,1]}`), 0o644))
	_, err = LoadCodebook(path)
	require.ErrorIs(t, err, ErrCodebook)
	require.NoError(t, os.WriteFile(path, []byte(`{"dtype":"bf16"}`), 0o644))
	_, err = LoadCodebook(path)
	require.ErrorIs(t, err, ErrCodebook)
	for _, dt := range []DType{BF16, FP16, FP32, FP8E5M2} {
		d, err := DefaultCodebook(dt)
		require.NoError(t, err)
		require.Len(t, d.Exponents, 16)
	}
	_, err = DefaultCodebook(Int8)
	require.ErrorIs(t, err, ErrCodebook)
}

func newRand() *rand.Rand { return rand.New(rand.NewPCG(21, 22)) }
