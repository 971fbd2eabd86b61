package main

import (
	"fmt"
	"os"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/kernels"
	"github.com/splitzip/splitzip/kernels/cuda"
)

// runBenchGPU prints the GPU codec table: dense encode/decode against the same run's device-to-device copy,
// the paged variants, small-input latency, with the card's name. On a machine without a CUDA driver it says
// so and fails.
func runBenchGPU(data string, device int, sizes []int, reps int) error {
	ctx, err := cuda.PrimaryContext(device)
	if err != nil {
		return fmt.Errorf("GPU benchmark: %w", err)
	}
	tensors, _, err := loadTensors(data, "")
	if err != nil {
		return err
	}
	var kv []byte
	for _, t := range tensors {
		if t.dtype == codec.BF16 {
			kv = append(kv, t.data...)
		}
	}
	cfg := kernels.BenchConfig{KV: kv, Sizes: sizes, Reps: reps}
	if stderrIsTerminal {
		cfg.Log = os.Stderr
	}
	rep, err := kernels.RunBench(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Print(rep.Table())
	return nil
}
