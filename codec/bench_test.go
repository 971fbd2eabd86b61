package codec

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// Benchmarks compare against copy() of the same buffers in the same run: the target is encode and
// decode each at ≥ 50 % of copy throughput per core. Run with:
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
			enc, err := NewEncoder(WithEncoderConcurrency(conc))
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
