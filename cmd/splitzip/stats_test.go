package main

import (
	"bytes"
	"math"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/splitzip/splitzip/codec"
	"github.com/stretchr/testify/require"
)

// floats parses the numbers of a line's fields (a trailing % dropped); "–" and "(raw)" read as NaN.
func floats(t *testing.T, fields []string) []float64 {
	t.Helper()
	out := make([]float64, len(fields))
	for i, f := range fields {
		if f == "–" || f == "(raw)" {
			out[i] = math.NaN()
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSuffix(f, "%"), 64)
		require.NoError(t, err, "field %q", f)
		out[i] = v
	}
	return out
}

var layerLine = regexp.MustCompile(`^\s*(\d+|all) \| (.*) \| (.*)$`)

// stats on the real-KV fixture: every layer's K and V in both modes, with ratios where the formats put them
// (fast: 16/12 less escapes and framing; high-ratio: close under the entropy bound), and the overall rows.
func TestStatsBothModes(t *testing.T) {
	dir := t.TempDir()
	book, table := filepath.Join(dir, "book.json"), filepath.Join(dir, "table.json")
	var buf bytes.Buffer
	require.NoError(t, writeStats(&buf, []string{"-calibration", fixture("kv_calibration.safetensors"),
		"-evaluation", fixture("kv_evaluation.safetensors"), "-o", book, "-table", table}))
	out := buf.String()
	t.Log("\n" + out)

	layers := 0
	for line := range strings.Lines(out) {
		m := layerLine.FindStringSubmatch(strings.TrimRight(line, "\n"))
		if m == nil {
			continue
		}
		for _, cell := range m[2:] {
			v := floats(t, strings.Fields(cell))
			require.Len(t, v, 5, line)
			coverage, escape, fast, high, bound := v[0], v[1], v[2], v[3], v[4]
			require.InDelta(t, 100-coverage, 100*escape, 1e-3, line)
			require.Greater(t, coverage, 99.0, line)
			require.GreaterOrEqual(t, fast, 1.30, line)
			require.LessOrEqual(t, fast, 1.34, line)
			require.GreaterOrEqual(t, high, 1.45, line)
			require.Less(t, high, bound, line)
			require.Greater(t, high, 0.97*bound, line)
			if m[1] == "all" {
				require.GreaterOrEqual(t, high, 1.46, line)
			}
		}
		if m[1] != "all" {
			layers++
		}
	}
	require.Equal(t, 30, layers, "a row per layer of SmolLM2-135M")

	overall := map[string][]float64{}
	for line := range strings.Lines(out) {
		for _, label := range []string{"bf16, (a)", "bf16, (b)", "bf16, (c)", "bf16, 3-bit", "fp8 e4m3, (a)", "fp8 e4m3, (b)"} {
			if strings.HasPrefix(line, label) {
				_, nums, ok := strings.Cut(line[len(label):], "  ")
				require.True(t, ok, line)
				fastPart, highPart, ok := strings.Cut(nums, "|")
				require.True(t, ok, line)
				overall[label] = append(floats(t, strings.Fields(fastPart)), floats(t, strings.Fields(highPart))...)
			}
		}
	}
	require.Len(t, overall, 6)
	for _, label := range []string{"bf16, (a)", "bf16, (b)", "bf16, (c)"} {
		v := overall[label]
		require.Len(t, v, 6, label)
		require.GreaterOrEqual(t, v[0], 1.30, label)
		require.LessOrEqual(t, v[0], 1.34, label)
		require.GreaterOrEqual(t, v[2], 1.44, label)
		require.Less(t, v[2], v[4], label)
	}
	require.GreaterOrEqual(t, overall["bf16, (a)"][2], 1.46, "high-ratio, a frame per tensor with its own table")
	require.Len(t, overall["bf16, 3-bit"], 3, "3-bit codes are fast mode only")
	for _, label := range []string{"fp8 e4m3, (a)", "fp8 e4m3, (b)"} {
		v := overall[label]
		require.Len(t, v, 6, label)
		require.InDelta(t, 24576.0/(24576+codec.HeaderSize), v[0], 1e-4, "fast mode carries e4m3 raw")
		require.True(t, math.IsNaN(v[1]), "marked (raw)")
		require.GreaterOrEqual(t, v[2], 1.15, label)
		require.Less(t, v[2], v[4], label)
	}
	require.Contains(t, out, "all 600 frames above decoded bit-exact")

	cb, err := codec.LoadCodebook(book)
	require.NoError(t, err)
	require.Len(t, cb.Exponents, 16)
	ct, err := codec.LoadCodeTable(table)
	require.NoError(t, err)
	require.Equal(t, codec.BF16, ct.DType)
	require.True(t, ct.CodesAll())
}
