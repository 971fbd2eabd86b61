package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/internal/safetensors"
)

// A tensor file on the command line is either safetensors (by its .safetensors suffix) or a raw little-endian
// tensor whose dtype the user names with -dtype.
type namedTensor struct {
	name    string
	stDType string // the safetensors spelling, kept to rebuild the file exactly
	dtype   codec.DType
	shape   []int64
	data    []byte
}

func isSafetensors(path string) bool { return strings.HasSuffix(path, ".safetensors") }

func loadTensors(path string, rawDType string) ([]namedTensor, map[string]string, error) {
	if !isSafetensors(path) {
		if rawDType == "" {
			return nil, nil, fmt.Errorf("%s: a raw tensor file needs -dtype (bf16, fp16, fp32, fp8_e5m2, …)", path)
		}
		dt, err := codec.ParseDType(rawDType)
		if err != nil {
			return nil, nil, err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, nil, err
		}
		return []namedTensor{{name: "tensor", dtype: dt, shape: []int64{int64(len(b) / dt.Size())}, data: b}}, nil, nil
	}
	f, err := safetensors.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	out := make([]namedTensor, 0, len(f.Tensors))
	for _, t := range f.Tensors {
		dt, err := codec.ParseDType(t.DType)
		if err != nil {
			dt = codec.Bytes // carried raw, e.g. BOOL or U32
		}
		out = append(out, namedTensor{name: t.Name, stDType: t.DType, dtype: dt, shape: t.Shape, data: t.Data})
	}
	return out, f.Metadata, nil
}

// The compressed form of a safetensors file is again a safetensors file: each tensor becomes a U8 tensor holding
// its frame, and the metadata key "splitzip" records every tensor's original dtype and shape, so the original
// file can be rebuilt exactly (its other metadata is kept).
const metaKey = "splitzip"

type origin struct {
	DType string  `json:"dtype"`
	Shape []int64 `json:"shape"`
}

func encodeOrigins(m map[string]origin) string {
	b, _ := json.Marshal(m)
	return string(b)
}

func decodeOrigins(meta map[string]string) (map[string]origin, error) {
	s, ok := meta[metaKey]
	if !ok {
		return nil, fmt.Errorf("not a splitzip-compressed safetensors file (no %q metadata)", metaKey)
	}
	var m map[string]origin
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return nil, fmt.Errorf("bad %q metadata: %w", metaKey, err)
	}
	return m, nil
}

func formatBytes(n float64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", n/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.2f MiB", n/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", n/(1<<10))
	}
	return fmt.Sprintf("%.0f B", n)
}
