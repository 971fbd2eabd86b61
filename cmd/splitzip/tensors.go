package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/internal/safetensors"
)

// An input file is recognised by its bytes, never by its name (fileKind). A tensor file is a safetensors file,
// or a raw little-endian tensor whose dtype the user names with -dtype.
type namedTensor struct {
	name    string
	stDType string // the safetensors spelling, kept to rebuild the file exactly
	dtype   codec.DType
	shape   []int64
	data    []byte
}

// fileKind is what an input file holds, by its first bytes.
type fileKind int

const (
	kindRaw         fileKind = iota // anything else: a raw little-endian tensor
	kindSafetensors                 // an 8-byte little-endian header length, then a JSON object
	kindFrame                       // a SplitZip frame: the magic "SZIP" (codec/FORMAT.md)
)

// detect tells a SplitZip frame from a safetensors file from anything else. The two cannot be confused: "SZIP"
// read as a safetensors header length is over a gigabyte, past the largest header safetensors.HasHeader accepts.
func detect(b []byte) fileKind {
	if len(b) >= 4 {
		if _, err := codec.ParseHeader(b); !errors.Is(err, codec.ErrBadMagic) {
			return kindFrame // a damaged or truncated frame still is one; decoding says what is wrong
		}
	}
	if safetensors.HasHeader(b) {
		return kindSafetensors
	}
	return kindRaw
}

// readInput reads a whole input file and detects its kind.
func readInput(path string) ([]byte, fileKind, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, inputError(path, err)
	}
	return b, detect(b), nil
}

// rawDTypes names the dtypes a raw input may have, for messages.
const rawDTypes = "bf16, fp16, fp32, fp8_e5m2, fp8_e4m3, int8, uint8, int16, int32, int64, fp64, bytes"

// tensorFile is an input file's tensors, loaded for compressing or calibrating.
type tensorFile struct {
	kind     fileKind // kindRaw or kindSafetensors
	tensors  []namedTensor
	metadata map[string]string // a safetensors file's metadata
}

// loadInput loads a tensor file: a safetensors file (whatever its name), or else a raw tensor of rawDType.
// Files the tool wrote (a SplitZip frame, a compressed safetensors file) are refused: their tensors are frames.
func loadInput(path string, rawDType string) (*tensorFile, error) {
	b, kind, err := readInput(path)
	if err != nil {
		return nil, err
	}
	switch kind {
	case kindFrame:
		return nil, fmt.Errorf("%s: %w: it starts with the SplitZip frame magic, so it is already compressed ('splitzip decompress' reads it)", path, errNotTensor)
	case kindRaw:
		if rawDType == "" {
			return nil, fmt.Errorf("%s: neither a safetensors file nor a SplitZip frame by its contents, so it is read as a raw tensor, and %w (%s)", path, errRawNeedsType, rawDTypes)
		}
		dt, err := codec.ParseDType(rawDType)
		if err != nil {
			return nil, err
		}
		if len(b)%dt.Size() != 0 {
			return nil, fmt.Errorf("%s: %d bytes are not a whole number of %d-byte %s elements", path, len(b), dt.Size(), dt)
		}
		return &tensorFile{kind: kindRaw, tensors: []namedTensor{{name: "tensor", dtype: dt, shape: []int64{int64(len(b) / dt.Size())}, data: b}}}, nil
	}
	f, err := safetensors.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: it starts like a safetensors file but is not a valid one: %w", path, err)
	}
	if _, ok := f.Metadata[metaKey]; ok {
		return nil, fmt.Errorf("%s: %w: it is a safetensors file that splitzip compressed (it has %q metadata), so its tensors are frames ('splitzip decompress' reads it)", path, errNotTensor, metaKey)
	}
	out := make([]namedTensor, 0, len(f.Tensors))
	for _, t := range f.Tensors {
		dt, err := codec.ParseDType(t.DType)
		if err != nil {
			dt = codec.Bytes // carried raw, e.g. BOOL or U32
		}
		out = append(out, namedTensor{name: t.Name, stDType: t.DType, dtype: dt, shape: t.Shape, data: t.Data})
	}
	return &tensorFile{kind: kindSafetensors, tensors: out, metadata: f.Metadata}, nil
}

// loadTensors is loadInput's tensors and metadata.
func loadTensors(path string, rawDType string) ([]namedTensor, map[string]string, error) {
	f, err := loadInput(path, rawDType)
	if err != nil {
		return nil, nil, err
	}
	return f.tensors, f.metadata, nil
}

// compressedInput is a file the tool wrote, recognised by its bytes: a bare frame (from a raw tensor) or a
// safetensors file of frames with the "splitzip" metadata.
type compressedInput struct {
	frame   []byte // a bare frame, or nil
	file    *safetensors.File
	origins map[string]origin
}

// readCompressed reads a file that 'splitzip compress' wrote, whatever its name.
func readCompressed(path string) (*compressedInput, error) {
	b, kind, err := readInput(path)
	if err != nil {
		return nil, err
	}
	switch kind {
	case kindFrame:
		return &compressedInput{frame: b}, nil
	case kindRaw:
		start := "it is empty"
		if len(b) > 0 {
			start = fmt.Sprintf("it starts with % x", b[:min(len(b), 8)])
		}
		return nil, fmt.Errorf("%s: %w: neither a SplitZip frame nor a safetensors file by its contents (%s)", path, errNotSplitZip, start)
	}
	f, err := safetensors.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: it starts like a safetensors file but is not a valid one: %w", path, err)
	}
	origins, err := decodeOrigins(f.Metadata)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &compressedInput{file: f, origins: origins}, nil
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
		return nil, fmt.Errorf("%w: a safetensors file without the %q metadata that 'splitzip compress' writes", errNotSplitZip, metaKey)
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
