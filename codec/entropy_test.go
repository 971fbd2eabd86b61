package codec

import (
	"encoding/binary"
	"hash/crc32"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"

	"github.com/stretchr/testify/require"
)

// The reference below follows FORMAT.md's text literally, with none of the encoder's shortcuts: it builds the
// canonical codes by sorting, each lane's bits as a list, and the byte order by running the decoder's loop. The
// encoder's frames must match it byte for byte.

// refCodes returns the canonical code of each symbol (ESC last) of lengths.
func refCodes(lengths []uint8) []uint32 {
	type sl struct{ sym, len int }
	var syms []sl
	for s, l := range lengths {
		if l > 0 {
			syms = append(syms, sl{s, int(l)}) // ESC is the last symbol: it sorts after exponents of its length
		}
	}
	sort.SliceStable(syms, func(i, j int) bool {
		if syms[i].len != syms[j].len {
			return syms[i].len < syms[j].len
		}
		return syms[i].sym < syms[j].sym
	})
	codes := make([]uint32, len(lengths))
	code, prevLen := uint32(0), 0
	for i, s := range syms {
		if i > 0 {
			code = (code + 1) << (s.len - prevLen)
		}
		codes[s.sym] = code
		prevLen = s.len
	}
	return codes
}

// refStream is the exponent stream of one chunk, built as FORMAT.md describes it.
func refStream(t testing.TB, exps []byte, lengths []uint8, eb int) []byte {
	codes := refCodes(lengths)
	esc := 1 << eb
	var laneBits [lanes][]byte
	var syms [lanes][]int // each lane's code lengths, negative for ESC
	put := func(l int, v uint32, n int) {
		for i := n - 1; i >= 0; i-- {
			laneBits[l] = append(laneBits[l], byte(v>>i&1))
		}
	}
	for j, x := range exps {
		l := j % lanes
		if lengths[x] > 0 {
			put(l, codes[x], int(lengths[x]))
			syms[l] = append(syms[l], int(lengths[x]))
		} else {
			require.Positive(t, lengths[esc], "exponent %d without a code and no ESC", x)
			put(l, codes[esc], int(lengths[esc]))
			put(l, uint32(x), eb)
			syms[l] = append(syms[l], -int(lengths[esc]))
		}
	}
	var out []byte
	var avail, taken [lanes]int
	take := func(l int) {
		var b byte
		for i := range 8 {
			k := 8*taken[l] + i
			b <<= 1
			if k < len(laneBits[l]) {
				b |= laneBits[l][k]
			}
		}
		out = append(out, b)
		taken[l]++
		avail[l] += 8
	}
	for s := 0; s*lanes < len(exps); s++ {
		active := min(lanes, len(exps)-s*lanes)
		for l := range active {
			if avail[l] < 8 {
				take(l)
			}
		}
		for l := range active {
			c := syms[l][s]
			if c < 0 {
				c = -c
			}
			avail[l] -= c
		}
		for l := range active {
			if syms[l][s] < 0 {
				if avail[l] < eb {
					take(l)
				}
				avail[l] -= eb
			}
		}
	}
	for l := range lanes {
		require.GreaterOrEqual(t, 8*taken[l], len(laneBits[l]), "lane %d's bits not all taken", l)
	}
	return out
}

// refEntropyStreams checks an entropy frame's code table, chunk table and streams against the reference for
// the input src.
func requireReferenceStreams(t testing.TB, frame, src []byte) {
	t.Helper()
	h, err := ParseHeader(frame)
	require.NoError(t, err)
	require.True(t, h.Entropy)
	lay := h.Layout()
	dt := h.DType
	eb := dt.ExponentBits()
	g := geometry(dt)
	lengths := make([]uint8, 1<<eb+1)
	maxLen, err := readCodeTable(frame[lay.Codebook:lay.Codebook+uint64(h.CodebookLen)], dt, lengths)
	require.NoError(t, err)
	require.Equal(t, int(h.CodeBits), maxLen)
	n := int(h.Elements)
	var want []byte
	var esc uint64
	for c := 0; c < int(lay.Chunks); c++ {
		i0, i1 := chunkBounds(c, n, h.ChunkLog2)
		require.Equal(t, uint32(len(want)), binary.LittleEndian.Uint32(frame[lay.Table+4*uint64(c):]), "chunk %d start", c)
		exps := make([]byte, i1-i0)
		for j := range exps {
			exps[j] = byte(loadElem(src[(i0+j)*g.size:], g.size) >> g.expShift & g.expMask)
			if lengths[exps[j]] == 0 {
				esc++
			}
		}
		want = append(want, refStream(t, exps, lengths, eb)...)
	}
	require.Equal(t, want, frame[lay.Codes:lay.End], "exponent streams differ from the reference")
	require.Equal(t, esc, h.Escapes)
}

func newHighRatio(t testing.TB, opts ...EOption) (*Encoder, *Decoder) {
	t.Helper()
	return newCodecs(t, append([]EOption{WithMode(ModeHighRatio)}, opts...)...)
}

// testTensor returns n elements of dt with realistic exponents: normal values of the given scale.
func testTensor(rng *rand.Rand, dt DType, n int, scale float64) []byte {
	b := make([]byte, n*dt.Size())
	for i := range n {
		f := rng.NormFloat64() * scale
		switch dt {
		case BF16:
			binary.LittleEndian.PutUint16(b[2*i:], uint16(math.Float32bits(float32(f))>>16))
		case FP16:
			binary.LittleEndian.PutUint16(b[2*i:], float32ToHalf(float32(f)))
		case FP32:
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(float32(f)))
		case FP8E5M2:
			b[i] = uint8(float32ToHalf(float32(f)) >> 8)
		case FP8E4M3:
			b[i] = toE4M3(f)
		default:
			b[i] = byte(rng.Uint32())
		}
	}
	return b
}

func TestEntropyReferenceStreams(t *testing.T) {
	rng := rand.New(rand.NewPCG(61, 62))
	enc, dec := newHighRatio(t, WithEncoderConcurrency(3))
	for _, dt := range []DType{BF16, FP16, FP32, FP8E5M2, FP8E4M3} {
		for _, n := range []int{1, 31, 32, 33, 1000, maxEntropyChunk - 1, maxEntropyChunk, maxEntropyChunk + 1, 3*maxEntropyChunk + 77} {
			src := testTensor(rng, dt, n, 0.3)
			frame, err := enc.Encode(nil, src, dt)
			require.NoError(t, err)
			h, err := ParseHeader(frame)
			require.NoError(t, err)
			if !h.Raw {
				requireReferenceStreams(t, frame, src)
			}
			out, _, err := dec.Decode(nil, frame)
			require.NoError(t, err)
			require.Equal(t, src, out, "%s n=%d", dt, n)
		}
	}
}

var _ = crc32.Checksum
var _ = slices.Equal[[]byte]

// toE4M3 converts to fp8 e4m3fn with round-to-nearest-even, saturating at ±448 (as vLLM's quantisation clamps
// before its cast).
func toE4M3(f float64) byte {
	var sign byte
	if math.Signbit(f) {
		sign, f = 0x80, -f
	}
	switch {
	case math.IsNaN(f):
		return sign | 0x7F
	case f >= 448:
		return sign | 0x7E
	}
	e := math.Floor(math.Log2(f))
	if f == 0 || e < -6 { // subnormal: units of 2^-9; 8 units is the smallest normal, whose bits are also 8
		return sign | byte(math.RoundToEven(f*512))
	}
	m := math.RoundToEven((f/math.Exp2(e) - 1) * 8)
	if m == 8 {
		e, m = e+1, 0
	}
	biased := int(e) + 7
	if biased > 15 || (biased == 15 && m == 7) {
		return sign | 0x7E
	}
	return sign | byte(biased)<<3 | byte(m)
}
