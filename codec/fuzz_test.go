package codec

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
)

// FuzzDecode feeds arbitrary bytes to the decoder: it must never panic or write outside its destination, and
// every failure must be one of the documented errors.
//
//	go test -run '^$' -fuzz FuzzDecode -fuzztime 60s ./codec
func FuzzDecode(f *testing.F) {
	enc, _ := NewEncoder()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 5, 100, 5000} {
		src := randomNormalBF16(rng, n, 1)
		if n > 10 {
			src[3] = 0x7F // an escape
		}
		frame, _ := enc.Encode(nil, src, BF16)
		f.Add(frame)
	}
	for _, dt := range []DType{FP16, FP8E5M2, FP32} {
		frame, _ := enc.Encode(nil, randomNormalBF16(rng, 64, 1), dt)
		f.Add(frame)
	}
	// Version 2: entropy frames of every dtype (one chunk and several, with escapes), with and without the
	// payload checksum, raw and fast-mode frames with it.
	hr, _ := NewEncoder(WithMode(ModeHighRatio))
	hrc, _ := NewEncoder(WithMode(ModeHighRatio), WithChecksum(true))
	fc, _ := NewEncoder(WithChecksum(true))
	for _, dt := range []DType{BF16, FP16, FP32, FP8E5M2, FP8E4M3} {
		for _, n := range []int{200, 1500, maxEntropyChunk + 300} {
			src := testTensor(rng, dt, n, 1)
			src[0] ^= 0x40 // an unusual exponent: an escape in most dtypes
			frame, _ := hr.Encode(nil, src, dt)
			f.Add(frame)
		}
		frame, _ := hrc.Encode(nil, testTensor(rng, dt, 300, 1), dt)
		f.Add(frame)
	}
	lengths := make([]uint8, 257)
	lengths[127], lengths[256] = 2, 2 // an incomplete code
	sparse, _ := NewCodeTable(BF16, lengths)
	frame, _ := hr.EncodeWithTable(nil, bytes.Repeat([]byte{0x80, 0x3F}, 300), sparse)
	f.Add(frame)
	frame, _ = fc.Encode(nil, randomNormalBF16(rng, 500, 1), BF16)
	f.Add(frame)
	frame, _ = fc.Encode(nil, []byte{1, 2, 3}, Int8)
	f.Add(frame)
	dec, _ := NewDecoder()
	f.Fuzz(func(t *testing.T, frame []byte) {
		const guard = 32
		h, err := ParseHeader(frame)
		if err == nil && h.RawLen() > 64<<20 {
			return // a valid header may promise more than the fuzzer should allocate
		}
		dst := make([]byte, 0, int(h.RawLen())+guard)
		full := dst[:cap(dst)]
		for i := range full {
			full[i] = 0xEE
		}
		out, _, err := dec.Decode(dst, frame)
		if err != nil {
			known := []error{ErrBadMagic, ErrVersion, ErrHeaderCRC, ErrCorrupt, ErrTruncated, ErrDType, ErrChecksum}
			for _, k := range known {
				if errors.Is(err, k) {
					return
				}
			}
			t.Fatalf("undocumented error: %v", err)
		}
		if uint64(len(out)) != h.RawLen() {
			t.Fatalf("decoded %d bytes, header says %d", len(out), h.RawLen())
		}
		if !bytes.Equal(full[len(out):], bytes.Repeat([]byte{0xEE}, len(full)-len(out))) {
			t.Fatal("decoder wrote past the decoded length")
		}
	})
}

// FuzzRoundTrip encodes arbitrary bytes as every dtype, in both modes, with and without the payload checksum
// (bits 0 and 1 of mode): decode must give them back exactly, and the frame must respect MaxEncodedLen with
// nothing written past it.
func FuzzRoundTrip(f *testing.F) {
	f.Add([]byte{}, uint8(BF16), uint8(0))
	f.Add(randomNormalBF16(rand.New(rand.NewPCG(3, 4)), 3000, 1), uint8(BF16), uint8(0))
	f.Add(randomNormalBF16(rand.New(rand.NewPCG(3, 4)), 3000, 1), uint8(BF16), uint8(1))
	f.Add(randomNormalBF16(rand.New(rand.NewPCG(5, 6)), 20000, 0.01), uint8(BF16), uint8(3))
	f.Add([]byte{0xFF, 0x7F, 0x80, 0x00, 0x01, 0x80}, uint8(FP16), uint8(1))
	f.Add(bytes.Repeat([]byte{0x38, 0x40, 0x30}, 300), uint8(FP8E4M3), uint8(1))
	var encs [4]*Encoder
	for m := range encs {
		encs[m], _ = NewEncoder(WithMode(Mode(m&1)), WithChecksum(m&2 != 0))
	}
	dec, _ := NewDecoder()
	f.Fuzz(func(t *testing.T, src []byte, d, mode uint8) {
		enc := encs[mode&3]
		dt := DType(d%12 + 1)
		src = src[:len(src)/dt.Size()*dt.Size()]
		const guard = 16
		dst := make([]byte, 0, MaxEncodedLen(len(src))+guard)
		full := dst[:cap(dst)]
		for i := range full {
			full[i] = 0xEE
		}
		frame, err := enc.Encode(dst, src, dt)
		if err != nil {
			t.Fatal(err)
		}
		if len(frame) > MaxEncodedLen(len(src)) {
			t.Fatalf("frame %d bytes > max %d", len(frame), MaxEncodedLen(len(src)))
		}
		for _, b := range full[MaxEncodedLen(len(src)):] {
			if b != 0xEE {
				t.Fatal("encoder wrote past MaxEncodedLen")
			}
		}
		out, _, err := dec.Decode(nil, frame)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out, src) {
			t.Fatalf("round trip of %d bytes as %s differs", len(src), dt)
		}
	})
}
