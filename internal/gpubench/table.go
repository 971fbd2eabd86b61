package gpubench

import (
	"fmt"
	"slices"
	"strings"
)

func humanSize(n int) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20:
		return fmt.Sprintf("%d MiB", n>>20)
	default:
		return fmt.Sprintf("%d KiB", n>>10)
	}
}

// Table formats the report as Markdown tables: dense rows, then paged and small-input rows where present.
func (r *Report) Table() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "GPU: %s (driver CUDA %d.%d); built-in kernels: %s %s\n\n", r.Card, r.Driver/1000, r.Driver%1000/10,
		map[bool]string{true: "sm_90 (programmatic dependent launch)", false: "sm_80"}[r.DependentLaunch],
		map[bool]string{true: "cubin", false: "PTX"}[r.Precompiled])
	sb.WriteString("| input | size | kernels | encode GB/s | decode GB/s | D2D copy GB/s | SM copy kernel GB/s | roofline GB/s | encode % roofline | decode % roofline | ratio | escapes |\n")
	sb.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	// Each kernel build's first dense row: the fixture's speed its sweep and paged rows are put against.
	fixture := map[string]Row{}
	for _, row := range r.Rows {
		if row.What != "dense" {
			continue
		}
		if _, ok := fixture[row.Kernels]; !ok {
			fixture[row.Kernels] = row
		}
		k := kernelsLabel(row.Kernels)
		fmt.Fprintf(&sb, "| real-KV-like bf16 | %s | %s | %.0f | %.0f | %.0f | %.0f | %.0f | %.1f | %.1f | %.4f | %d |\n",
			humanSize(row.Size), k, row.Encode, row.Decode, row.Copy, row.SMCopy, row.Roofline,
			100*row.Encode/row.Roofline, 100*row.Decode/row.Roofline, row.Ratio, row.Escapes)
	}
	fmt.Fprintf(&sb, "\nDense and paged rows: each timed operation queued behind a %v spin kernel, so the window holds the GPU's\n"+
		"time and not the host's launch latency; small inputs: from an idle stream, the launch included.\n", holdTime)
	if slices.ContainsFunc(r.Rows, func(x Row) bool { return x.What == "escapes" }) {
		sb.WriteString("\n| escape sweep (built-in codebook narrowed) | size | kernels | escapes | encode GB/s | decode GB/s | encode % of the fixture's | decode % of the fixture's | ratio |\n")
		sb.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, row := range r.Rows {
			if row.What == "escapes" {
				base := fixture[row.Kernels]
				fmt.Fprintf(&sb, "| real-KV-like bf16 | %s | %s | %.2f %% | %.0f | %.0f | %.1f | %.1f | %.4f |\n", humanSize(row.Size),
					kernelsLabel(row.Kernels), 100*float64(row.Escapes)/float64(row.Size/2), row.Encode, row.Decode,
					100*row.Encode/base.Encode, 100*row.Decode/base.Decode, row.Ratio)
			}
		}
	}
	if slices.ContainsFunc(r.Rows, func(x Row) bool { return strings.HasPrefix(x.What, "paged") }) {
		sb.WriteString("\n| paged (Llama-3-8B, 16-token blocks) | size | encode GB/s | decode GB/s | encode % dense | decode % dense | ratio |\n")
		sb.WriteString("|---|---:|---:|---:|---:|---:|---:|\n")
		for _, row := range r.Rows {
			if strings.HasPrefix(row.What, "paged") {
				fmt.Fprintf(&sb, "| %s | %s | %.0f | %.0f | %.1f | %.1f | %.4f |\n", row.What, humanSize(row.Size),
					row.Encode, row.Decode, 100*row.Encode/fixture[""].Encode, 100*row.Decode/fixture[""].Decode, row.Ratio)
			}
		}
	}
	if slices.ContainsFunc(r.Rows, func(x Row) bool { return x.What == "small" }) {
		sb.WriteString("\n| small input | encode µs | decode µs | empty launch + D2D copy µs | ratio |\n")
		sb.WriteString("|---:|---:|---:|---:|---:|\n")
		for _, row := range r.Rows {
			if row.What == "small" {
				fmt.Fprintf(&sb, "| %s | %.1f | %.1f | %.1f | %.4f |\n", humanSize(row.Size), row.Encode, row.Decode, row.Copy, row.Ratio)
			}
		}
	}
	return sb.String()
}

// kernelsLabel names a row's kernels: "built-in", or the PTX file timed beside them.
func kernelsLabel(name string) string {
	if name == "" {
		return "built-in"
	}
	return name
}
