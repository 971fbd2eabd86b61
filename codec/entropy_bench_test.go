package codec

import (
	"testing"

	"github.com/splitzip/splitzip/internal/fp8"
)

// BenchmarkHighRatio times high-ratio encode and decode of real bf16 KV (the evaluation fixture, all tensors
// as one 2.9 MB frame) on one goroutine, beside copy() of the same bytes in the same run. Run with:
//
//	go test -run '^$' -bench HighRatio -benchtime 200x ./codec
func BenchmarkHighRatio(b *testing.B) {
	eval := loadFixture(b, "kv_evaluation.safetensors")
	var src []byte
	for _, x := range eval.Tensors {
		src = append(src, x.Data...)
	}
	h, _ := NewHistogram(BF16)
	_ = h.Add(src)
	table, _ := h.CodeTable()
	b.Run("copy", func(b *testing.B) {
		dst := make([]byte, len(src))
		b.SetBytes(int64(len(src)))
		b.ReportAllocs()
		for b.Loop() {
			copy(dst, src)
		}
	})
	for _, c := range []struct {
		name string
		opts []EOption
	}{
		{"encode", nil},
		{"encode-pinned", []EOption{WithCodeTable(table)}},
		{"encode-checksum", []EOption{WithChecksum(true)}},
	} {
		b.Run(c.name, func(b *testing.B) {
			benchEncode(b, src, append([]EOption{WithMode(ModeHighRatio), WithEncoderConcurrency(1)}, c.opts...)...)
		})
	}
	for _, checksum := range []bool{false, true} {
		name := "decode"
		if checksum {
			name = "decode-checksum"
		}
		b.Run(name, func(b *testing.B) {
			enc, _ := NewEncoder(WithMode(ModeHighRatio), WithChecksum(checksum))
			frame, err := enc.Encode(nil, src, BF16)
			if err != nil {
				b.Fatal(err)
			}
			dec, _ := NewDecoder(WithDecoderConcurrency(1))
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

// BenchmarkHighRatioFP8 is BenchmarkHighRatio for the fixture quantised to fp8 (e4m3, e5m2) with a per-tensor
// scale, as an fp8 KV cache holds it: GB/s of fp8 bytes, one goroutine.
func BenchmarkHighRatioFP8(b *testing.B) {
	eval := loadFixture(b, "kv_evaluation.safetensors")
	for _, dt := range []DType{FP8E4M3, FP8E5M2} {
		var src []byte
		for _, x := range eval.Tensors {
			if dt == FP8E4M3 {
				src = append(src, fp8.QuantizeBF16E4M3(x.Data)...)
			} else {
				src = append(src, fp8.QuantizeBF16E5M2(x.Data)...)
			}
		}
		enc, _ := NewEncoder(WithMode(ModeHighRatio), WithEncoderConcurrency(1))
		dst := make([]byte, 0, MaxEncodedLen(len(src)))
		b.Run(dt.String()+"/encode", func(b *testing.B) {
			b.SetBytes(int64(len(src)))
			for b.Loop() {
				var err error
				if dst, err = enc.Encode(dst[:0], src, dt); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(src))/float64(len(dst)), "ratio")
		})
		b.Run(dt.String()+"/decode", func(b *testing.B) {
			dec, _ := NewDecoder(WithDecoderConcurrency(1))
			out := make([]byte, len(src))
			b.SetBytes(int64(len(src)))
			for b.Loop() {
				if _, err := dec.DecodeInto(out, dst); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
