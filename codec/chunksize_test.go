package codec

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// rechunk rewrites a coded frame for chunks of 2^log2 elements: the same codebook, codes and residuals, with
// the chunk table and the escapes' chunk-local positions recomputed. The result is a valid v1 frame that no
// v1 encoder writes (they all write DefaultChunk), which a decoder must read all the same.
func rechunk(t *testing.T, frame []byte, log2 uint8) []byte {
	h, err := ParseHeader(frame)
	require.NoError(t, err)
	require.False(t, h.Raw)
	old := h.Layout()
	type escape struct {
		pos uint64
		x   byte
	}
	all := make([]escape, 0, h.Escapes)
	for c := uint64(0); c < old.Chunks; c++ {
		lo, hi := binary.LittleEndian.Uint32(frame[old.Table+4*c:]), uint32(h.Escapes)
		if c+1 < old.Chunks {
			hi = binary.LittleEndian.Uint32(frame[old.Table+4*c+4:])
		}
		for k := uint64(lo); k < uint64(hi); k++ {
			e := frame[old.Escapes+escapeSize*k:]
			all = append(all, escape{c<<h.ChunkLog2 + uint64(binary.LittleEndian.Uint16(e)), e[2]})
		}
	}
	h2 := h
	h2.ChunkLog2 = log2
	lay := h2.Layout()
	h2.PayloadLen = lay.End - HeaderSize
	out := make([]byte, lay.End)
	copy(out[lay.Codebook:], frame[old.Codebook:old.Codebook+uint64(h.CodebookLen)])
	copy(out[lay.Codes:], frame[old.Codes:old.Codes+h.CodesLen])
	copy(out[lay.Residuals:], frame[old.Residuals:old.Residuals+h.ResidualsLen])
	k := 0
	for c := uint64(0); c < lay.Chunks; c++ {
		binary.LittleEndian.PutUint32(out[lay.Table+4*c:], uint32(k))
		for ; k < len(all) && all[k].pos>>log2 == c; k++ {
			e := out[lay.Escapes+escapeSize*uint64(k):]
			binary.LittleEndian.PutUint16(e, uint16(all[k].pos&(1<<log2-1)))
			e[2] = all[k].x
		}
	}
	h2.marshal(out)
	return out
}

// Frames with any chunk size the format allows (2^8 … 2^16) decode bit-exactly, into a buffer and into
// segments; the decoder takes the chunk size from the header, not from what its encoder writes.
func TestDecodeOtherChunkSizes(t *testing.T) {
	rng := newRand()
	enc, err := NewEncoder()
	require.NoError(t, err)
	dec, err := NewDecoder()
	require.NoError(t, err)
	f := loadFixture(t, "kv_evaluation.safetensors")
	var kv []byte
	for _, tensor := range f.Tensors {
		kv = append(kv, tensor.Data...)
	}
	f16 := make([]byte, 2*70001) // the generic (bit-packed) path
	for i := range 70001 {
		binary.LittleEndian.PutUint16(f16[2*i:], float32ToHalf(float32(rng.NormFloat64())))
	}
	for _, tc := range []struct {
		name string
		src  []byte
		dt   DType
	}{
		{"real KV", kv, BF16},
		{"real KV, odd length", kv[:2*50001], BF16},
		{"bf16 normal", randomNormalBF16(rng, 300001, 1), BF16},
		{"fp16", f16, FP16},
	} {
		frame, err := enc.Encode(nil, tc.src, tc.dt)
		require.NoError(t, err, tc.name)
		h, err := ParseHeader(frame)
		require.NoError(t, err)
		require.False(t, h.Raw, tc.name)
		require.NotZero(t, h.Escapes, tc.name) // escape positions are what the chunk size changes
		for _, log2 := range []uint8{minChunkLog2, 10, DefaultChunk, 14, maxChunkLog2} {
			other := rechunk(t, frame, log2)
			got, _, err := dec.Decode(nil, other)
			require.NoError(t, err, "%s, chunks of 2^%d", tc.name, log2)
			require.Equal(t, tc.src, got, "%s, chunks of 2^%d", tc.name, log2)
			segs, _ := splitAt(rng, make([]byte, len(tc.src)), tc.dt.Size(), 3000, tc.dt.Size())
			_, err = dec.DecodeSegments(segs, other)
			require.NoError(t, err, "%s, chunks of 2^%d, segments", tc.name, log2)
			require.Equal(t, tc.src, concat(segs), "%s, chunks of 2^%d, segments", tc.name, log2)
		}
	}
}

// A high-ratio frame of 16,384-element chunks, the size encoders wrote before 8,192 (tests/data/hr_chunk14.sz:
// the fixture's first 20,001 elements, a whole chunk and a short one), still decodes bit-exactly.
func TestDecodesChunk14Frame(t *testing.T) {
	frame, err := os.ReadFile(filepath.Join("..", "tests", "data", "hr_chunk14.sz"))
	require.NoError(t, err)
	h, err := ParseHeader(frame)
	require.NoError(t, err)
	require.Equal(t, uint8(14), h.ChunkLog2)
	require.Equal(t, ModeHighRatio, h.Mode())
	require.Equal(t, uint64(20001), h.Elements)
	dec, err := NewDecoder()
	require.NoError(t, err)
	got, _, err := dec.Decode(nil, frame)
	require.NoError(t, err)
	require.Equal(t, fixtureKV(t)[:2*20001], got)
}
