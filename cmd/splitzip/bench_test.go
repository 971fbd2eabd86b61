package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

var benchRow = regexp.MustCompile(`^\s*([\d.]+ [KMG]iB)?\s+(fast|fast, given codebook|high-ratio, own table|high-ratio, given table)\s+(\S+G)?\s*\|(.*)\|(.*)\|(.*)$`)

// benchRows runs the CPU bench and returns, per size, each mode's figures: enc 1, %copy, enc N, dec 1,
// %copy, dec N, ratio, escapes.
func benchRows(t *testing.T, args ...string) (string, map[string]map[string][]float64) {
	t.Helper()
	var buf bytes.Buffer
	require.NoError(t, bench(&buf, args))
	out := buf.String()
	t.Log("\n" + out)
	rows := map[string]map[string][]float64{}
	size := ""
	for line := range strings.Lines(out) {
		m := benchRow.FindStringSubmatch(strings.TrimRight(line, "\n"))
		if m == nil {
			continue
		}
		if m[1] != "" {
			size = m[1]
			rows[size] = map[string][]float64{}
			require.NotEmpty(t, m[3], "the copy figure stands on a size's first row: %s", line)
		}
		var fields []string
		for _, part := range m[4:] {
			for _, f := range strings.Fields(part) {
				fields = append(fields, strings.TrimSuffix(f, "G"))
			}
		}
		v := floats(t, fields)
		require.Len(t, v, 8, line)
		// Throughputs print with two decimals: under the race detector, on a loaded machine, a slow row (the
		// high-ratio encoder building a 64 KiB frame's own table) can round to 0.00. Every row still moves
		// bytes somewhere, and its ratio is always positive.
		for i, x := range v {
			require.GreaterOrEqual(t, x, 0.0, line)
			if i == 6 {
				require.Positive(t, x, "ratio: %s", line)
			}
		}
		require.Positive(t, v[0]+v[2]+v[3]+v[5], "every throughput of a row is zero: %s", line)
		rows[size][m[2]] = v
	}
	return out, rows
}

// The CPU bench times both modes (the high-ratio mode with its own table and a given one) beside copy(), on
// real KV, and says which code paths ran.
func TestBenchBothModes(t *testing.T) {
	out, rows := benchRows(t, "-size", "1MiB", "-runs", "1", "-data", fixture("kv_evaluation.safetensors"),
		"-calibration", fixture("kv_calibration.safetensors"))
	require.Len(t, rows, 2, "64 KiB and 1 MiB")
	for size, modes := range rows {
		require.Len(t, modes, 4, size)
		fast, own, given := modes["fast"][6], modes["high-ratio, own table"][6], modes["high-ratio, given table"][6]
		require.GreaterOrEqual(t, fast, 1.30, size)
		require.LessOrEqual(t, fast, 1.34, size)
		require.InDelta(t, fast, modes["fast, given codebook"][6], 0.005, "SmolLM2's own codebook and the built-in one code alike")
		// All layers' K and V in one frame share one table: under the per-tensor figures of 'stats'.
		require.Greater(t, own, fast+0.05, size)
		require.Greater(t, given, fast+0.02, size)
	}
	require.GreaterOrEqual(t, rows["1.00 MiB"]["high-ratio, own table"][6], 1.42)
	require.Contains(t, out, "high-ratio entropy coder: ")
	require.Contains(t, out, "given table: learned from "+fixture("kv_calibration.safetensors"))
}

func TestBenchTableSources(t *testing.T) {
	out, rows := benchRows(t, "-size", "64KiB", "-runs", "1", "-data", "")
	require.Contains(t, out, "synthetic normals")
	require.Contains(t, out, "given table: learned from other synthetic normals")
	require.Len(t, rows["64.0 KiB"], 4)

	out, rows = benchRows(t, "-size", "64KiB", "-runs", "1", "-data", fixture("kv_evaluation.safetensors"), "-calibration", "")
	require.Contains(t, out, "given table: learned from the input itself")
	out, _ = benchRows(t, "-size", "64KiB", "-runs", "1", "-data", fixture("kv_evaluation.safetensors"))
	require.Contains(t, out, "given table: learned from the input itself")
	require.Len(t, rows["64.0 KiB"], 4)

	require.ErrorContains(t, bench(&bytes.Buffer{}, []string{"-runs", "0"}), "-runs 0")
	require.ErrorContains(t, bench(&bytes.Buffer{}, []string{"-size", "64KiB", "-data", fixture("kv_evaluation.safetensors"), "-calibration", "missing.safetensors"}), "given table: input missing.safetensors")
}
