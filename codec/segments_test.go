package codec

import (
	"hash/crc32"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// splitAt cuts b into segments at random boundaries, multiples of align elements (empty segments included),
// each in its own allocation with poisoned bytes around it, so that a read or write past a segment shows.
// Boundaries on multiples of 64 elements let the bf16 kernels work on the segments in place.
func splitAt(rng *rand.Rand, b []byte, size, meanElems, align int) (segs, bufs [][]byte) {
	for off := 0; off <= len(b); {
		k := rng.IntN(2*max(meanElems/align, 1)+1) * align * size
		if rng.IntN(8) == 0 {
			k = 0
		}
		k = min(k, len(b)-off)
		buf := make([]byte, k+32)
		for i := range buf {
			buf[i] = 0xA5
		}
		seg := buf[16 : 16+k : 16+k]
		copy(seg, b[off:off+k])
		segs, bufs = append(segs, seg), append(bufs, buf)
		off += k
		if off == len(b) {
			break
		}
	}
	return segs, bufs
}

func concat(segs [][]byte) []byte {
	out := []byte{}
	for _, s := range segs {
		out = append(out, s...)
	}
	return out
}

// requireSegmentsRoundTrip: EncodeSegments writes the frame Encode writes for the concatenation, and
// DecodeSegments restores every segment.
func requireSegmentsRoundTrip(t *testing.T, rng *rand.Rand, enc *Encoder, dec *Decoder, src []byte, dt DType, meanElems, align int) {
	t.Helper()
	want, err := enc.Encode(nil, src, dt)
	require.NoError(t, err)
	segs, bufs := splitAt(rng, src, dt.Size(), meanElems, align)
	require.Equal(t, src, concat(segs))
	got, err := enc.EncodeSegments(nil, segs, dt)
	require.NoError(t, err)
	require.Equal(t, want, got, "%d bytes of %s in %d segments", len(src), dt, len(segs))
	withCRC, crc, err := enc.EncodeSegmentsCRC([]byte("prefix"), segs, dt)
	require.NoError(t, err)
	require.Equal(t, want, withCRC[6:])
	require.Equal(t, crc32.Checksum(want, crc32.MakeTable(crc32.Castagnoli)), crc, "CRC-32C of the frame")
	for _, s := range segs {
		clear(s)
	}
	h, err := dec.DecodeSegments(segs, got)
	require.NoError(t, err)
	require.Equal(t, uint64(len(src)), h.RawLen())
	require.Equal(t, src, concat(segs), "%d bytes of %s in %d segments", len(src), dt, len(segs))
	for k, buf := range bufs { // nothing written outside the segments
		for i, x := range buf {
			if (i < 16 || i >= 16+len(segs[k])) && x != 0xA5 {
				t.Fatalf("segment %d: byte %d of its buffer written", k, i)
			}
		}
	}
}

func TestSegmentsRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(41, 42))
	enc, dec := newCodecs(t)
	for _, n := range []int{0, 1, 7, 4096, 4097, 3*4096 + 100, 1 << 20, 1<<20 + 2*4096 + 33} {
		src := randomNormalBF16(rng, n, 1)
		for _, mean := range []int{1, 100, 3072, 5000, 1 << 20} {
			if mean*1000 < n {
				continue // a segment per few elements of a large tensor: slow and no different
			}
			requireSegmentsRoundTrip(t, rng, enc, dec, src, BF16, mean, 1)
			requireSegmentsRoundTrip(t, rng, enc, dec, src, BF16, mean, 64)
		}
	}
	// Blocks of a paged KV cache (3,072 elements: 16 tokens × 3 heads × 64): every chunk lies in two or three
	// segments, worked on in place.
	src := randomNormalBF16(rng, 1<<20+2*4096+33, 1)
	requireSegmentsRoundTrip(t, rng, enc, dec, src, BF16, 3072, 3072)
	// Escapes in every chunk, and the raw fallback.
	cb, err := DefaultCodebook(BF16)
	require.NoError(t, err)
	for _, p := range []float64{0.01, 0.3, 1} {
		src := bf16With(rng, cb, 3*4096+64*5+3, p)
		requireSegmentsRoundTrip(t, rng, enc, dec, src, BF16, 3072, 1)
		requireSegmentsRoundTrip(t, rng, enc, dec, src, BF16, 3072, 64)
		requireSegmentsRoundTrip(t, rng, enc, dec, src, BF16, 200, 64)
	}
	// Other dtypes (the generic kernels) and raw dtypes.
	for _, dt := range []DType{FP16, FP32, FP8E5M2, Int8, Int32} {
		src := make([]byte, dt.Size()*(2*4096+77))
		for i := range src {
			src[i] = byte(rng.IntN(3)) * 0x11
		}
		requireSegmentsRoundTrip(t, rng, enc, dec, src, dt, 1500, 1)
		requireSegmentsRoundTrip(t, rng, enc, dec, src, dt, 1500, 64)
	}
}

func TestSegmentsErrors(t *testing.T) {
	enc, dec := newCodecs(t)
	_, err := enc.EncodeSegments(nil, [][]byte{make([]byte, 4), make([]byte, 3)}, BF16)
	require.ErrorIs(t, err, ErrSize)
	frame, err := enc.EncodeSegments(nil, [][]byte{make([]byte, 4), make([]byte, 6)}, BF16)
	require.NoError(t, err)
	_, err = dec.DecodeSegments([][]byte{make([]byte, 4), make([]byte, 4)}, frame)
	require.ErrorIs(t, err, ErrShortBuffer)
	_, err = dec.DecodeSegments([][]byte{make([]byte, 5), make([]byte, 5)}, frame)
	require.ErrorIs(t, err, ErrSize)
	_, err = dec.DecodeSegments([][]byte{make([]byte, 10)}, frame[:len(frame)-1])
	require.ErrorIs(t, err, ErrTruncated)
}

func TestSegmentsNoAllocationsWhenWarm(t *testing.T) {
	rng := rand.New(rand.NewPCG(43, 44))
	src := randomNormalBF16(rng, 1<<20, 1)
	segs, _ := splitAt(rng, src, 2, 3072, 64)
	enc, dec := newCodecs(t)
	frame := make([]byte, 0, MaxEncodedLen(len(src)))
	var err error
	frame, err = enc.EncodeSegments(frame[:0], segs, BF16)
	require.NoError(t, err)
	_, err = dec.DecodeSegments(segs, frame)
	require.NoError(t, err)
	allocs := testing.AllocsPerRun(10, func() {
		frame, _ = enc.EncodeSegments(frame[:0], segs, BF16)
		frame, _, _ = enc.EncodeSegmentsCRC(frame[:0], segs, BF16)
		_, _ = dec.DecodeSegments(segs, frame)
	})
	require.Zero(t, allocs)
	require.Equal(t, src, concat(segs))
}

// TestSegmentsPrefetchStretches: segments whose sizes make the kernels' prefetch stretches (segments.ahead) end
// at every kind of place: inside a chunk, at an unaligned segment further on (rounded up to a kernel step),
// on empty and one-element segments, at the last element, with escapes inside stretches split by them.
func TestSegmentsPrefetchStretches(t *testing.T) {
	rng := rand.New(rand.NewPCG(47, 48))
	enc, dec := newCodecs(t)
	cb, err := DefaultCodebook(BF16)
	require.NoError(t, err)
	for _, sizes := range [][]int{
		{3072},                    // the paged cache's blocks
		{64, 3072, 128, 4096},     // aligned, shorter and longer than prefetchAhead
		{3072, 3072, 1, 3071},     // aligned chunks, then unaligned segments ahead of them
		{0, 64, 0, 1, 6144, 4095}, // empty, tiny, exactly prefetchAhead, odd
		{8192, 64, 3, 61},
	} {
		for _, n := range []int{64, 3072, 4096 + 64, 3*4096 + 2*3072 + 64, 1<<18 + 7} {
			for _, p := range []float64{0, 0.002, 0.3} {
				src := bf16With(rng, cb, n, p)
				var segs [][]byte
				for off, j := 0, 0; off < len(src); j++ {
					k := min(2*sizes[j%len(sizes)], len(src)-off)
					segs = append(segs, src[off:off+k:off+k])
					off += k
				}
				want, err := enc.Encode(nil, src, BF16)
				require.NoError(t, err)
				got, crc, err := enc.EncodeSegmentsCRC(nil, segs, BF16)
				require.NoError(t, err)
				require.Equal(t, want, got, "%d elements in segments of %v, escape rate %g", n, sizes, p)
				require.Equal(t, crc32.Checksum(want, crc32.MakeTable(crc32.Castagnoli)), crc)
				out := make([]byte, len(src))
				var outSegs [][]byte
				for _, s := range segs {
					o := len(concat(outSegs))
					outSegs = append(outSegs, out[o:o+len(s):o+len(s)])
				}
				_, err = dec.DecodeSegments(outSegs, got)
				require.NoError(t, err)
				require.Equal(t, src, out, "%d elements in segments of %v, escape rate %g", n, sizes, p)
			}
		}
	}
}

// EncodeSegmentsWithCRC writes the frame EncodeWith writes for the concatenation, with its CRC-32C, whatever
// the encoder's own codebook or mode; a bad codebook is refused.
func TestSegmentsWithCodebook(t *testing.T) {
	rng := rand.New(rand.NewPCG(43, 44))
	src := randomNormalBF16(rng, 3*4096+100, 30) // exponents past the built-in codebook's range escape with it
	cb, err := Calibrate(BF16, DefaultBits, src)
	require.NoError(t, err)
	segs, _ := splitAt(rng, src, 2, 3072, 64)
	for _, enc := range []*Encoder{must(NewEncoder()), must(NewEncoder(WithMode(ModeHighRatio)))} {
		want, err := enc.EncodeWith(nil, src, cb)
		require.NoError(t, err)
		got, crc, err := enc.EncodeSegmentsWithCRC([]byte("prefix"), segs, cb)
		require.NoError(t, err)
		require.Equal(t, want, got[6:])
		require.Equal(t, crc32.Checksum(want, crc32.MakeTable(crc32.Castagnoli)), crc, "CRC-32C of the frame")
		h, err := ParseHeader(want)
		require.NoError(t, err)
		require.False(t, h.Entropy)
		builtin, err := enc.Encode(nil, src, BF16)
		require.NoError(t, err)
		if enc.Mode() == ModeFast {
			require.Less(t, len(want), len(builtin), "the calibrated codebook codes this input better")
		}
	}
	_, _, err = must(NewEncoder()).EncodeSegmentsWithCRC(nil, segs, &Codebook{DType: BF16, Bits: 4, Exponents: []uint8{1, 1}})
	require.ErrorIs(t, err, ErrCodebook)
}
