package gpubench

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/internal/safetensors"
	"github.com/splitzip/splitzip/kernels/cuda"
)

const fixturePath = "../../tests/data/kv_evaluation.safetensors"

func realKV(t testing.TB) []byte {
	t.Helper()
	f, err := safetensors.ReadFile(fixturePath)
	require.NoError(t, err)
	var b []byte
	for _, x := range f.Tensors {
		b = append(b, x.Data...)
	}
	return b
}

// gpuContext returns device 0's primary context; the test skips with the driver's message without a GPU.
func gpuContext(t testing.TB) *cuda.Context {
	t.Helper()
	if err := cuda.Init(); err != nil {
		t.Skipf("no GPU: %v", err)
	}
	if n, err := cuda.DeviceCount(); err != nil || n == 0 {
		t.Skipf("no GPU: %d devices, %v", n, err)
	}
	ctx, err := cuda.PrimaryContext(0)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, ctx.Close()) })
	return ctx
}

// TestGPUBench prints the benchmark table (a benchmark, not a timed test): it runs only with
// SPLITZIP_GPU_BENCH=1 on a GPU, and writes the table to $SPLITZIP_GPU_BENCH_OUT when set.
// SPLITZIP_GPU_BENCH_MIB (comma-separated dense sizes) narrows a run to those sizes, without the paged and small
// rows; SPLITZIP_GPU_BENCH_PTX names a PTX file whose kernels are timed beside the built-in ones.
func TestGPUBench(t *testing.T) {
	if os.Getenv("SPLITZIP_GPU_BENCH") != "1" {
		t.Skip("set SPLITZIP_GPU_BENCH=1 to run the GPU benchmark")
	}
	ctx := gpuContext(t)
	cfg := Config{KV: realKV(t), Log: os.Stderr}
	if v := os.Getenv("SPLITZIP_GPU_BENCH_MIB"); v != "" {
		for _, f := range strings.Split(v, ",") {
			mib, err := strconv.Atoi(f)
			require.NoError(t, err, "SPLITZIP_GPU_BENCH_MIB")
			cfg.Sizes = append(cfg.Sizes, mib<<20)
		}
		cfg.SmallSizes, cfg.SkipPaged = []int{}, true
	}
	if v := os.Getenv("SPLITZIP_GPU_BENCH_PTX"); v != "" {
		var err error
		cfg.PTX, err = os.ReadFile(v)
		require.NoError(t, err, "SPLITZIP_GPU_BENCH_PTX")
		cfg.PTXName = filepath.Base(v)
	}
	rep, err := RunBench(ctx, cfg)
	require.NoError(t, err)
	table := rep.Table()
	t.Log("\n" + table)
	if out := os.Getenv("SPLITZIP_GPU_BENCH_OUT"); out != "" {
		require.NoError(t, os.WriteFile(out, []byte(table), 0o644))
	}
}

// TestGPUProfile runs one dense encode and decode of 256 MiB with the built-in kernels, for a profiler
// (SPLITZIP_GPU_PROFILE=1 ncu -k regex:sz_ ... gpubench.test -test.run TestGPUProfile). Each encode and decode
// runs three times (two warm-ups and the timed run). SPLITZIP_GPU_PROFILE_ESCAPES (comma-separated rates, e.g.
// 0.02,0.1) adds the escape sweep's inputs at those rates, after the fixture's.
func TestGPUProfile(t *testing.T) {
	if os.Getenv("SPLITZIP_GPU_PROFILE") != "1" {
		t.Skip("set SPLITZIP_GPU_PROFILE=1 to run the profiling workload")
	}
	ctx := gpuContext(t)
	cfg := Config{KV: realKV(t), Sizes: []int{256 << 20}, SmallSizes: []int{}, Reps: 1, SkipPaged: true, EscapeRates: []float64{}}
	if v := os.Getenv("SPLITZIP_GPU_PROFILE_ESCAPES"); v != "" {
		for _, f := range strings.Split(v, ",") {
			rate, err := strconv.ParseFloat(f, 64)
			require.NoError(t, err, "SPLITZIP_GPU_PROFILE_ESCAPES")
			cfg.EscapeRates = append(cfg.EscapeRates, rate)
		}
	}
	_, err := RunBench(ctx, cfg)
	require.NoError(t, err)
}

// A configuration the bench cannot run is refused before the GPU is touched.
func TestRunBenchRefusesBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{},
		{KV: []byte{1, 2, 3}},
		{KV: make([]byte, 64), Reps: -1},
		{KV: make([]byte, 64), Sizes: []int{8}},
		{KV: make([]byte, 64), SmallSizes: []int{0}},
		{KV: make([]byte, 64), EscapeRates: []float64{1.5}},
	} {
		_, err := RunBench(nil, cfg)
		assert.ErrorIs(t, err, ErrConfig, "%+v", cfg)
	}
}

func TestTable(t *testing.T) {
	rep := &Report{Card: "NVIDIA H200", Driver: 13000, DependentLaunch: true, Precompiled: true, Rows: []Row{
		{What: "dense", Size: 256 << 20, Encode: 2000, Decode: 1900, Copy: 4200, SMCopy: 4000, Roofline: 2400, Ratio: 1.41, Escapes: 7},
		{What: "dense", Size: 256 << 20, Kernels: "old.ptx", Encode: 1800, Decode: 1900, Copy: 4200, SMCopy: 4000, Roofline: 2400, Ratio: 1.41, Escapes: 7},
		{What: "escapes", Size: 256 << 20, Encode: 1000, Decode: 1520, Ratio: 1.38, Escapes: 2684355},
		{What: "escapes", Size: 256 << 20, Kernels: "old.ptx", Encode: 900, Decode: 950, Ratio: 1.38, Escapes: 2684355},
		{What: "paged-1frame", Size: 256 << 20, Encode: 1000, Decode: 950, Ratio: 1.4},
		{What: "small", Size: 64 << 10, Encode: 9.5, Decode: 8.3, Copy: 7, Ratio: 1.3},
	}}
	table := rep.Table()
	for _, want := range []string{
		"GPU: NVIDIA H200 (driver CUDA 13.0); built-in kernels: sm_90 (programmatic dependent launch) cubin",
		"| real-KV-like bf16 | 256 MiB | built-in | 2000 | 1900 | 4200 | 4000 | 2400 | 83.3 | 79.2 | 1.4100 | 7 |",
		"| real-KV-like bf16 | 256 MiB | old.ptx | 1800 |",
		"| real-KV-like bf16 | 256 MiB | built-in | 2.00 % | 1000 | 1520 | 50.0 | 80.0 | 1.3800 |",
		"| real-KV-like bf16 | 256 MiB | old.ptx | 2.00 % | 900 | 950 | 50.0 | 50.0 | 1.3800 |",
		"| paged-1frame | 256 MiB | 1000 | 950 | 50.0 | 50.0 | 1.4000 |",
		"| 64 KiB | 9.5 | 8.3 | 7.0 | 1.3000 |",
	} {
		assert.Contains(t, table, want)
	}
}

// TestEscapeMix checks the sweep's inputs: each escapes at its rate under its narrowed codebook (to within a
// tenth of it), is made of whole pieces of the KV in their order, and is the KV itself where narrowing alone
// hits the rate.
func TestEscapeMix(t *testing.T) {
	kv := realKV(t)
	cb, err := codec.DefaultCodebook(codec.BF16)
	require.NoError(t, err)
	pieces := make(map[string]int)
	for i := 0; i+mixPiece <= len(kv); i += mixPiece {
		pieces[string(kv[i:i+mixPiece])] = i
	}
	escapes := func(b []byte, narrow *codec.Codebook) float64 {
		h, err := codec.NewHistogram(codec.BF16)
		require.NoError(t, err)
		require.NoError(t, h.Add(b))
		return 1 - h.Coverage(narrow)
	}
	for _, rate := range []float64{0.005, 0.02, 0.05, 0.10} {
		narrow, err := narrowCodebook(kv, cb, rate)
		require.NoError(t, err)
		mixed, err := escapeMix(kv, narrow, rate)
		require.NoError(t, err)
		if whole := escapes(kv, narrow); whole <= 1.05*rate {
			require.Equal(t, kv, mixed, "rate %v: narrowing alone gives %v", rate, whole)
			continue
		}
		got := escapes(mixed, narrow)
		t.Logf("rate %v: %d of %d pieces escape %.4f", rate, len(mixed)/mixPiece, len(kv)/mixPiece, got)
		require.InDelta(t, rate, got, rate/10, "rate %v", rate)
		require.Zero(t, len(mixed)%mixPiece)
		require.Greater(t, len(mixed), len(kv)/4, "rate %v: most of the KV stays", rate)
		last := -1
		for i := 0; i < len(mixed); i += mixPiece {
			at, ok := pieces[string(mixed[i:i+mixPiece])]
			require.True(t, ok, "rate %v: bytes %d.. are not a piece of the KV", rate, i)
			require.Greater(t, at, last, "rate %v: pieces in the KV's order", rate)
			last = at
		}
	}
	// Too little KV to mix: as it is.
	small := kv[:4*mixPiece]
	narrow, err := narrowCodebook(kv, cb, 0.02)
	require.NoError(t, err)
	mixed, err := escapeMix(small, narrow, 0.02)
	require.NoError(t, err)
	require.Equal(t, small, mixed)
}

// The sweep's codebooks: the built-in one with its rarest exponents dropped, so that at least each rate of the
// real KV escapes (and not far more), coding it losslessly with that many escapes.
func TestNarrowCodebook(t *testing.T) {
	kv := realKV(t)
	cb, err := codec.DefaultCodebook(codec.BF16)
	require.NoError(t, err)
	h, err := codec.NewHistogram(codec.BF16)
	require.NoError(t, err)
	require.NoError(t, h.Add(kv))
	base := 1 - h.Coverage(cb)
	enc, err := codec.NewEncoder()
	require.NoError(t, err)
	dec, err := codec.NewDecoder()
	require.NoError(t, err)
	prev := base
	for _, rate := range []float64{0.005, 0.02, 0.05, 0.10} {
		narrow, err := narrowCodebook(kv, cb, rate)
		require.NoError(t, err)
		require.Len(t, narrow.Exponents, len(cb.Exponents))
		esc := 1 - h.Coverage(narrow)
		require.GreaterOrEqual(t, esc, rate)
		require.Less(t, esc, 3*rate, "the fewest exponents dropped")
		require.GreaterOrEqual(t, esc, prev)
		prev = esc
		frame, err := enc.EncodeWith(nil, kv, narrow)
		require.NoError(t, err)
		hdr, err := codec.ParseHeader(frame)
		require.NoError(t, err)
		require.InDelta(t, esc, float64(hdr.Escapes)/float64(len(kv)/2), 1e-9)
		out, _, err := dec.Decode(nil, frame)
		require.NoError(t, err)
		require.Equal(t, kv, out)
	}
	_, err = narrowCodebook(kv, cb, 0.999)
	require.ErrorIs(t, err, ErrConfig)
}
