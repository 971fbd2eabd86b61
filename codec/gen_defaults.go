//go:build ignore

// gen_defaults writes default_codebooks.json: the built-in codebooks, calibrated on the real KV calibration
// fixture. bf16 and fp32 share exponents exactly; fp16 and fp8_e5m2 books come from the same values rounded to
// those types. Run with `go generate ./codec` from the repository root.
package main

import (
	"encoding/binary"
	"encoding/json"
	"log"
	"math"
	"os"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/internal/safetensors"
)

// toHalf rounds a float32 to IEEE fp16 bits (round to nearest even; overflow to inf, tiny values to subnormals).
func toHalf(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int(b>>23&0xFF) - 127 + 15
	mant := b & 0x7FFFFF
	if b>>23&0xFF == 0xFF {
		return sign | 0x7C00 | uint16(mant>>13)
	}
	if exp >= 31 {
		return sign | 0x7C00
	}
	if exp <= 0 {
		if exp < -10 {
			return sign
		}
		mant |= 0x800000
		shift := uint(14 - exp)
		half := mant >> shift
		rem := mant & (1<<shift - 1)
		if rem > 1<<(shift-1) || rem == 1<<(shift-1) && half&1 == 1 {
			half++
		}
		return sign | uint16(half)
	}
	h := uint32(exp)<<10 | mant>>13
	rem := mant & 0x1FFF
	if rem > 0x1000 || rem == 0x1000 && h&1 == 1 {
		h++
	}
	return sign | uint16(h)
}

func main() {
	f, err := safetensors.ReadFile("../tests/data/kv_calibration.safetensors")
	if err != nil {
		log.Fatal(err)
	}
	var bf16, fp16, e5m2 []byte
	for _, t := range f.Tensors {
		if t.DType != "BF16" {
			continue
		}
		bf16 = append(bf16, t.Data...)
		for i := 0; i < len(t.Data); i += 2 {
			x := math.Float32frombits(uint32(binary.LittleEndian.Uint16(t.Data[i:])) << 16)
			h := toHalf(x)
			fp16 = binary.LittleEndian.AppendUint16(fp16, h)
			e5m2 = append(e5m2, byte((h+0x7F+(h>>8)&1)>>8)) // round to nearest even at bit 8
		}
	}
	var books []*codec.Codebook
	for _, c := range []struct {
		dt   codec.DType
		data []byte
	}{{codec.BF16, bf16}, {codec.FP16, fp16}, {codec.FP8E5M2, e5m2}} {
		cb, err := codec.Calibrate(c.dt, codec.DefaultBits, c.data)
		if err != nil {
			log.Fatal(err)
		}
		books = append(books, cb)
		if c.dt == codec.BF16 {
			fp32 := *cb
			fp32.DType = codec.FP32
			books = append(books, &fp32)
		}
	}
	b, err := json.MarshalIndent(books, "", " ")
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile("default_codebooks.json", append(b, '\n'), 0o644); err != nil {
		log.Fatal(err)
	}
}
