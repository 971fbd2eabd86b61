package safetensors

import (
	"encoding/binary"
	"path/filepath"
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
