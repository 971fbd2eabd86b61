package codec

import (
	"testing"
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
