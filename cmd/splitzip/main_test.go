package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/internal/safetensors"
	"github.com/splitzip/splitzip/kernels/cuda"
	"github.com/stretchr/testify/require"
)

func fixture(name string) string { return filepath.Join("..", "..", "tests", "data", name) }

func TestCompressDecompressSafetensors(t *testing.T) {
	dir := t.TempDir()
	book := filepath.Join(dir, "book.json")
	require.NoError(t, runCalibrate([]string{"-o", book, fixture("kv_calibration.safetensors")}))
	cb, err := codec.LoadCodebook(book)
	require.NoError(t, err)
	require.Len(t, cb.Exponents, 16)

	in := fixture("kv_evaluation.safetensors")
	packed := filepath.Join(dir, "packed.safetensors")
	back := filepath.Join(dir, "back.safetensors")
	require.NoError(t, runCompress([]string{"-codebook", book, in, packed}))
	require.NoError(t, runInspect([]string{packed}))
	require.NoError(t, runDecompress([]string{packed, back}))

	orig, err := safetensors.ReadFile(in)
	require.NoError(t, err)
	got, err := safetensors.ReadFile(back)
	require.NoError(t, err)
	require.Equal(t, orig.Metadata, got.Metadata)
	require.Len(t, got.Tensors, len(orig.Tensors))
	for i, x := range orig.Tensors {
		require.Equal(t, x.Name, got.Tensors[i].Name)
		require.Equal(t, x.DType, got.Tensors[i].DType)
		require.Equal(t, x.Shape, got.Tensors[i].Shape)
		require.Equal(t, x.Data, got.Tensors[i].Data, x.Name)
	}
	pi, _ := os.Stat(packed)
	oi, _ := os.Stat(in)
	require.Less(t, float64(pi.Size()), float64(oi.Size())/1.3, "compressed file should be ~1.33x smaller")
}

func TestCompressRawAndErrors(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "x.bin")
	data := make([]byte, 1000)
	for i := range data {
		data[i] = byte(i * 7)
	}
	require.NoError(t, os.WriteFile(raw, data, 0o644))
	require.ErrorContains(t, runCompress([]string{raw, filepath.Join(dir, "x.sz")}), "needs -dtype")
	require.NoError(t, runCompress([]string{"-dtype", "fp8_e4m3", raw, filepath.Join(dir, "x.sz")}))
	require.NoError(t, runDecompress([]string{filepath.Join(dir, "x.sz"), filepath.Join(dir, "y.bin")}))
	back, err := os.ReadFile(filepath.Join(dir, "y.bin"))
	require.NoError(t, err)
	require.Equal(t, data, back)

	require.NoError(t, os.WriteFile(filepath.Join(dir, "junk.sz"), []byte("not a frame at all, definitely"), 0o644))
	err = runDecompress([]string{filepath.Join(dir, "junk.sz"), filepath.Join(dir, "z.bin")})
	require.ErrorIs(t, err, errNotSplitZip)
	require.NoFileExists(t, filepath.Join(dir, "z.bin"))
	require.ErrorContains(t, runStats([]string{"-calibration", "a.safetensors", "-evaluation", "a.safetensors"}), "same file")
}

func TestStatsAndBench(t *testing.T) {
	require.NoError(t, runStats([]string{"-calibration", fixture("kv_calibration.safetensors"), "-evaluation", fixture("kv_evaluation.safetensors")}))
	require.NoError(t, runBench([]string{"-size", "1MiB", "-runs", "1", "-data", fixture("kv_evaluation.safetensors")}))
	require.NoError(t, runBench([]string{"-size", "64KiB", "-runs", "1", "-data", ""}))
}

func TestBenchGPUWithoutDriver(t *testing.T) {
	err := runBench([]string{"-gpu"})
	if err == nil {
		t.Skip("a GPU is present; the GPU bench ran")
	}
	require.ErrorIs(t, err, cuda.ErrNoDriver)
}

// The transfer benchmark's cache is its input tiled without gaps, from each layer's offset, whatever the
// cache size: a -tokens 4096 run (256 blocks) left a third of every other layer zero, which the codec sends raw.
func TestBenchCacheTilesWithoutGaps(t *testing.T) {
	kv := make([]byte, 1000)
	for i := range kv {
		kv[i] = byte(i%251 + 1)
	}
	l := benchLayout(5)
	mem, bases, err := benchCache(l, &benchKV{tiled: kv}, true)
	require.NoError(t, err)
	require.Len(t, mem, l.Layers)
	require.Len(t, bases, l.Layers)
	offset := 0
	for layer, m := range mem {
		for j, b := range m {
			if b != kv[(offset+j)%len(kv)] {
				require.Failf(t, "gap in the tiled cache", "layer %d byte %d is %d, want %d", layer, j, b, kv[(offset+j)%len(kv)])
			}
		}
		offset += len(m) / 3
	}
}

// With the fixture, each layer's K blocks hold that layer's K and its V blocks that layer's V, each tiled from
// the block region's start, so that per-layer statistics (and the connector's per-layer tables) are real.
func TestBenchCacheKeepsLayers(t *testing.T) {
	kv, err := loadBenchKV(fixture("kv_evaluation.safetensors"))
	require.NoError(t, err)
	require.Len(t, kv.k, 30)
	l := benchLayout(20) // 320 tokens: the fixture's 128 tiled two and a half times
	mem, _, err := benchCache(l, kv, false)
	require.NoError(t, err)
	for layer, m := range mem {
		k, v := m[:l.KVOffset], m[l.KVOffset:]
		for j := 0; j < len(k); j += len(kv.k[layer]) {
			require.Equal(t, kv.k[layer][:min(len(kv.k[layer]), len(k)-j)], k[j:min(len(k), j+len(kv.k[layer]))], "layer %d K", layer)
			require.Equal(t, kv.v[layer][:min(len(kv.v[layer]), len(v)-j)], v[j:min(len(v), j+len(kv.v[layer]))], "layer %d V", layer)
		}
	}
}

// bench transfer -cpu reads both processes' CPU time from /proc: it only grows, and a process that /proc does
// not know reads as 0 rather than failing the benchmark.
func TestProcessCPU(t *testing.T) {
	if _, err := os.Stat("/proc/self/task"); err != nil {
		t.Skip("no /proc on this system: bench transfer -cpu reports 0")
	}
	before := processCPU(os.Getpid())
	x := 0
	for i := range 50_000_000 {
		x += i ^ x>>3
	}
	require.NotZero(t, x)
	after := processCPU(os.Getpid())
	require.Positive(t, before)
	require.GreaterOrEqual(t, after, before)
	require.Zero(t, processCPU(-1))
}
