package codec

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// Benchmarks compare against copy() of the same buffers in the same run, the only baseline that carries
// across machines (the fast mode aims at ≥ 50 % of copy throughput per core each way). Run with:
//
//	go test -run '^$' -bench . -benchtime 20x ./codec
const benchBytes = 32 << 20

func benchInput() []byte {
	return randomNormalBF16(rand.New(rand.NewPCG(1, 1)), benchBytes/2, 0.7)
}

func BenchmarkCopy(b *testing.B) {
	src := benchInput()
	dst := make([]byte, len(src))
	b.SetBytes(int64(len(src)))
	b.ReportAllocs()
	for b.Loop() {
		copy(dst, src)
	}
}

func BenchmarkEncodeBF16(b *testing.B) {
	src := benchInput()
	for _, conc := range []int{1, defaultConcurrency()} {
		b.Run(fmt.Sprintf("goroutines=%d", conc), func(b *testing.B) {
			benchEncode(b, src, WithEncoderConcurrency(conc))
		})
	}
}

func BenchmarkDecodeBF16(b *testing.B) {
	src := benchInput()
	enc, _ := NewEncoder()
	frame, err := enc.Encode(nil, src, BF16)
	if err != nil {
		b.Fatal(err)
	}
	for _, conc := range []int{1, defaultConcurrency()} {
		b.Run(fmt.Sprintf("goroutines=%d", conc), func(b *testing.B) {
			dec, err := NewDecoder(WithDecoderConcurrency(conc))
			if err != nil {
				b.Fatal(err)
			}
			out := make([]byte, len(src))
			b.SetBytes(int64(len(src)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := dec.DecodeInto(out, frame); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPagedBF16 is a frame of a paged KV cache: 8 MiB in 6 KiB blocks scattered over a pool much larger
// than the caches, gathered into a buffer and encoded (decoded and scattered) against EncodeSegments
// (DecodeSegments) on the blocks in place. One goroutine: per-core cost.
func BenchmarkPagedBF16(b *testing.B) {
	const block, frameBytes, poolBytes = 6144, 8 << 20, 256 << 20
	rng := rand.New(rand.NewPCG(2, 2))
	pool := randomNormalBF16(rng, poolBytes/2, 0.7)
	nb := frameBytes / block
	segs := make([][]byte, nb)
	for i, k := range rng.Perm(poolBytes / block)[:nb] {
		segs[i] = pool[k*block : (k+1)*block]
	}
	gathered := make([]byte, nb*block)
	enc, _ := NewEncoder(WithEncoderConcurrency(1))
	dec, _ := NewDecoder(WithDecoderConcurrency(1))
	frame := make([]byte, 0, MaxEncodedLen(len(gathered)))
	b.Run("gather+Encode", func(b *testing.B) {
		b.SetBytes(int64(len(gathered)))
		for b.Loop() {
			n := 0
			for _, s := range segs {
				n += copy(gathered[n:], s)
			}
			frame, _ = enc.Encode(frame[:0], gathered, BF16)
		}
	})
	b.Run("EncodeSegments", func(b *testing.B) {
		b.SetBytes(int64(len(gathered)))
		for b.Loop() {
			frame, _ = enc.EncodeSegments(frame[:0], segs, BF16)
		}
	})
	b.Run("DecodeInto+scatter", func(b *testing.B) {
		b.SetBytes(int64(len(gathered)))
		for b.Loop() {
			if _, err := dec.DecodeInto(gathered, frame); err != nil {
				b.Fatal(err)
			}
			n := 0
			for _, s := range segs {
				n += copy(s, gathered[n:])
			}
		}
	})
	b.Run("DecodeSegments", func(b *testing.B) {
		b.SetBytes(int64(len(gathered)))
		for b.Loop() {
			if _, err := dec.DecodeSegments(segs, frame); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// benchEncode times an encoder built with opts on bf16 src, reusing its destination, and reports the ratio.
func benchEncode(b *testing.B, src []byte, opts ...EOption) {
	enc, err := NewEncoder(opts...)
	if err != nil {
		b.Fatal(err)
	}
	dst := make([]byte, 0, MaxEncodedLen(len(src)))
	b.SetBytes(int64(len(src)))
	b.ReportAllocs()
	for b.Loop() {
		if dst, err = enc.Encode(dst[:0], src, BF16); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(src))/float64(len(dst)), "ratio")
}
