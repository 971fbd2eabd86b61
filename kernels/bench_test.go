package kernels

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestGPUBench prints the benchmark table (a benchmark, not a timed test): it runs only with
// SPLITZIP_GPU_BENCH=1 on a GPU, and writes the table to $SPLITZIP_GPU_BENCH_OUT when set.
// SPLITZIP_GPU_BENCH_VARIANTS (comma-separated, see BenchConfig.Variants) and SPLITZIP_GPU_BENCH_MIB
// (comma-separated dense sizes) narrow a run to an experiment, without the paged and small rows.
func TestGPUBench(t *testing.T) {
	if os.Getenv("SPLITZIP_GPU_BENCH") != "1" {
		t.Skip("set SPLITZIP_GPU_BENCH=1 to run the GPU benchmark")
	}
	g := newGPU(t)
	cfg := BenchConfig{KV: concat(realKV(t)), Log: os.Stderr}
	if v := os.Getenv("SPLITZIP_GPU_BENCH_VARIANTS"); v != "" {
		cfg.Variants = strings.Split(v, ",")
	}
	if v := os.Getenv("SPLITZIP_GPU_BENCH_MIB"); v != "" {
		for _, f := range strings.Split(v, ",") {
			mib, err := strconv.Atoi(f)
			require.NoError(t, err, "SPLITZIP_GPU_BENCH_MIB")
			cfg.Sizes = append(cfg.Sizes, mib<<20)
		}
		cfg.SmallSizes, cfg.SkipPaged = []int{}, true
	}
	rep, err := RunBench(g.ctx, cfg)
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
