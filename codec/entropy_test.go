package codec

import (
	"encoding/binary"
	"hash/crc32"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"testing"
	"unsafe"

	"github.com/splitzip/splitzip/internal/fp8"
	"github.com/splitzip/splitzip/internal/kvtile"
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
			b[i] = fp8.E4M3(f)
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
		for _, n := range []int{1, 31, 32, 33, 1000, maxEntropyChunk - 1, maxEntropyChunk, maxEntropyChunk + 1, 3*maxEntropyChunk + 77, sampleMin + 77} {
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

// roundTripMode encodes src with enc and checks the frame and the round trip (roundTrip), and that the frame's
// version and flags match what was asked for.
func roundTripMode(t *testing.T, enc *Encoder, dec *Decoder, src []byte, dt DType, checksum bool) Header {
	t.Helper()
	h := roundTrip(t, enc, dec, src, dt)
	require.Equal(t, checksum, h.Checksum)
	if h.Entropy || h.Checksum {
		require.Equal(t, uint8(2), h.Version)
	} else {
		require.Equal(t, uint8(1), h.Version)
	}
	if enc.Mode() == ModeFast {
		require.False(t, h.Entropy)
	}
	return h
}

func TestModesDTypesSizes(t *testing.T) {
	rng := rand.New(rand.NewPCG(63, 64))
	for _, mode := range []Mode{ModeFast, ModeHighRatio} {
		for _, checksum := range []bool{false, true} {
			for _, conc := range []int{1, 4} {
				enc, dec := newCodecs(t, WithMode(mode), WithChecksum(checksum), WithEncoderConcurrency(conc))
				chunk := 1 << DefaultChunk
				if mode == ModeHighRatio {
					chunk = maxEntropyChunk
				}
				for _, dt := range []DType{BF16, FP16, FP32, FP8E5M2, FP8E4M3} {
					sizes := []int{0, 1, 31, 32, 33, chunk - 1, chunk, chunk + 1}
					if dt == BF16 || conc > 1 {
						sizes = append(sizes, 1<<20/dt.Size()*3+5) // large: several goroutines
					}
					for _, n := range sizes {
						src := testTensor(rng, dt, n, 0.5)
						h := roundTripMode(t, enc, dec, src, dt, checksum)
						if n >= 1000 {
							coded := dt.CodedIn(mode)
							require.Equal(t, !coded, h.Raw, "%s %s n=%d", mode, dt, n)
							require.Equal(t, coded && mode == ModeHighRatio, h.Entropy, "%s %s n=%d", mode, dt, n)
						}
					}
				}
			}
		}
	}
}

// TestHighRatioShapes: exact zeros, one exponent, wide exponent ranges, every exponent, random bytes.
func TestHighRatioShapes(t *testing.T) {
	rng := rand.New(rand.NewPCG(65, 66))
	enc, dec := newHighRatio(t)
	n := 3*maxEntropyChunk + 100
	zeros := make([]byte, 2*n)
	h := roundTrip(t, enc, dec, zeros, BF16)
	require.True(t, h.Entropy)
	require.Equal(t, uint8(1), h.CodeBits) // one symbol: a 1-bit code
	require.Zero(t, h.Escapes)
	require.Greater(t, h.Ratio(), 1.75)
	requireReferenceStreams(t, mustEncode(t, enc, zeros, BF16), zeros)

	// Zeros with a sprinkling of ±0, denormals and huge values: a very skewed histogram.
	mixed := make([]byte, 2*n)
	for i := 0; i < n; i += 1 + rng.IntN(50) {
		binary.LittleEndian.PutUint16(mixed[2*i:], uint16(rng.Uint32()))
	}
	h = roundTrip(t, enc, dec, mixed, BF16)
	require.True(t, h.Entropy)
	requireReferenceStreams(t, mustEncode(t, enc, mixed, BF16), mixed)

	// Values spread over a wide range of magnitudes: many exponents, long codes, escapes for the rarest.
	wide := make([]byte, 2*n)
	for i := range n {
		f := float32(rng.NormFloat64() * math.Exp2(float64(rng.IntN(60)-30)))
		binary.LittleEndian.PutUint16(wide[2*i:], uint16(math.Float32bits(f)>>16))
	}
	h = roundTrip(t, enc, dec, wide, BF16)
	require.True(t, h.Entropy)
	require.Equal(t, uint8(MaxCodeLen), h.CodeBits)
	requireReferenceStreams(t, mustEncode(t, enc, wide, BF16), wide)

	// All 256 exponents, most of them rare: the table must stay within 8 bits and still code every one.
	all := testTensor(rng, BF16, n, 0.5)
	for x := range 256 {
		i := rng.IntN(n)
		v := binary.LittleEndian.Uint16(all[2*i:])
		binary.LittleEndian.PutUint16(all[2*i:], v&0x807F|uint16(x)<<7)
	}
	h = roundTrip(t, enc, dec, all, BF16)
	require.True(t, h.Entropy)
	require.Positive(t, h.Escapes, "rare exponents go through ESC")
	requireReferenceStreams(t, mustEncode(t, enc, all, BF16), all)

	// Every exponent equally often: 8 bits an exponent at best, so the frame is raw.
	uniform := make([]byte, 2*n)
	for i := range n {
		binary.LittleEndian.PutUint16(uniform[2*i:], uint16(rng.Uint32()))
	}
	for _, dt := range []DType{BF16, FP16, FP32, FP8E5M2, FP8E4M3} {
		h = roundTrip(t, enc, dec, uniform[:len(uniform)/dt.Size()*dt.Size()], dt)
		require.True(t, h.Raw, "random bytes as %s must fall back to raw", dt)
	}
}

func mustEncode(t testing.TB, enc *Encoder, src []byte, dt DType) []byte {
	t.Helper()
	frame, err := enc.Encode(nil, src, dt)
	require.NoError(t, err)
	return frame
}

// TestGivenTable: a table learned on other data, lacking codes for some of this data's exponents: those go
// through ESC; a table that can code neither them nor ESC is refused up front.
func TestGivenTable(t *testing.T) {
	rng := rand.New(rand.NewPCG(67, 68))
	learn := testTensor(rng, BF16, 50000, 1)
	h, err := NewHistogram(BF16)
	require.NoError(t, err)
	require.NoError(t, h.Add(learn))
	table, err := h.CodeTable()
	require.NoError(t, err)
	require.True(t, table.CodesAll())
	require.Positive(t, table.Escape())

	// Data at a very different scale: most exponents have no code of their own.
	src := testTensor(rng, BF16, 40000, 1e-6)
	enc, dec := newHighRatio(t, WithCodeTable(table))
	frame := mustEncode(t, enc, src, BF16)
	fh, err := ParseHeader(frame)
	require.NoError(t, err)
	if !fh.Raw {
		require.Positive(t, fh.Escapes)
		requireReferenceStreams(t, frame, src)
	}
	out, _, err := dec.Decode(nil, frame)
	require.NoError(t, err)
	require.Equal(t, src, out)

	// Similar data: coded with the given table, a few escapes, reference bytes.
	src = testTensor(rng, BF16, 40000, 1)
	src[1] = 0x7F // exponent 0xFE: ESC
	frame = mustEncode(t, enc, src, BF16)
	fh, err = ParseHeader(frame)
	require.NoError(t, err)
	require.True(t, fh.Entropy)
	require.Positive(t, fh.Escapes)
	requireReferenceStreams(t, frame, src)
	out, _, err = dec.Decode(nil, frame)
	require.NoError(t, err)
	require.Equal(t, src, out)

	// EncodeWithTable on a fast-mode encoder; the same bytes.
	fast, _ := newCodecs(t)
	frame2, err := fast.EncodeWithTable(nil, src, table)
	require.NoError(t, err)
	require.Equal(t, frame, frame2)

	// A table with no ESC that misses exponents cannot encode everything: refused.
	noESC := slices.Clone(table.Lengths)
	noESC[len(noESC)-1] = 0
	partial, err := NewCodeTable(BF16, noESC)
	require.NoError(t, err)
	require.False(t, partial.CodesAll())
	_, err = NewEncoder(WithMode(ModeHighRatio), WithCodeTable(partial))
	require.ErrorIs(t, err, ErrCodebook)
	_, err = enc.EncodeWithTable(nil, src, partial)
	require.ErrorIs(t, err, ErrCodebook)
	_, err = enc.EncodeWithTable(nil, src[:4], &CodeTable{DType: FP16, Lengths: table.Lengths})
	require.ErrorIs(t, err, ErrCodebook)
	// A table for another dtype than the data.
	fp16, err := (&Histogram{DType: FP16, Counts: [256]uint64{3: 5, 4: 1}, Total: 6}).CodeTable()
	require.NoError(t, err)
	_, err = fast.EncodeWithTable(nil, src, fp16) // src is bf16 bytes, but read as fp16 they are valid
	require.NoError(t, err)
	_, err = fast.EncodeWithTable(nil, src[:3], fp16)
	require.ErrorIs(t, err, ErrSize)
}

func TestChecksum(t *testing.T) {
	rng := rand.New(rand.NewPCG(69, 70))
	src := testTensor(rng, BF16, 70000, 1)
	random := make([]byte, 20000)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	for _, c := range []struct {
		name string
		mode Mode
		src  []byte
		dt   DType
	}{
		{"fast", ModeFast, src, BF16},
		{"entropy", ModeHighRatio, src, BF16},
		{"raw", ModeHighRatio, random, BF16},
		{"raw dtype", ModeFast, random, Int8},
	} {
		enc, dec := newCodecs(t, WithMode(c.mode), WithChecksum(true))
		frame := mustEncode(t, enc, c.src, c.dt)
		h, err := ParseHeader(frame)
		require.NoError(t, err)
		require.True(t, h.Checksum, c.name)
		require.Equal(t, uint8(2), h.Version)
		require.Equal(t, crc32.Checksum(frame[HeaderSize:], crc32.MakeTable(crc32.Castagnoli)), h.PayloadCRC)
		out, _, err := dec.Decode(nil, frame)
		require.NoError(t, err)
		require.Equal(t, c.src, out)
		for _, at := range []int{HeaderSize, HeaderSize + 100, len(frame) / 2, len(frame) - 1} {
			bad := slices.Clone(frame)
			bad[at] ^= 0x10
			_, _, err = dec.Decode(nil, bad)
			require.ErrorIs(t, err, ErrChecksum, "%s: byte %d flipped", c.name, at)
		}
		// The same frame without the checksum: the checksum only adds the flag and the CRC.
		plain, _ := newCodecs(t, WithMode(c.mode))
		pf := mustEncode(t, plain, c.src, c.dt)
		require.Equal(t, pf[HeaderSize:], frame[HeaderSize:], c.name)
		// EncodeSegmentsCRC gives the CRC of the frame with its checksum.
		segs := [][]byte{c.src[:len(c.src)/2], c.src[len(c.src)/2:]}
		got, crc, err := enc.EncodeSegmentsCRC(nil, segs, c.dt)
		require.NoError(t, err)
		require.Equal(t, frame, got)
		require.Equal(t, crc32.Checksum(frame, crc32.MakeTable(crc32.Castagnoli)), crc)
	}
}

func TestHeaderVersions(t *testing.T) {
	rng := rand.New(rand.NewPCG(71, 72))
	src := testTensor(rng, BF16, 5000, 1)
	v1 := mustEncode(t, mustEnc(NewEncoder()), src, BF16)
	v2 := mustEncode(t, mustEnc(NewEncoder(WithMode(ModeHighRatio))), src, BF16)
	reseal := func(f []byte, mutate func(b []byte)) []byte {
		b := slices.Clone(f)
		mutate(b)
		binary.LittleEndian.PutUint32(b[60:], crc32.Checksum(b[:60], crc32.MakeTable(crc32.Castagnoli)))
		return b
	}
	cases := map[string][]byte{
		"v1 with the entropy flag":  reseal(v1, func(b []byte) { b[6] |= flagEntropy }),
		"v1 with the checksum flag": reseal(v1, func(b []byte) { b[6] |= flagChecksum }),
		"v2 without v2 flags":       reseal(v1, func(b []byte) { b[4] = 2 }),
		"raw and entropy":           reseal(v2, func(b []byte) { b[6] |= flagRaw }),
		"unknown flag":              reseal(v2, func(b []byte) { b[6] |= 1 << 3 }),
		"reserved bytes 56-59":      reseal(v2, func(b []byte) { b[57] = 1 }),
		"chunk 2^9":                 reseal(v2, func(b []byte) { b[24] = 9 }),
		"chunk 2^17":                reseal(v2, func(b []byte) { b[24] = 17 }),
		"L = 0":                     reseal(v2, func(b []byte) { b[7] = 0 }),
		"L = 9":                     reseal(v2, func(b []byte) { b[7] = 9 }),
		"code table too long":       reseal(v2, func(b []byte) { binary.LittleEndian.PutUint16(b[26:], 200) }),
		"code table too short":      reseal(v2, func(b []byte) { binary.LittleEndian.PutUint16(b[26:], 2) }),
		"escapes > elements":        reseal(v2, func(b []byte) { binary.LittleEndian.PutUint64(b[16:], 5001) }),
		"streams too long":          reseal(v2, func(b []byte) { binary.LittleEndian.PutUint64(b[40:], 10001) }),
		"streams too short":         reseal(v2, func(b []byte) { binary.LittleEndian.PutUint64(b[40:], 31) }),
		"residual width":            reseal(v2, func(b []byte) { b[25] = 7 }),
		"e4m3 in a v1 coded frame":  reseal(v1, func(b []byte) { b[5] = byte(FP8E4M3) }),
		"int8 entropy frame":        reseal(v2, func(b []byte) { b[5] = byte(Int8) }),
	}
	for name, f := range cases {
		_, err := ParseHeader(f)
		require.ErrorIs(t, err, ErrCorrupt, name)
	}
}

// TestCorruptEntropy: damage to an entropy frame's code table, chunk table and streams is reported as
// ErrCorrupt, with no panic.
func TestCorruptEntropy(t *testing.T) {
	rng := rand.New(rand.NewPCG(73, 74))
	src := testTensor(rng, BF16, 3*maxEntropyChunk+500, 1)
	src[1] = 0x7F // an escape
	enc, dec := newHighRatio(t)
	frame := mustEncode(t, enc, src, BF16)
	h, err := ParseHeader(frame)
	require.NoError(t, err)
	require.True(t, h.Entropy)
	require.Positive(t, h.Escapes)
	lay := h.Layout()
	ct := lay.Codebook
	table := func(c int) uint64 { return lay.Table + 4*uint64(c) }
	cases := map[string]func(f []byte){
		"lo > hi":                func(f []byte) { f[ct], f[ct+1] = f[ct+1]+1, f[ct] },
		"range changes length":   func(f []byte) { f[ct+1]++ },
		"lo without a code":      func(f []byte) { f[ct+2] &= 0x0F },
		"oversubscribed":         func(f []byte) { f[ct+2] = 0x11; f[ct+3] = 0x11 },
		"length over L":          func(f []byte) { f[ct+3] = f[ct+3]&0xF0 | 9 },
		"longest length below L": func(f []byte) { f[7]-- },
		"unused nibble":          func(f []byte) { f[ct+uint64(h.CodebookLen)-1] |= 0xF0 },
		"chunk table start":      func(f []byte) { binary.LittleEndian.PutUint32(f[table(0):], 1) },
		"chunk table order":      func(f []byte) { binary.LittleEndian.PutUint32(f[table(2):], 1) },
		"chunk past streams":     func(f []byte) { binary.LittleEndian.PutUint32(f[table(3):], uint32(h.CodesLen)+1) },
		"chunk boundary moved": func(f []byte) {
			binary.LittleEndian.PutUint32(f[table(1):], binary.LittleEndian.Uint32(f[table(1):])+1)
		},
		"nonzero padding": func(f []byte) { f[lay.End-1] |= 1 },
		"escape count":    func(f []byte) { binary.LittleEndian.PutUint64(f[16:], h.Escapes+1) },
		"stream bits":     func(f []byte) { f[lay.Codes+5] ^= 0xFF },
	}
	for name, damage := range cases {
		bad := slices.Clone(frame)
		damage(bad)
		binary.LittleEndian.PutUint32(bad[60:], crc32.Checksum(bad[:60], crc32.MakeTable(crc32.Castagnoli)))
		out, _, err := dec.Decode(nil, bad)
		if name == "stream bits" && err == nil {
			// Flipped code bits may still decode (to other exponents); then the output differs.
			require.NotEqual(t, src, out)
			continue
		}
		require.ErrorIs(t, err, ErrCorrupt, name)
	}
	// A stream cut short: a shorter streams section (payload and codesLen agree).
	bad := slices.Clone(frame[:len(frame)-3])
	binary.LittleEndian.PutUint64(bad[32:], h.PayloadLen-3)
	binary.LittleEndian.PutUint64(bad[40:], h.CodesLen-3)
	binary.LittleEndian.PutUint32(bad[60:], crc32.Checksum(bad[:60], crc32.MakeTable(crc32.Castagnoli)))
	_, _, err = dec.Decode(nil, bad)
	require.ErrorIs(t, err, ErrCorrupt)
}

// TestLimitedHuffman: package-merge gives codes no longer than MaxCodeLen that are optimal: without the limit
// binding, exactly as cheap as plain Huffman; with it, complete (Kraft sum 1).
func TestLimitedHuffman(t *testing.T) {
	rng := rand.New(rand.NewPCG(75, 76))
	var b tableBuilder
	for trial := range 300 {
		n := 2 + rng.IntN(255)
		if trial%3 == 0 {
			n = 2 + rng.IntN(20)
		}
		w := make([]uint64, n)
		for i := range w {
			switch trial % 4 {
			case 0:
				w[i] = 1 + uint64(rng.IntN(1000))
			case 1:
				w[i] = 1 + uint64(math.Exp(rng.Float64()*20)) // wide spread: the limit binds
			default:
				w[i] = 1 + uint64(rng.IntN(3))
			}
		}
		for i := range n {
			b.leaves[i] = pmItem{w: w[i], sym: int16(i)}
		}
		b.limited(n)
		lens := b.lens[:n]
		kraft := 0
		for _, l := range lens {
			require.True(t, l >= 1 && l <= MaxCodeLen)
			kraft += 1 << (MaxCodeLen - l)
		}
		require.Equal(t, 1<<MaxCodeLen, kraft, "complete code")
		hl := huffmanLengths(w)
		var cost, hcost uint64
		maxH := 0
		for i := range n {
			cost += w[i] * uint64(lens[i])
			hcost += w[i] * uint64(hl[i])
			maxH = max(maxH, hl[i])
		}
		if maxH <= MaxCodeLen {
			require.Equal(t, hcost, cost, "trial %d: unconstrained Huffman fits, package-merge must match it", trial)
		} else {
			require.GreaterOrEqual(t, cost, hcost)
		}
	}
}

// huffmanLengths is plain Huffman (no limit), by repeatedly merging the two lightest trees.
func huffmanLengths(w []uint64) []int {
	type node struct {
		w    uint64
		syms []int
	}
	var nodes []node
	for i, x := range w {
		nodes = append(nodes, node{x, []int{i}})
	}
	lens := make([]int, len(w))
	for len(nodes) > 1 {
		sort.SliceStable(nodes, func(i, j int) bool { return nodes[i].w < nodes[j].w })
		a, b := nodes[0], nodes[1]
		for _, s := range append(a.syms, b.syms...) {
			lens[s]++
		}
		nodes = append([]node{{a.w + b.w, append(append([]int{}, a.syms...), b.syms...)}}, nodes[2:]...)
	}
	return lens
}

func TestCodeTableAPI(t *testing.T) {
	_, err := NewCodeTable(BF16, make([]uint8, 10))
	require.ErrorIs(t, err, ErrCodebook)
	_, err = NewCodeTable(BF16, make([]uint8, 257))
	require.ErrorIs(t, err, ErrCodebook, "no code at all")
	_, err = NewCodeTable(Int8, make([]uint8, 2))
	require.ErrorIs(t, err, ErrCodebook)
	over := make([]uint8, 257)
	over[0], over[1], over[2] = 1, 1, 1
	_, err = NewCodeTable(BF16, over)
	require.ErrorIs(t, err, ErrCodebook, "Kraft sum over 1")
	long := make([]uint8, 257)
	long[0] = 9
	_, err = NewCodeTable(BF16, long)
	require.ErrorIs(t, err, ErrCodebook)
	_, err = (&Histogram{DType: BF16}).CodeTable()
	require.ErrorIs(t, err, ErrCodebook)

	for _, dt := range []DType{BF16, FP16, FP32, FP8E5M2, FP8E4M3} {
		h, err := NewHistogram(dt)
		require.NoError(t, err)
		require.NoError(t, h.Add(testTensor(rand.New(rand.NewPCG(77, 78)), dt, 20000, 1)))
		table, err := h.CodeTable()
		require.NoError(t, err)
		require.NoError(t, table.Validate())
		require.Len(t, table.Lengths, 1<<dt.ExponentBits()+1)
		require.LessOrEqual(t, table.MaxLen(), MaxCodeLen)
		require.True(t, table.CodesAll())
		bits, ok := table.Bits(h)
		require.True(t, ok)
		require.GreaterOrEqual(t, float64(bits), h.Entropy()*float64(h.Total)-1e-6)
		require.Less(t, float64(bits), (h.Entropy()+1)*float64(h.Total))
		path := t.TempDir() + "/table.json"
		require.NoError(t, table.Save(path))
		back, err := LoadCodeTable(path)
		require.NoError(t, err)
		require.True(t, table.Equal(back))
		require.Equal(t, table.Samples, back.Samples)
	}
	var ct CodeTable
	require.ErrorIs(t, ct.UnmarshalJSON([]byte(`{"format":"splitzip-codebook","version":1}`)), ErrCodebook)
	require.ErrorIs(t, ct.UnmarshalJSON([]byte(`{"format":"splitzip-codetable","version":1,"dtype":"fp16","lengths":[1,1]}`)), ErrCodebook)
	require.ErrorIs(t, ct.UnmarshalJSON([]byte(`{"format":"splitzip-codetable","version":1,"dtype":"fp8_e4m3","lengths":[1,1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,99]}`)), ErrCodebook)
	require.NoError(t, ct.UnmarshalJSON([]byte(`{"format":"splitzip-codetable","version":1,"dtype":"fp8_e4m3","lengths":[1,2,0,0,0,0,0,0,0,0,0,0,0,0,0,0,2]}`)))
	require.True(t, ct.CodesAll())
	require.False(t, ct.Equal(nil))

	_, err = ParseMode("turbo")
	require.ErrorIs(t, err, ErrOption)
	for _, m := range []Mode{ModeFast, ModeHighRatio} {
		back, err := ParseMode(m.String())
		require.NoError(t, err)
		require.Equal(t, m, back)
	}
	_, err = NewEncoder(WithMode(Mode(7)))
	require.ErrorIs(t, err, ErrOption)
}

func TestHighRatioSegments(t *testing.T) {
	rng := rand.New(rand.NewPCG(79, 80))
	for _, checksum := range []bool{false, true} {
		enc, dec := newHighRatio(t, WithChecksum(checksum))
		for _, n := range []int{0, 1, 33, maxEntropyChunk + 1, 1<<20 + 3*maxEntropyChunk + 33} {
			src := testTensor(rng, BF16, n, 1)
			for _, mean := range []int{100, 3072, 20000} {
				requireSegmentsRoundTrip(t, rng, enc, dec, src, BF16, mean, 1)
				requireSegmentsRoundTrip(t, rng, enc, dec, src, BF16, mean, 64)
			}
		}
		for _, dt := range []DType{FP16, FP32, FP8E5M2, FP8E4M3} {
			src := testTensor(rng, dt, 2*maxEntropyChunk+77, 1)
			requireSegmentsRoundTrip(t, rng, enc, dec, src, dt, 1500, 1) // boundaries off residual bytes: gathered
			requireSegmentsRoundTrip(t, rng, enc, dec, src, dt, 1500, 8) // on them: coded in place
			requireSegmentsRoundTrip(t, rng, enc, dec, src, dt, 5, 8)    // pieces shorter than a word
		}
	}
}

func TestHighRatioNoAllocationsWhenWarm(t *testing.T) {
	rng := rand.New(rand.NewPCG(81, 82))
	src := testTensor(rng, BF16, 1<<20, 1)
	segs, _ := splitAt(rng, src, 2, 3072, 64)
	for _, checksum := range []bool{false, true} {
		enc, dec := newHighRatio(t, WithChecksum(checksum))
		frame := make([]byte, 0, MaxEncodedLen(len(src)))
		out := make([]byte, 0, len(src))
		run := func() {
			frame, _ = enc.Encode(frame[:0], src, BF16)
			out, _, _ = dec.Decode(out[:0], frame)
			frame, _ = enc.EncodeSegments(frame[:0], segs, BF16)
			frame, _, _ = enc.EncodeSegmentsCRC(frame[:0], segs, BF16)
			_, _ = dec.DecodeSegments(segs, frame)
		}
		run()
		require.Zero(t, testing.AllocsPerRun(10, run))
		require.Equal(t, src, out)
	}
}

func mustEnc(e *Encoder, err error) *Encoder {
	if err != nil {
		panic(err)
	}
	return e
}

// TestIncompleteCode: an incomplete code (Kraft sum < 1) is valid; a stream that reaches one of its unused
// prefixes is corrupt, in the fast steps and the checked tail alike.
func TestIncompleteCode(t *testing.T) {
	lengths := make([]uint8, 257)
	lengths[127], lengths[256] = 2, 2 // codes 00 and 01 (ESC); prefixes 1x unused
	table, err := NewCodeTable(BF16, lengths)
	require.NoError(t, err)
	for _, n := range []int{200, 5000} {
		src := make([]byte, 2*n)
		for i := range n {
			binary.LittleEndian.PutUint16(src[2*i:], 0x3F80) // 1.0: exponent 127
		}
		src[3] = 0x40 // 2.0: exponent 128, escaped
		enc, dec := newHighRatio(t, WithCodeTable(table))
		frame := mustEncode(t, enc, src, BF16)
		requireReferenceStreams(t, frame, src)
		out, _, err := dec.Decode(nil, frame)
		require.NoError(t, err)
		require.Equal(t, src, out)
		h, _ := ParseHeader(frame)
		for _, at := range []uint64{0, h.CodesLen - 1} {
			bad := slices.Clone(frame)
			bad[h.Layout().Codes+at] = 0xFF
			_, _, err = dec.Decode(nil, bad)
			require.ErrorIs(t, err, ErrCorrupt, "n=%d, stream byte %d", n, at)
		}
	}
}

// TestLargeChecksum: frames over the size from which checksums are split over goroutines.
func TestLargeChecksum(t *testing.T) {
	rng := rand.New(rand.NewPCG(83, 84))
	src := testTensor(rng, BF16, 5<<20, 1)
	enc, dec := newHighRatio(t, WithChecksum(true), WithEncoderConcurrency(4))
	frame := mustEncode(t, enc, src, BF16)
	h, err := ParseHeader(frame)
	require.NoError(t, err)
	require.Equal(t, crc32.Checksum(frame[HeaderSize:], crc32.MakeTable(crc32.Castagnoli)), h.PayloadCRC)
	out, _, err := dec.Decode(nil, frame)
	require.NoError(t, err)
	require.Equal(t, src, out)
	frame[len(frame)/3] ^= 1
	_, _, err = dec.Decode(nil, frame)
	require.ErrorIs(t, err, ErrChecksum)
}

func TestInspect(t *testing.T) {
	rng := rand.New(rand.NewPCG(85, 86))
	src := testTensor(rng, BF16, 3*maxEntropyChunk+10, 1)
	src[1] = 0x7F
	fast, _ := newCodecs(t, WithChecksum(true))
	fi, err := Inspect(mustEncode(t, fast, src, BF16))
	require.NoError(t, err)
	require.Len(t, fi.Codebook, 16)
	require.Nil(t, fi.CodeTable)
	require.Positive(t, fi.EscapeRate())
	require.InDelta(t, 4, fi.ExponentBits(), 0.01)

	enc, _ := newHighRatio(t, WithChecksum(true))
	frame := mustEncode(t, enc, src, BF16)
	fi, err = Inspect(frame)
	require.NoError(t, err)
	require.True(t, fi.Header.Entropy)
	require.NotNil(t, fi.CodeTable)
	require.NoError(t, fi.CodeTable.Validate())
	require.Equal(t, int(fi.Header.CodeBits), fi.CodeTable.MaxLen())
	require.Nil(t, fi.Codebook)
	require.Positive(t, fi.ChunkStreamMin)
	require.GreaterOrEqual(t, fi.ChunkStreamMax, fi.ChunkStreamMin)
	require.Less(t, fi.ExponentBits(), 4.0)
	// The table read back from a frame encodes the same data to the same frame.
	again, err := enc.EncodeWithTable(nil, src, fi.CodeTable)
	require.NoError(t, err)
	require.Equal(t, frame, again)

	bad := slices.Clone(frame)
	bad[len(bad)-1] ^= 1
	_, err = Inspect(bad)
	require.ErrorIs(t, err, ErrChecksum)

	raw, err := Inspect(mustEncode(t, enc, src[:20], BF16))
	require.NoError(t, err)
	require.True(t, raw.Header.Raw)
	require.Zero(t, raw.ExponentBits())
}

// TestEntropyAsmTwin: the assembly decoder and the pure-Go one agree on every dtype (exponent widths 4, 5 and
// 8), with escapes in round 2, and on damaged streams (both report a corrupt frame).
func TestEntropyAsmTwin(t *testing.T) {
	for _, path := range entropyAsmPaths(t) {
		t.Run(path, func(t *testing.T) { testEntropyAsmTwin(t, path) })
	}
}

// entropyAsmPaths lists the entropy coder's assembly paths this CPU runs, each to be tested against pure Go:
// AVX-512 where hasEntropyAsm, AVX2 wherever the CPU has it (also where the AVX-512 one is preferred), the
// latter also with the encoder's gathers where a table allows shuffles (avx2-gather).
func entropyAsmPaths(t *testing.T) []string {
	var paths []string
	if hasEntropyAsm {
		paths = append(paths, "avx512")
	}
	if cpuHasEntropyAVX2 {
		paths = append(paths, "avx2", "avx2-gather")
	}
	if len(paths) == 0 {
		t.Skip("no entropy assembly on this CPU")
	}
	return paths
}

// useEntropyPath switches the entropy coder to path ("avx512", "avx2", "avx2-gather"; anything else: pure Go)
// and returns what switches it back.
func useEntropyPath(path string) (restore func()) {
	v, v2, n := hasEntropyAsm, hasEntropyAVX2, useNarrowLookups
	hasEntropyAsm, hasEntropyAVX2 = path == "avx512", strings.HasPrefix(path, "avx2")
	useNarrowLookups = path != "avx2-gather"
	return func() { hasEntropyAsm, hasEntropyAVX2, useNarrowLookups = v, v2, n }
}

// asmOr is path where asm, else "go".
func asmOr(path string, asm bool) string {
	if asm {
		return path
	}
	return "go"
}

func testEntropyAsmTwin(t *testing.T, path string) {
	rng := rand.New(rand.NewPCG(87, 88))
	enc, dec := newHighRatio(t)
	decode := func(frame []byte, asm bool) ([]byte, error) {
		defer useEntropyPath(asmOr(path, asm))()
		out, _, err := dec.Decode(nil, frame)
		return out, err
	}
	for _, dt := range []DType{BF16, FP16, FP32, FP8E5M2, FP8E4M3} {
		for _, escRate := range []int{0, 500, 20} {
			src := testTensor(rng, dt, 2*maxEntropyChunk+1000, 0.7)
			g := geometry(dt)
			for i := 0; escRate > 0 && i < len(src)/g.size; i += 1 + rng.IntN(escRate) {
				v := loadElem(src[i*g.size:], g.size) &^ (g.expMask << g.expShift)
				storeElem(src[i*g.size:], g.size, v|uint64(rng.IntN(int(g.expMask)+1))<<g.expShift)
			}
			frame := mustEncode(t, enc, src, dt)
			h, err := ParseHeader(frame)
			require.NoError(t, err)
			if !h.Entropy {
				continue
			}
			a, err := decode(frame, true)
			require.NoError(t, err)
			require.Equal(t, src, a, "%s asm", dt)
			g2, err := decode(frame, false)
			require.NoError(t, err)
			require.Equal(t, src, g2, "%s go", dt)
			lay := h.Layout()
			for range 20 {
				bad := slices.Clone(frame)
				bad[lay.Codes+uint64(rng.IntN(int(h.CodesLen)))] ^= byte(1 + rng.IntN(255))
				a, ea := decode(bad, true)
				g, eg := decode(bad, false)
				require.Equal(t, eg == nil, ea == nil, "%s: asm %v, go %v", dt, ea, eg)
				if ea == nil {
					require.Equal(t, g, a)
				} else {
					require.ErrorIs(t, ea, ErrCorrupt)
					require.Equal(t, eg.Error(), ea.Error())
				}
			}
		}
	}
}

// TestLaneDecoderTailAsmTwin: the assembly decoders take a chunk's last steps from a copy of its stream's rest
// in a longer buffer. A stream cut short, run long or damaged near its end gets what the Go decoder gives: the same
// exponents, or the same error, lane and step.
func TestLaneDecoderTailAsmTwin(t *testing.T) {
	for _, path := range entropyAsmPaths(t) {
		t.Run(path, func(t *testing.T) { testLaneDecoderTail(t, path) })
	}
}

func testLaneDecoderTail(t *testing.T, path string) {
	rng := rand.New(rand.NewPCG(95, 96))
	src := testTensor(rng, BF16, maxEntropyChunk, 0.3)
	h, err := NewHistogram(BF16)
	require.NoError(t, err)
	require.NoError(t, h.Add(src))
	tab, err := h.CodeTable()
	require.NoError(t, err)
	var enc entEnc
	enc.build(tab)
	var dec entDec
	dec.build(tab.Lengths, BF16.ExponentBits())
	exps := make([]byte, maxEntropyChunk)
	for i := range exps {
		exps[i] = byte(binary.LittleEndian.Uint16(src[2*i:]) >> 7)
		if rng.IntN(40) == 0 {
			exps[i] = byte(rng.Uint32()) // mostly without a code: escapes
		}
	}
	decode := func(stream []byte, m int, asm bool) ([]byte, int, *errStream) {
		defer useEntropyPath(asmOr(path, asm))()
		ld := new(laneDec)
		esc, bad := ld.decodeLanes(&dec, stream, m)
		return ld.exps[:m], esc, bad
	}
	// Whole steps only (the assembly's), a short last step, and streams shorter than one step's reach.
	for _, m := range []int{maxEntropyChunk, maxEntropyChunk - 5, 96, 32} {
		le := laneEnc{}
		copy(le.exps[:], exps[:m])
		out := make([]byte, maxChunkBytes(uint64(m)))
		n, esc := le.encodeLanesGo(m, &enc, out)
		stream := out[:n]
		got, gotEsc, bad := decode(stream, m, true)
		require.Nil(t, bad, "m=%d", m)
		require.Equal(t, exps[:m], got, "m=%d", m)
		require.Equal(t, esc, gotEsc, "m=%d", m)
		variants := [][]byte{append(slices.Clone(stream), 0), append(slices.Clone(stream), 1, 2, 3)}
		for c := 1; c <= min(n, 2*asmReach); c++ {
			variants = append(variants, stream[:n-c])
		}
		for range 200 {
			bad := slices.Clone(stream)
			bad[max(0, n-1-rng.IntN(2*asmReach))] ^= byte(1 + rng.IntN(255))
			variants = append(variants, bad)
		}
		for i, v := range variants {
			ga, ea, ba := decode(v, m, true)
			gg, eg, bg := decode(v, m, false)
			require.Equal(t, bg, ba, "m=%d variant %d: assembly and Go errors differ", m, i)
			if bg == nil {
				require.Equal(t, gg, ga, "m=%d variant %d", m, i)
				require.Equal(t, eg, ea, "m=%d variant %d", m, i)
			}
		}
	}
}

// TestEntropyEncoderAsmTwin: the vectorised encoder writes the same frames as the pure-Go one, for every dtype,
// chunk shape (short last steps, short last chunks) and escape rate.
func TestEntropyEncoderAsmTwin(t *testing.T) {
	for _, path := range entropyAsmPaths(t) {
		t.Run(path, func(t *testing.T) { testEntropyEncoderAsmTwin(t, path) })
	}
}

func testEntropyEncoderAsmTwin(t *testing.T, path string) {
	rng := rand.New(rand.NewPCG(89, 90))
	enc, _ := newHighRatio(t)
	encode := func(src []byte, dt DType, asm bool) []byte {
		defer useEntropyPath(asmOr(path, asm))()
		return mustEncode(t, enc, src, dt)
	}
	for _, dt := range []DType{BF16, FP16, FP32, FP8E5M2, FP8E4M3} {
		for _, n := range []int{100, 1000, 1007, maxEntropyChunk, 2*maxEntropyChunk + 45} {
			// Escape rates from none to every element (the longest symbols, up to 16 bits a step), and a
			// constant tensor (1-bit codes).
			for _, escRate := range []int{0, 300, 7, 1, -1} {
				src := testTensor(rng, dt, n, 0.3)
				g := geometry(dt)
				if escRate < 0 {
					clear(src)
				}
				for i := 0; escRate > 0 && i < n; i += 1 + rng.IntN(escRate) {
					v := loadElem(src[i*g.size:], g.size) &^ (g.expMask << g.expShift)
					storeElem(src[i*g.size:], g.size, v|uint64(rng.IntN(int(g.expMask)+1))<<g.expShift)
				}
				a, b := encode(src, dt, true), encode(src, dt, false)
				require.Equal(t, b, a, "%s n=%d escapes 1/%d", dt, n, escRate)
			}
		}
	}
	// The longest lanes: a table whose ESC is 8 bits long and a chunk whose exponents all escape (16 bits a
	// symbol, a frame that would go raw), so that each lane fills its scratch to the end; run on the lane
	// coder itself.
	lengths := make([]uint8, 1<<BF16.ExponentBits()+1)
	for e := range 8 {
		lengths[e] = uint8(e + 1) // exponents 0-7: 1 to 8 bits
	}
	lengths[len(lengths)-1] = 8 // ESC
	tab, err := NewCodeTable(BF16, lengths)
	require.NoError(t, err)
	var x entEnc
	x.build(tab)
	var exps [maxEntropyChunk]byte
	for i := range exps {
		exps[i] = byte(8 + rng.IntN(248))
	}
	code := func(asm bool) []byte {
		defer useEntropyPath(asmOr(path, asm))()
		l := laneEnc{exps: exps}
		out := make([]byte, maxChunkBytes(maxEntropyChunk))
		n, esc := l.encodeLanes(maxEntropyChunk, &x, out)
		require.Equal(t, maxEntropyChunk, esc)
		require.Equal(t, 2*maxEntropyChunk, n, "16 bits a symbol")
		return out[:n]
	}
	a, b := code(true), code(false)
	require.True(t, slices.Equal(b, a), "a chunk of escapes only: assembly and Go streams differ")
}

// The fp8 split and join kernels (AVX-512 and AVX2) against their Go twins: every byte value, at every offset
// of a 64-element step and in random order, with a tail the Go loop takes; split then join gives the input back.
func TestFP8SplitJoinAsmTwin(t *testing.T) {
	for _, path := range entropyAsmPaths(t) {
		t.Run(path, func(t *testing.T) { testFP8SplitJoin(t, path) })
	}
}

func testFP8SplitJoin(t *testing.T, path string) {
	rng := rand.New(rand.NewPCG(91, 92))
	src := make([]byte, 0, 4*256+64*9+13)
	for i := range 4 * 256 {
		src = append(src, byte(i+i/256))
	}
	for len(src) < cap(src) {
		src = append(src, byte(rng.Uint32()))
	}
	for _, dt := range []DType{FP8E4M3, FP8E5M2} {
		bits := int(geometry(dt).resBits)
		run := func(asm bool) (exps, res, back []byte) {
			defer useEntropyPath(asmOr(path, asm))()
			exps, res = make([]byte, len(src)), make([]byte, len(src)*bits/8+1)
			splitChunk(src, dt, exps, res, 0)
			back = make([]byte, len(src))
			joinChunk(back, exps, res, 0, dt)
			return exps, res, back
		}
		e1, r1, b1 := run(true)
		e0, r0, b0 := run(false)
		require.Equal(t, e0, e1, "%s exponents", dt)
		require.Equal(t, r0, r1, "%s residuals", dt)
		require.Equal(t, src, b0, "%s Go round trip", dt)
		require.Equal(t, src, b1, "%s assembly round trip", dt)
		// The join alone, from residuals the Go split wrote and exponents in range.
		back := make([]byte, len(src))
		restore := useEntropyPath(path)
		joinChunk(back, e0, r0, 0, dt)
		restore()
		require.Equal(t, src, back, "%s assembly join of the Go split", dt)
	}
}

// countExponents against one element at a time, for every dtype the high-ratio mode codes, past the 1 MiB
// pieces the bf16 and fp8 counters fold at and with an odd tail.
func TestCountExponents(t *testing.T) {
	rng := rand.New(rand.NewPCG(93, 94))
	b := make([]byte, 1<<20+4099)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	for _, dt := range []DType{BF16, FP16, FP32, FP8E4M3, FP8E5M2} {
		g := geometry(dt)
		var want, got [256]uint64
		for i := 0; i+g.size <= len(b); i += g.size {
			want[loadElem(b[i:], g.size)>>g.expShift&g.expMask]++
		}
		countExponents(b, dt, &got)
		require.Equal(t, want, got, "%s", dt)
		// The whole elements in pieces (some empty, some across the 1 MiB folds), counted as one.
		whole := b[:len(b)/g.size*g.size]
		var segs [][]byte
		for rest := whole; len(rest) > 0; {
			k := min(len(rest), g.size*rng.IntN(300000))
			segs, rest = append(segs, rest[:k]), rest[k:]
		}
		want = [256]uint64{}
		for i := 0; i < len(whole); i += g.size {
			want[loadElem(whole[i:], g.size)>>g.expShift&g.expMask]++
		}
		h, err := NewHistogram(dt)
		if err != nil { // fp16, fp32: not coded in the high-ratio mode, but counted alike
			h = &Histogram{DType: dt}
		}
		require.NoError(t, h.AddSegments(segs))
		require.Equal(t, want, h.Counts, "%s in %d segments", dt, len(segs))
		require.Equal(t, uint64(len(whole)/g.size), h.Total)
		if g.size > 1 {
			before := *h
			require.ErrorIs(t, h.AddSegments([][]byte{whole[:g.size], whole[:1]}), ErrSize)
			require.Equal(t, before, *h, "nothing counted")
		}
	}
}

// TestAsmLayouts: the offsets the assembly reads its tables and state at.
func TestAsmLayouts(t *testing.T) {
	var d simdTab
	require.Equal(t, uintptr(256), unsafe.Offsetof(d.lf))
	require.Equal(t, uintptr(512), unsafe.Offsetof(d.eb))
	var e encSIMD
	require.Equal(t, uintptr(128), unsafe.Offsetof(e.acc))
	require.Equal(t, uintptr(256), unsafe.Offsetof(e.r1))
	require.Equal(t, uintptr(256+4*(maxSteps+1)), unsafe.Offsetof(e.r2))
	var l laneEnc
	require.Greater(t, unsafe.Sizeof(l)-unsafe.Offsetof(l.bytes)-unsafe.Sizeof(l.bytes), uintptr(3), "a gather reads 3 bytes past a lane's bytes")
}

// A table's binary form is exactly the code table section of the frames coded with it.
func TestCodeTableBinaryIsFrameSection(t *testing.T) {
	var kv []byte
	for _, x := range loadFixture(t, "kv_evaluation.safetensors").Tensors {
		kv = append(kv, x.Data...)
	}
	h, err := NewHistogram(BF16)
	require.NoError(t, err)
	require.NoError(t, h.Add(kv))
	tab, err := h.CodeTable()
	require.NoError(t, err)
	b, err := tab.MarshalBinary()
	require.NoError(t, err)
	enc, err := NewEncoder(WithMode(ModeHighRatio), WithCodeTable(tab))
	require.NoError(t, err)
	frame, err := enc.Encode(nil, kv, BF16)
	require.NoError(t, err)
	hdr, err := ParseHeader(frame)
	require.NoError(t, err)
	require.True(t, hdr.Entropy)
	require.Equal(t, b, frame[HeaderSize:HeaderSize+int(hdr.CodebookLen)])
	_, err = (&CodeTable{DType: BF16, Lengths: make([]uint8, 257)}).MarshalBinary()
	require.Error(t, err)
}

// A table given for one segmented frame gives the frame EncodeWithTable writes for the concatenation.
func TestEncodeSegmentsWithTable(t *testing.T) {
	var kv []byte
	for _, x := range loadFixture(t, "kv_evaluation.safetensors").Tensors[:6] {
		kv = append(kv, x.Data...)
	}
	h, err := NewHistogram(BF16)
	require.NoError(t, err)
	require.NoError(t, h.Add(kv[:len(kv)/3]))
	tab, err := h.CodeTable()
	require.NoError(t, err)
	enc, dec := newCodecs(t)
	want, err := enc.EncodeWithTable(nil, kv, tab)
	require.NoError(t, err)
	var segs [][]byte
	for i := 0; i < len(kv); i += 6144 {
		segs = append(segs, kv[i:min(i+6144, len(kv))])
	}
	got, err := enc.EncodeSegmentsWithTable(nil, segs, tab)
	require.NoError(t, err)
	require.Equal(t, want, got)
	// With the CRC: the whole fixture (large enough for several goroutines), on one goroutine and three, with
	// and without the frame's own checksum.
	var all [][]byte
	for _, x := range loadFixture(t, "kv_evaluation.safetensors").Tensors {
		all = append(all, x.Data)
	}
	plain, err := enc.EncodeWithTable(nil, concat(all), tab)
	require.NoError(t, err)
	castagnoli := crc32.MakeTable(crc32.Castagnoli)
	for _, opts := range [][]EOption{{WithEncoderConcurrency(1)}, {WithEncoderConcurrency(3)}, {WithEncoderConcurrency(3), WithChecksum(true)}} {
		e := mustEnc(NewEncoder(opts...))
		withCRC, crc, err := e.EncodeSegmentsWithTableCRC([]byte("prefix"), all, tab)
		require.NoError(t, err)
		f := withCRC[6:]
		require.Equal(t, plain[HeaderSize:], f[HeaderSize:])
		require.Equal(t, crc32.Checksum(f, castagnoli), crc)
		_, fh, err := dec.Decode(nil, f)
		require.NoError(t, err)
		require.Equal(t, len(opts) > 1, fh.Checksum)
	}
	out, hdr, err := dec.Decode(nil, got)
	require.NoError(t, err)
	require.True(t, hdr.Entropy)
	require.Equal(t, kv, out)
	_, err = enc.EncodeSegmentsWithTable(nil, segs, &CodeTable{DType: BF16, Lengths: make([]uint8, 257)})
	require.Error(t, err)
}

// The sample's stride: an eighth of the elements up to 2^23, then at most sampleCap, never under half of it.
func TestSampleStride(t *testing.T) {
	for _, n := range []int{sampleMin, 1 << 20, 1 << 23, 1<<23 + 1, 1<<23 + sampleEvery, 3 << 23, 1 << 25, 1 << 31} {
		every := sampleStride(n)
		counted := n / every * sampleRun
		if n <= 1<<23 {
			require.Equal(t, sampleEvery, every, "n = %d", n)
			continue
		}
		require.LessOrEqual(t, counted, sampleCap, "n = %d", n)
		require.Greater(t, counted, sampleCap/2-sampleRun, "n = %d: the stride doubled once too often", n)
	}
}

// A large input's own table comes from a sample of its exponents: on real KV it costs almost no ratio, the frame
// does not depend on how many goroutines count or how the input is split into segments, and an input whose
// sample misleads is coded with the table of all its exponents instead.
func TestSampledFrameTable(t *testing.T) {
	eval := loadFixture(t, "kv_evaluation.safetensors")
	var src []byte
	for _, x := range eval.Tensors {
		src = append(src, x.Data...)
	}
	require.GreaterOrEqual(t, len(src)/2, sampleMin)
	h, err := NewHistogram(BF16)
	require.NoError(t, err)
	require.NoError(t, h.Add(src))
	exact, err := h.CodeTable()
	require.NoError(t, err)

	one, dec := newHighRatio(t, WithEncoderConcurrency(1))
	frame := mustEncode(t, one, src, BF16)
	out, _, err := dec.Decode(nil, frame)
	require.NoError(t, err)
	require.Equal(t, src, out)
	requireReferenceStreams(t, frame, src)
	withExact, err := one.EncodeWithTable(nil, src, exact)
	require.NoError(t, err)
	require.Less(t, float64(len(frame)), float64(len(withExact))*1.002, "a sampled table costs under 0.2 %% on real KV")

	four, _ := newHighRatio(t, WithEncoderConcurrency(4))
	require.Equal(t, frame, mustEncode(t, four, src, BF16), "the sample does not depend on concurrency")
	every := sampleStride(len(src) / 2)
	cut := 2 * (len(src)/2/every/3*every + sampleRun/2) // a segment boundary inside a sampled run
	segFrame, err := four.EncodeSegments(nil, [][]byte{src[:cut], src[cut:]}, BF16)
	require.NoError(t, err)
	require.Equal(t, frame, segFrame, "nor on segments")

	// Past 2^23 elements the runs lie further apart (a million elements counted): the fixture tiled to 2^24.
	big := kvtile.Tile(src, 2<<24, 1)
	h, err = NewHistogram(BF16)
	require.NoError(t, err)
	require.NoError(t, h.Add(big))
	bigExact, err := h.CodeTable()
	require.NoError(t, err)
	bigFrame := mustEncode(t, one, big, BF16)
	require.LessOrEqual(t, one.ownTable.Samples, uint64(sampleCap), "the table counted more than the cap")
	require.Greater(t, one.ownTable.Samples, uint64(sampleCap/2))
	withExact, err = one.EncodeWithTable(nil, big, bigExact)
	require.NoError(t, err)
	require.Less(t, float64(len(bigFrame)), float64(len(withExact))*1.002, "a capped sample costs under 0.2 %% on real KV")
	every = sampleStride(len(big) / 2)
	cut = 2 * (len(big)/2/every/3*every + sampleRun/2)
	segFrame, err = four.EncodeSegments(nil, [][]byte{big[:cut], big[cut:]}, BF16)
	require.NoError(t, err)
	require.Equal(t, bigFrame, segFrame, "the capped sample depends neither on concurrency nor on segments")

	// Misleading: the sampled runs hold one exponent, every other element one of two others. The sample's table
	// escapes most of the input; the encoder must notice and use the exact histogram (about 9.6 bits an element).
	n := 8 * sampleEvery * 4
	bad := make([]byte, 2*n)
	rng := rand.New(rand.NewPCG(7, 8))
	for i := range n {
		e := uint16(120)
		if i%sampleEvery >= sampleRun {
			e = 100 + uint16(rng.IntN(2))
		}
		binary.LittleEndian.PutUint16(bad[2*i:], e<<7|uint16(rng.IntN(1<<7))|uint16(rng.IntN(2))<<15)
	}
	frame = mustEncode(t, one, bad, BF16)
	hdr, err := ParseHeader(frame)
	require.NoError(t, err)
	require.True(t, hdr.Entropy)
	require.Greater(t, float64(len(bad))/float64(len(frame)), 1.6, "raw (1.0) or near it without the retry")
	out, _, err = dec.Decode(nil, frame)
	require.NoError(t, err)
	require.Equal(t, bad, out)
}

// TestEntropyEncoderAsmTwinTables: the vectorised encoder writes the Go encoder's lanes under tables of every
// shape (coded exponents spanning 1 to 40, so both the AVX2 encoder's shuffled and gathered look-ups, with
// ESC short or long) for 8-, 5- and 4-bit exponents, with exponents outside the table escaping at rates from
// none to a quarter.
func TestEntropyEncoderAsmTwinTables(t *testing.T) {
	for _, path := range entropyAsmPaths(t) {
		t.Run(path, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(97, 98))
			for i := range 300 {
				dt := []DType{BF16, FP8E5M2, FP8E4M3}[i%3]
				eb := dt.ExponentBits()
				span := 1 + rng.IntN(min(40, 1<<eb))
				lo := rng.IntN(1<<eb - span + 1)
				h, err := NewHistogram(dt)
				require.NoError(t, err)
				for x := lo; x < lo+span; x++ {
					h.Counts[x] = 1 + uint64(rng.ExpFloat64()*float64(1+rng.IntN(100000)))
					h.Total += h.Counts[x]
				}
				tab, err := h.CodeTable()
				require.NoError(t, err)
				var enc entEnc
				enc.build(tab)
				coded := []int{}
				for x := range 1 << eb {
					if tab.Lengths[x] > 0 {
						coded = append(coded, x)
					}
				}
				escRate := []int{0, 4, 30, 1000}[rng.IntN(4)]
				if tab.Lengths[escSymbol(eb)] == 0 {
					escRate = 0 // a table without ESC codes every exponent it is given
				}
				m := []int{maxEntropyChunk, 32 * (1 + rng.IntN(maxSteps)), 1 + rng.IntN(maxEntropyChunk)}[rng.IntN(3)]
				var le laneEnc
				for j := range m {
					le.exps[j] = byte(coded[rng.IntN(len(coded))])
					if escRate > 0 && rng.IntN(escRate) == 0 {
						le.exps[j] = byte(rng.IntN(1 << eb))
					}
				}
				code := func(asm bool) ([]byte, int) {
					defer useEntropyPath(asmOr(path, asm))()
					l := le
					out := make([]byte, maxChunkBytes(uint64(m)))
					n, esc := l.encodeLanes(m, &enc, out)
					return out[:n], esc
				}
				a, ea := code(true)
				g, eg := code(false)
				require.Equal(t, eg, ea, "%s table %d (span %d, narrow %v), m=%d", dt, i, span, enc.narrow.ok, m)
				require.True(t, slices.Equal(g, a), "%s table %d (span %d, narrow %v), m=%d: streams differ", dt, i, span,
					enc.narrow.ok, m)
			}
		})
	}
}
