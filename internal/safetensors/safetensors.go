// Package safetensors reads and writes the safetensors tensor file format: an 8-byte little-endian header
// length, a JSON header mapping tensor names to dtype, shape and byte range, then the raw little-endian data.
package safetensors

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"
)

// ErrFormat reports a file that is not valid safetensors.
var ErrFormat = errors.New("safetensors: invalid file")

// maxHeader bounds the JSON header, so a damaged length field cannot make us allocate gigabytes.
const maxHeader = 100 << 20

// Tensor is one named tensor; Data aliases the file's bytes.
type Tensor struct {
	Name  string
	DType string // safetensors spelling: "BF16", "F32", …
	Shape []int64
	Data  []byte

	offset int64 // where Data starts in the file's data section, to keep file order
}

// File is a parsed safetensors file, tensors in file order.
type File struct {
	Tensors  []Tensor
	Metadata map[string]string
}

type entry struct {
	DType       string   `json:"dtype"`
	Shape       []int64  `json:"shape"`
	DataOffsets [2]int64 `json:"data_offsets"`
}

var elemSize = map[string]int64{
	"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
	"I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8,
}

// ReadFile reads and validates a safetensors file.
func ReadFile(path string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	f, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// Parse validates b and returns its tensors, which alias b.
func Parse(b []byte) (*File, error) {
	if len(b) < 8 {
		return nil, fmt.Errorf("%w: %d bytes", ErrFormat, len(b))
	}
	n := binary.LittleEndian.Uint64(b)
	if n > maxHeader || n > uint64(len(b)-8) {
		return nil, fmt.Errorf("%w: header length %d in a %d-byte file", ErrFormat, n, len(b))
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b[8:8+n], &raw); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrFormat, err)
	}
	data := b[8+n:]
	f := &File{}
	for name, msg := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &f.Metadata); err != nil {
				return nil, fmt.Errorf("%w: metadata: %v", ErrFormat, err)
			}
			continue
		}
		var e entry
		if err := json.Unmarshal(msg, &e); err != nil {
			return nil, fmt.Errorf("%w: tensor %q: %v", ErrFormat, name, err)
		}
		size, err := ByteSize(e.DType, e.Shape)
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", name, err)
		}
		lo, hi := e.DataOffsets[0], e.DataOffsets[1]
		if lo < 0 || hi < lo || hi > int64(len(data)) || hi-lo != size {
			return nil, fmt.Errorf("%w: tensor %q: bytes [%d, %d) for %v %s (%d bytes) in %d data bytes", ErrFormat, name, lo, hi, e.Shape, e.DType, size, len(data))
		}
		f.Tensors = append(f.Tensors, Tensor{Name: name, DType: e.DType, Shape: e.Shape, Data: data[lo:hi:hi], offset: lo})
	}
	sort.Slice(f.Tensors, func(i, j int) bool {
		a, b := f.Tensors[i], f.Tensors[j]
		return a.offset < b.offset || a.offset == b.offset && a.Name < b.Name
	})
	return f, nil
}

// Tensor returns the tensor called name.
func (f *File) Tensor(name string) (Tensor, bool) {
	i := slices.IndexFunc(f.Tensors, func(t Tensor) bool { return t.Name == name })
	if i < 0 {
		return Tensor{}, false
	}
	return f.Tensors[i], true
}

// ByteSize is the size in bytes of a tensor of the given dtype and shape; unknown dtypes, negative dimensions
// and sizes past int64 are ErrFormat.
func ByteSize(dtype string, shape []int64) (int64, error) {
	size, ok := elemSize[dtype]
	if !ok {
		return 0, fmt.Errorf("%w: unknown dtype %q", ErrFormat, dtype)
	}
	for _, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("%w: negative dimension in shape %v", ErrFormat, shape)
		}
		if d != 0 && size > math.MaxInt64/d {
			return 0, fmt.Errorf("%w: shape %v of %s is past 2^63 bytes", ErrFormat, shape, dtype)
		}
		size *= d
	}
	return size, nil
}

// HasHeader reports whether b starts the way a safetensors file does: an 8-byte little-endian header length
// that fits in b, followed by a JSON object. It reads only the first bytes of the header; Parse validates the
// rest. A raw tensor passes this test only if its first 8 bytes read as a length no larger than the file and the
// byte after them is '{', which real tensor data almost never is.
func HasHeader(b []byte) bool {
	if len(b) < 10 {
		return false
	}
	n := binary.LittleEndian.Uint64(b)
	return n >= 2 && n <= maxHeader && n <= uint64(len(b)-8) && b[8] == '{'
}

// MarshalHeader returns the length prefix and JSON header of a safetensors file holding tensors (in the given
// order) and metadata. Each tensor's byte range follows from its DType and Shape; Data is not read, so the
// header can be written before the data exists.
func MarshalHeader(tensors []Tensor, metadata map[string]string) ([]byte, error) {
	header := map[string]any{}
	if len(metadata) > 0 {
		header["__metadata__"] = metadata
	}
	var off int64
	for _, t := range tensors {
		if t.Name == "__metadata__" {
			return nil, fmt.Errorf("%w: a tensor may not be called __metadata__", ErrFormat)
		}
		if _, dup := header[t.Name]; dup {
			return nil, fmt.Errorf("%w: two tensors called %q", ErrFormat, t.Name)
		}
		size, err := ByteSize(t.DType, t.Shape)
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", t.Name, err)
		}
		header[t.Name] = entry{DType: t.DType, Shape: t.Shape, DataOffsets: [2]int64{off, off + size}}
		off += size
	}
	h, err := json.Marshal(header)
	if err != nil {
		return nil, err
	}
	for len(h)%8 != 0 { // the reference implementation pads the header with spaces to 8-byte alignment
		h = append(h, ' ')
	}
	return append(binary.LittleEndian.AppendUint64(make([]byte, 0, 8+len(h)), uint64(len(h))), h...), nil
}

// Encode writes tensors (in the given order) and metadata to w as a safetensors file. Each tensor's Data must
// hold exactly the bytes its DType and Shape call for.
func Encode(w io.Writer, tensors []Tensor, metadata map[string]string) error {
	h, err := MarshalHeader(tensors, metadata)
	if err != nil {
		return err
	}
	for _, t := range tensors {
		if size, _ := ByteSize(t.DType, t.Shape); int64(len(t.Data)) != size {
			return fmt.Errorf("%w: tensor %q: %d data bytes for %v %s (%d bytes)", ErrFormat, t.Name, len(t.Data), t.Shape, t.DType, size)
		}
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	if _, err := bw.Write(h); err != nil {
		return err
	}
	for _, t := range tensors {
		if _, err := bw.Write(t.Data); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// Write stores tensors (in the given order) and metadata as a safetensors file at path, as os.WriteFile does:
// in place, so a failure part-way leaves a partial file. Callers that replace files users keep write Encode's
// output to a temporary file and rename it.
func Write(path string, tensors []Tensor, metadata map[string]string) error {
	var b bytes.Buffer
	if err := Encode(&b, tensors, metadata); err != nil {
		return err
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}
