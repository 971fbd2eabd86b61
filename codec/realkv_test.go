package codec

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/splitzip/splitzip/internal/fp8"
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

// TestRealKVHighRatio: high-ratio frames of the evaluation fixture, one per tensor (24,576 elements: per-frame
// overhead counts) and the whole set as one frame, against the entropy bound 16/(H+8) of the exponents.
func TestRealKVHighRatio(t *testing.T) {
	eval := loadFixture(t, "kv_evaluation.safetensors")
	enc, dec := newHighRatio(t)
	var raw, framed, bits uint64
	all, err := NewHistogram(BF16)
	require.NoError(t, err)
	var all16 []byte
	for _, x := range eval.Tensors {
		hdr := roundTrip(t, enc, dec, x.Data, BF16)
		require.True(t, hdr.Entropy, x.Name)
		raw += hdr.RawLen()
		framed += hdr.FrameLen()
		h, err := NewHistogram(BF16)
		require.NoError(t, err)
		require.NoError(t, h.Add(x.Data))
		require.NoError(t, all.Add(x.Data))
		bits += uint64(float64(h.Total) * (h.Entropy() + 8))
		all16 = append(all16, x.Data...)
	}
	ratio := float64(raw) / float64(framed)
	bound := float64(raw*8) / float64(bits)
	hAll := all.Entropy()
	t.Logf("high-ratio, a frame per tensor: %d → %d bytes, ratio %.4f; per-tensor entropy bound %.4f (%.1f%% of it)", raw, framed, ratio, bound, 100*ratio/bound)
	require.GreaterOrEqual(t, ratio, 1.46)
	hdr := roundTrip(t, enc, dec, all16, BF16)
	t.Logf("high-ratio, one frame: ratio %.4f; H_exp %.4f bits, bound 16/(H+8) = %.4f (%.1f%% of it)", hdr.Ratio(), hAll, 16/(hAll+8), 100*hdr.Ratio()/(16/(hAll+8)))
	// All layers' K and V in one frame share one code: their mixed exponents have more entropy.
	require.GreaterOrEqual(t, hdr.Ratio(), 0.99*16/(hAll+8))

	// A table learned on the calibration set, pinned: one pass over the input, nearly the same ratio.
	cal := loadFixture(t, "kv_calibration.safetensors")
	ch, err := NewHistogram(BF16)
	require.NoError(t, err)
	for _, x := range cal.Tensors {
		require.NoError(t, ch.Add(x.Data))
	}
	table, err := ch.CodeTable()
	require.NoError(t, err)
	pinned, _ := newHighRatio(t, WithCodeTable(table))
	framed = 0
	for _, x := range eval.Tensors {
		hdr := roundTrip(t, pinned, dec, x.Data, BF16)
		require.True(t, hdr.Entropy, x.Name)
		framed += hdr.FrameLen()
	}
	t.Logf("high-ratio with the calibration table pinned, a frame per tensor: ratio %.4f", float64(raw)/float64(framed))
	require.GreaterOrEqual(t, float64(raw)/float64(framed), 1.44)
}

// TestRealKVE4M3: the evaluation fixture quantised to fp8 e4m3 with a per-tensor scale amax/448 (as vLLM's
// fp8 KV cache does), round to nearest even, coded in high-ratio mode.
func TestRealKVE4M3(t *testing.T) {
	eval := loadFixture(t, "kv_evaluation.safetensors")
	enc, dec := newHighRatio(t)
	var raw, framed uint64
	h, err := NewHistogram(FP8E4M3)
	require.NoError(t, err)
	for _, x := range eval.Tensors {
		q := fp8.QuantizeBF16E4M3(x.Data)
		require.NoError(t, h.Add(q))
		hdr := roundTrip(t, enc, dec, q, FP8E4M3)
		require.True(t, hdr.Entropy, x.Name)
		raw += hdr.RawLen()
		framed += hdr.FrameLen()
	}
	ratio := float64(raw) / float64(framed)
	t.Logf("fp8 e4m3 (per-tensor amax/448), a frame per tensor: %d → %d bytes, ratio %.4f; H_exp %.4f bits, bound 8/(H+4) = %.4f", raw, framed, ratio, h.Entropy(), 8/(h.Entropy()+4))
	require.GreaterOrEqual(t, ratio, 1.15)
}

// TestRealKVGemma3: the second real model's KV (Gemma 3 270M, tests/data/README.md), unlike SmolLM2's: QK-norm
// with zero scales leaves exact zeros in K, and its exponents reach past SmolLM2's range. The high-ratio mode
// codes it at ≥ 1.45× with each frame's own table; the fast mode's built-in codebook (calibrated on SmolLM2)
// escapes far more of it than a codebook calibrated on Gemma's own KV, which is why the connector learns them.
func TestRealKVGemma3(t *testing.T) {
	kv := loadFixture(t, "kv_gemma3.safetensors")
	require.Len(t, kv.Tensors, 36, "18 layers, K and V")
	var zerosK, elemsK, high uint64
	all, err := NewHistogram(BF16)
	require.NoError(t, err)
	for _, x := range kv.Tensors {
		require.Equal(t, "BF16", x.DType)
		require.NoError(t, all.Add(x.Data))
		if x.Name[len(x.Name)-1] == 'k' {
			for i := 0; i < len(x.Data); i += 2 {
				if x.Data[i] == 0 && x.Data[i+1]&0x7F == 0 {
					zerosK++
				}
			}
			elemsK += uint64(len(x.Data) / 2)
		}
	}
	for e := 132; e < 256; e++ {
		high += all.Counts[e]
	}
	t.Logf("K: %.3f%% exact zeros; exponents above 131 (SmolLM2's largest): %d", 100*float64(zerosK)/float64(elemsK), high)
	require.Greater(t, float64(zerosK)/float64(elemsK), 0.005, "QK-norm's zero scales leave zeros in K")
	require.Positive(t, high)

	enc, dec := newHighRatio(t)
	var raw, framed uint64
	var bits float64
	for _, x := range kv.Tensors {
		hdr := roundTrip(t, enc, dec, x.Data, BF16)
		require.True(t, hdr.Entropy, x.Name)
		raw += hdr.RawLen()
		framed += hdr.FrameLen()
		h, err := NewHistogram(BF16)
		require.NoError(t, err)
		require.NoError(t, h.Add(x.Data))
		bits += float64(h.Total) * (h.Entropy() + 8)
	}
	ratio, bound := float64(raw)/float64(framed), 8*float64(raw)/bits
	t.Logf("high-ratio, a frame per tensor: ratio %.4f; per-tensor entropy bound %.4f (%.1f%% of it)", ratio, bound, 100*ratio/bound)
	require.GreaterOrEqual(t, ratio, 1.45)
	require.GreaterOrEqual(t, ratio, 0.985*bound)

	// Fast mode: the built-in codebook against one calibrated on this KV.
	own, err := all.Codebook(DefaultBits)
	require.NoError(t, err)
	builtin, err := DefaultCodebook(BF16)
	require.NoError(t, err)
	var esc [2]float64
	var ratios [2]float64
	for i, cb := range []*Codebook{builtin, own} {
		fast, _ := newCodecs(t, WithCodebook(cb))
		var raw, framed, escapes, n uint64
		for _, x := range kv.Tensors {
			hdr := roundTrip(t, fast, dec, x.Data, BF16)
			raw += hdr.RawLen()
			framed += hdr.FrameLen()
			escapes += hdr.Escapes
			n += hdr.Elements
		}
		esc[i], ratios[i] = float64(escapes)/float64(n), float64(raw)/float64(framed)
	}
	t.Logf("fast, built-in codebook: ratio %.4f, escapes %.2e; calibrated on this KV: ratio %.4f, escapes %.2e",
		ratios[0], esc[0], ratios[1], esc[1])
	require.Greater(t, esc[0], 5e-3, "SmolLM2's codebook does not fit Gemma's exponents")
	require.Less(t, esc[1], 2e-3)
	require.Greater(t, ratios[1], ratios[0]*1.01)
}
