package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/internal/gpubench"
	"github.com/splitzip/splitzip/kernels/cuda"
)

// runBenchGPU prints the GPU codec table: dense encode/decode against the same run's device-to-device copy,
// gather-encode and decode-scatter on a paged cache, small-input latency, with the card's name. ptxFile, when set, names a PTX file of the
// codec's kernels built elsewhere (make -C kernels ptx of another revision), timed beside the built-in kernels.
// On a machine without a CUDA driver it says so and fails.
func runBenchGPU(data string, device int, sizes []int, reps int, ptxFile string) error {
	var alt []byte
	if ptxFile != "" {
		var err error
		if alt, err = os.ReadFile(ptxFile); err != nil {
			return fmt.Errorf("GPU benchmark: %w", err)
		}
	}
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
	cfg := gpubench.Config{KV: kv, Sizes: sizes, Reps: reps, PTX: alt, PTXName: filepath.Base(ptxFile)}
	if stderrIsTerminal {
		cfg.Log = os.Stderr
	}
	rep, err := gpubench.RunBench(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Print(rep.Table())
	return nil
}
