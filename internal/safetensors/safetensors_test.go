package safetensors

import (
	"bytes"
	"encoding/binary"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestWriteRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.safetensors")
	in := []Tensor{
		{Name: "b", DType: "BF16", Shape: []int64{2, 3}, Data: []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}},
		{Name: "a", DType: "U8", Shape: []int64{3}, Data: []byte{9, 8, 7}},
		{Name: "c", DType: "U8", Shape: []int64{1}, Data: []byte{5}},
	}
	require.NoError(t, Write(path, in, map[string]string{"k": "v"}))
	f, err := ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, "v", f.Metadata["k"])
	require.Len(t, f.Tensors, 3)
	require.Equal(t, []string{"b", "a", "c"}, []string{f.Tensors[0].Name, f.Tensors[1].Name, f.Tensors[2].Name}, "file order kept")
	require.Equal(t, in[0].Data, f.Tensors[0].Data)
	a, ok := f.Tensor("a")
	require.True(t, ok)
	require.Equal(t, []byte{9, 8, 7}, a.Data)
}

func TestBadFiles(t *testing.T) {
	_, err := Parse([]byte{1, 2})
	require.ErrorIs(t, err, ErrFormat)
	b := make([]byte, 16)
	binary.LittleEndian.PutUint64(b, 1<<40)
	_, err = Parse(b)
	require.ErrorIs(t, err, ErrFormat)
	h := []byte(`{"x":{"dtype":"BF16","shape":[4],"data_offsets":[0,6]}}`)
	b = binary.LittleEndian.AppendUint64(nil, uint64(len(h)))
	b = append(append(b, h...), make([]byte, 8)...)
	_, err = Parse(b)
	require.ErrorIs(t, err, ErrFormat, "size does not match shape")
}

func TestHasHeader(t *testing.T) {
	var b bytes.Buffer
	require.NoError(t, Encode(&b, []Tensor{{Name: "x", DType: "U8", Shape: []int64{2}, Data: []byte{1, 2}}}, nil))
	require.True(t, HasHeader(b.Bytes()))
	require.False(t, HasHeader(b.Bytes()[:10]), "a header length past the end is not safetensors")
	require.False(t, HasHeader([]byte("SZIP and then some bytes")))
	require.False(t, HasHeader(nil))
	notJSON := slices.Clone(b.Bytes())
	notJSON[8] = '['
	require.False(t, HasHeader(notJSON))
}

func TestEncodeChecksSizes(t *testing.T) {
	var b bytes.Buffer
	err := Encode(&b, []Tensor{{Name: "x", DType: "BF16", Shape: []int64{3}, Data: make([]byte, 4)}}, nil)
	require.ErrorIs(t, err, ErrFormat, "3 bf16 elements are 6 bytes, not 4")
	require.Zero(t, b.Len(), "nothing written for a bad tensor")
	err = Encode(&b, []Tensor{{Name: "x", DType: "U8", Shape: []int64{1}, Data: []byte{1}}, {Name: "x", DType: "U8", Shape: []int64{1}, Data: []byte{2}}}, nil)
	require.ErrorIs(t, err, ErrFormat, "duplicate names")
	_, err = MarshalHeader([]Tensor{{Name: "x", DType: "Q4", Shape: []int64{1}}}, nil)
	require.ErrorIs(t, err, ErrFormat, "unknown dtype")
	_, err = ByteSize("F64", []int64{1 << 31, 1 << 31})
	require.ErrorIs(t, err, ErrFormat, "2^62 elements of 8 bytes overflow int64")
	n, err := ByteSize("F32", []int64{2, 0, 5})
	require.NoError(t, err)
	require.Zero(t, n)

	// MarshalHeader sizes tensors from dtype and shape, so a header written ahead of its data parses with it.
	ts := []Tensor{{Name: "a", DType: "F16", Shape: []int64{2, 2}}, {Name: "b", DType: "U8", Shape: []int64{3}}}
	h, err := MarshalHeader(ts, map[string]string{"k": "v"})
	require.NoError(t, err)
	f, err := Parse(append(h, make([]byte, 11)...))
	require.NoError(t, err)
	require.Len(t, f.Tensors, 2)
	require.Len(t, f.Tensors[0].Data, 8)
	require.Len(t, f.Tensors[1].Data, 3)
}
