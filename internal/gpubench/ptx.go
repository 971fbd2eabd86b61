// Package gpubench measures the GPU codec (package kernels) on a GPU: dense encode and decode against the same
// run's device-to-device copy bandwidth, a request gathered from and scattered into a paged KV cache, and the
// latency of small inputs. It checks what it times (frames equal the CPU encoder's, round trips are bit-exact).
// `splitzip bench -gpu` prints its table; with -ptx it also times kernels built elsewhere (kernels.WithPTX),
// which is how a kernel change is compared against the built-in kernels.
//
// It uses only the kernels package's public API and its own small CUDA module, bench.cu (an empty kernel, a
// copy kernel and a spin kernel), compiled to bench.ptx by `make -C internal/gpubench ptx` and embedded;
// TestPTXUpToDate fails when the PTX is stale against its source.
package gpubench

import _ "embed"

//go:generate make ptx

//go:embed bench.ptx
var benchPTX []byte

//go:embed bench.sha256
var ptxHashes string
