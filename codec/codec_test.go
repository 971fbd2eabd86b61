package codec

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func newCodecs(t testing.TB, eopts ...EOption) (*Encoder, *Decoder) {
	t.Helper()
	enc, err := NewEncoder(eopts...)
	require.NoError(t, err)
	dec, err := NewDecoder()
	require.NoError(t, err)
	return enc, dec
}

// roundTrip encodes src, checks the frame's invariants, decodes it both ways and requires identical bytes.
func roundTrip(t testing.TB, enc *Encoder, dec *Decoder, src []byte, dt DType) Header {
	t.Helper()
	frame, err := enc.Encode(nil, src, dt)
	require.NoError(t, err)
	require.LessOrEqual(t, len(frame), MaxEncodedLen(len(src)), "frame larger than input + header")
	h, err := ParseHeader(frame)
	require.NoError(t, err)
	require.Equal(t, uint64(len(frame)), h.FrameLen())
	// A dst with a prefix and poisoned spare capacity: the prefix must survive and every byte be written.
	dst := make([]byte, 3, 3+len(src)+16)
	copy(dst, "pre")
	for i := 3; i < cap(dst); i++ {
		dst[:cap(dst)][i] = 0xA5
	}
	out, h2, err := dec.Decode(dst, frame)
	require.NoError(t, err)
	require.Equal(t, h, h2)
	require.Equal(t, "pre", string(out[:3]))
	require.Equal(t, src, out[3:], "round trip of %d bytes of %s is not bit-exact", len(src), dt)
	into := make([]byte, len(src))
	for i := range into {
		into[i] = 0x5A
	}
	_, err = dec.DecodeInto(into, frame)
	require.NoError(t, err)
	require.Equal(t, src, into)
	return h
}

func randomNormalBF16(rng *rand.Rand, n int, scale float64) []byte {
	b := make([]byte, 2*n)
	for i := range n {
		f := float32(rng.NormFloat64() * scale)
		binary.LittleEndian.PutUint16(b[2*i:], uint16(math.Float32bits(f)>>16))
	}
	return b
}

func TestAllBF16BitPatterns(t *testing.T) {
	enc, dec := newCodecs(t)
	src := make([]byte, 2*65536)
	for v := range 65536 {
		binary.LittleEndian.PutUint16(src[2*v:], uint16(v))
	}
	// In order: most values escape, so the frame falls back to raw.
	h := roundTrip(t, enc, dec, src, BF16)
	assert.True(t, h.Raw)
	// Every pattern once, embedded in mostly codable data, so each one goes through the coded path too.
	rng := rand.New(rand.NewPCG(1, 2))
	for _, step := range []int{64, 512} {
		base := randomNormalBF16(rng, 65536*step/8, 1)
		for v := range 65536 {
			i := (v * step / 8) + rng.IntN(step/8)
			binary.LittleEndian.PutUint16(base[2*i:], uint16(v))
		}
		h := roundTrip(t, enc, dec, base, BF16)
		require.False(t, h.Raw, "step %d: expected a coded frame", step)
		require.Positive(t, h.Escapes)
	}
}

func TestSizesAndEdges(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, conc := range []int{1, 3} {
		enc, dec := newCodecs(t, WithEncoderConcurrency(conc))
		for _, n := range []int{0, 1, 2, 3, 7, 8, 9, 15, 17, 4095, 4096, 4097, 8191, 12289, 1<<19 + 13, 1<<20 + 7} {
			src := randomNormalBF16(rng, n, 0.5)
			h := roundTrip(t, enc, dec, src, BF16)
			if n >= 64 {
				require.False(t, h.Raw, "n=%d", n)
				require.Greater(t, h.Ratio(), 1.25, "n=%d", n)
			}
		}
	}
}

func TestNoEscapeAndAllEscape(t *testing.T) {
	enc, dec := newCodecs(t)
	cb, err := DefaultCodebook(BF16)
	require.NoError(t, err)
	rng := rand.New(rand.NewPCG(5, 6))
	n := 50000
	inBook := make([]byte, 2*n)
	outBook := make([]byte, 2*n)
	var missing []uint8
	for x := range 256 {
		if !cb.Contains(uint8(x)) {
			missing = append(missing, uint8(x))
		}
	}
	for i := range n {
		m := uint16(rng.IntN(256))
		in := uint16(cb.Exponents[rng.IntN(16)])
		out := uint16(missing[rng.IntN(len(missing))])
		binary.LittleEndian.PutUint16(inBook[2*i:], m&0x80<<8|in<<7|m&0x7F)
		binary.LittleEndian.PutUint16(outBook[2*i:], m&0x80<<8|out<<7|m&0x7F)
	}
	h := roundTrip(t, enc, dec, inBook, BF16)
	assert.Zero(t, h.Escapes)
	assert.Equal(t, align16(align16(align16(HeaderSize+16)+4*13)+uint64(n/2))+uint64(n), h.FrameLen(), "no-escape frame size")
	h = roundTrip(t, enc, dec, outBook, BF16)
	assert.True(t, h.Raw, "all-escape input must fall back to raw")
	assert.Equal(t, uint64(HeaderSize+2*n), h.FrameLen())

	// Escapes just under the break-even point stay coded, and still round-trip.
	mixed := append([]byte(nil), inBook...)
	for i := 0; i < n; i += 7 {
		copy(mixed[2*i:], outBook[2*i:2*i+2])
	}
	h = roundTrip(t, enc, dec, mixed, BF16)
	assert.False(t, h.Raw)
	assert.Equal(t, uint64((n+6)/7), h.Escapes)
}

func TestOtherDTypes(t *testing.T) {
	enc, dec := newCodecs(t)
	rng := rand.New(rand.NewPCG(7, 8))
	n := 100003
	f32 := make([]byte, 4*n)
	f16 := make([]byte, 2*n)
	e5m2 := make([]byte, n)
	for i := range n {
		x := float32(rng.NormFloat64())
		bits := math.Float32bits(x)
		binary.LittleEndian.PutUint32(f32[4*i:], bits)
		h16 := float32ToHalf(x)
		binary.LittleEndian.PutUint16(f16[2*i:], h16)
		e5m2[i] = uint8(h16 >> 8)
	}
	for _, c := range []struct {
		dt       DType
		src      []byte
		minRatio float64
	}{{FP32, f32, 1.13}, {FP16, f16, 1.05}, {FP8E5M2, e5m2, 1.12}} {
		h := roundTrip(t, enc, dec, c.src, c.dt)
		assert.False(t, h.Raw, c.dt.String())
		assert.Greater(t, h.Ratio(), c.minRatio, c.dt.String())
	}
	raw := make([]byte, 9999)
	for i := range raw {
		raw[i] = byte(rng.Uint32())
	}
	for _, dt := range []DType{FP8E4M3, Int8, Uint8, Bytes} {
		h := roundTrip(t, enc, dec, raw, dt)
		assert.True(t, h.Raw, dt.String())
	}
	for _, dt := range []DType{Int16, FP64, Int32, Int64} {
		src := raw[:len(raw)/dt.Size()*dt.Size()]
		h := roundTrip(t, enc, dec, src, dt)
		assert.True(t, h.Raw, dt.String())
	}
	// Random bit patterns of every coded dtype: mostly escapes, raw fallback, still exact.
	for _, dt := range []DType{BF16, FP16, FP32, FP8E5M2} {
		src := raw[:len(raw)/dt.Size()*dt.Size()]
		roundTrip(t, enc, dec, src, dt)
	}
}

// float32ToHalf converts by truncation (good enough for test data with a realistic exponent spread).
func float32ToHalf(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int(b>>23&0xFF) - 127 + 15
	mant := uint16(b>>13) & 0x3FF
	switch {
	case exp <= 0:
		return sign
	case exp >= 31:
		return sign | 0x7C00
	}
	return sign | uint16(exp)<<10 | mant
}

func TestCodeWidths(t *testing.T) {
	// The format carries the code width; the reference decoder handles every width the encoder can write.
	rng := rand.New(rand.NewPCG(9, 10))
	src := randomNormalBF16(rng, 30001, 1)
	_, dec := newCodecs(t)
	for bits := 1; bits <= 8; bits++ {
		cb, err := Calibrate(BF16, bits, src[:20000])
		require.NoError(t, err)
		enc, err := NewEncoder()
		require.NoError(t, err)
		frame, err := enc.EncodeWith(nil, src, cb)
		require.NoError(t, err)
		h, err := ParseHeader(frame)
		require.NoError(t, err)
		if !h.Raw {
			require.Equal(t, uint8(bits), h.CodeBits)
		}
		out, _, err := dec.Decode(nil, frame)
		require.NoError(t, err)
		require.Equal(t, src, out, "bits=%d", bits)
	}
}

func TestBadInput(t *testing.T) {
	enc, dec := newCodecs(t)
	_, err := enc.Encode(nil, []byte{1, 2, 3}, BF16)
	require.ErrorIs(t, err, ErrSize)
	_, err = enc.Encode(nil, []byte{1, 2}, DType(99))
	require.ErrorIs(t, err, ErrDType)
	fp16book, err := DefaultCodebook(FP16)
	require.NoError(t, err)
	_, err = NewEncoder(WithCodebook(&Codebook{DType: BF16, Bits: 4, Exponents: []uint8{1, 2}}))
	require.ErrorIs(t, err, ErrCodebook)
	_, err = enc.EncodeWith(nil, []byte{1, 2}, &Codebook{DType: BF16, Bits: 4, Exponents: fp16book.Exponents[:15]})
	require.ErrorIs(t, err, ErrCodebook)

	rng := rand.New(rand.NewPCG(11, 12))
	src := randomNormalBF16(rng, 10000, 1)
	frame, err := enc.Encode(nil, src, BF16)
	require.NoError(t, err)
	_, _, err = dec.Decode(nil, frame[:10])
	require.ErrorIs(t, err, ErrTruncated)
	_, _, err = dec.Decode(nil, frame[:len(frame)-1])
	require.ErrorIs(t, err, ErrTruncated)
	_, _, err = dec.Decode(nil, append(append([]byte(nil), frame...), 0))
	require.ErrorIs(t, err, ErrCorrupt)
	bad := append([]byte(nil), frame...)
	bad[0] = 'X'
	_, _, err = dec.Decode(nil, bad)
	require.ErrorIs(t, err, ErrBadMagic)
	bad = append([]byte(nil), frame...)
	bad[4] = 3
	_, _, err = dec.Decode(nil, bad)
	require.ErrorIs(t, err, ErrVersion)
	bad = append([]byte(nil), frame...)
	bad[9] ^= 1
	_, _, err = dec.Decode(nil, bad)
	require.ErrorIs(t, err, ErrHeaderCRC)
	_, err = dec.DecodeInto(make([]byte, len(src)-2), frame)
	require.ErrorIs(t, err, ErrShortBuffer)
}

func TestCorruptEscapes(t *testing.T) {
	enc, dec := newCodecs(t)
	rng := rand.New(rand.NewPCG(13, 14))
	src := randomNormalBF16(rng, 20000, 1)
	for i := 0; i < len(src); i += 2 * 97 {
		src[i+1] = 0x7F // exponent 0xFE: escapes
	}
	frame, err := enc.Encode(nil, src, BF16)
	require.NoError(t, err)
	h, err := ParseHeader(frame)
	require.NoError(t, err)
	require.Positive(t, h.Escapes)
	lay := h.Layout()
	cases := map[string]func(f []byte){
		"position out of order": func(f []byte) { binary.LittleEndian.PutUint16(f[lay.Escapes+3:], 0) },
		"position past chunk":   func(f []byte) { binary.LittleEndian.PutUint16(f[lay.Escapes:], 0xFFFF) },
		"table not monotone":    func(f []byte) { binary.LittleEndian.PutUint32(f[lay.Table+4:], 0xFFFFFF) },
		"table start":           func(f []byte) { binary.LittleEndian.PutUint32(f[lay.Table:], 1) },
	}
	for name, damage := range cases {
		bad := append([]byte(nil), frame...)
		damage(bad)
		_, _, err := dec.Decode(nil, bad)
		require.ErrorIs(t, err, ErrCorrupt, name)
	}
}

func TestNoAllocationsWhenWarm(t *testing.T) {
	rng := rand.New(rand.NewPCG(15, 16))
	src := randomNormalBF16(rng, 1<<20, 1)
	enc, dec := newCodecs(t)
	frame := make([]byte, 0, MaxEncodedLen(len(src)))
	out := make([]byte, 0, len(src))
	var err error
	frame, err = enc.Encode(frame[:0], src, BF16)
	require.NoError(t, err)
	allocs := testing.AllocsPerRun(10, func() {
		frame, _ = enc.Encode(frame[:0], src, BF16)
		out, _, _ = dec.Decode(out[:0], frame)
	})
	require.Zero(t, allocs)
	require.Equal(t, src, out)
}

func TestPutRawHeader(t *testing.T) {
	src := []byte{1, 2, 3, 4, 5, 6}
	frame := make([]byte, HeaderSize+len(src))
	require.NoError(t, PutRawHeader(frame, BF16, len(src)))
	copy(frame[HeaderSize:], src)
	_, dec := newCodecs(t)
	out, h, err := dec.Decode(nil, frame)
	require.NoError(t, err)
	require.True(t, h.Raw)
	require.Equal(t, src, out)
	require.ErrorIs(t, PutRawHeader(frame, BF16, 3), ErrSize)
	require.ErrorIs(t, PutRawHeader(frame[:10], BF16, 2), ErrShortBuffer)
}
