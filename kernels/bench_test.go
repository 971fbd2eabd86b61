package kernels

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestGPUBench prints the benchmark table (a benchmark, not a timed test): it runs only with
// SPLITZIP_GPU_BENCH=1 on a GPU, and writes the table to $SPLITZIP_GPU_BENCH_OUT when set.
func TestGPUBench(t *testing.T) {
	if os.Getenv("SPLITZIP_GPU_BENCH") != "1" {
		t.Skip("set SPLITZIP_GPU_BENCH=1 to run the GPU benchmark")
	}
	g := newGPU(t)
	rep, err := RunBench(g.ctx, BenchConfig{KV: concat(realKV(t)), Log: os.Stderr})
	require.NoError(t, err)
	table := rep.Table()
	t.Log("\n" + table)
	if out := os.Getenv("SPLITZIP_GPU_BENCH_OUT"); out != "" {
		require.NoError(t, os.WriteFile(out, []byte(table), 0o644))
	}
}

// TestGPUProfile runs one dense encode and decode of 256 MiB per kernel variant, for a profiler
// (SPLITZIP_GPU_PROFILE=1 ncu -k regex:sz_ ... kernels.test -test.run TestGPUProfile).
func TestGPUProfile(t *testing.T) {
	if os.Getenv("SPLITZIP_GPU_PROFILE") != "1" {
		t.Skip("set SPLITZIP_GPU_PROFILE=1 to run the profiling workload")
	}
	g := newGPU(t)
	_, err := RunBench(g.ctx, BenchConfig{KV: concat(realKV(t)), Sizes: []int{256 << 20}, SmallSizes: []int{},
		Variants: []string{"t256c4/t256c4+n"}, Reps: 1, SkipPaged: true})
	require.NoError(t, err)
}
