// Package fp8 converts to the fp8 formats (e4m3fn: no infinities, ±448 the largest finite value; e5m2: ±57344)
// the way an fp8 KV cache quantises: the statistics and tests that measure how the high-ratio mode codes fp8 KV
// use it.
package fp8

import (
	"encoding/binary"
	"math"
)

// QuantizeBF16E4M3 quantises a bf16 tensor to fp8 e4m3 (e4m3fn: no infinities, ±448 the largest finite value) as
// an fp8 KV cache does: a per-tensor scale amax/448, round to nearest even, saturating at ±448. An all-zero
// tensor stays zero.
func QuantizeBF16E4M3(bf16 []byte) []byte { return quantize(bf16, 448, E4M3) }

// QuantizeBF16E5M2 is QuantizeBF16E4M3 for e5m2: scale amax/57344, saturating at ±57344.
func QuantizeBF16E5M2(bf16 []byte) []byte { return quantize(bf16, 57344, E5M2) }

// quantize scales a bf16 tensor by amax/largest (its largest finite magnitude to the format's) and rounds each
// value with round.
func quantize(bf16 []byte, largest float64, round func(float64) byte) []byte {
	vals := make([]float64, len(bf16)/2)
	amax := 0.0
	for i := range vals {
		vals[i] = float64(math.Float32frombits(uint32(binary.LittleEndian.Uint16(bf16[2*i:])) << 16))
		if a := math.Abs(vals[i]); !math.IsNaN(a) && !math.IsInf(a, 0) {
			amax = max(amax, a)
		}
	}
	scale := amax / largest
	q := make([]byte, len(vals))
	for i, v := range vals {
		if scale > 0 {
			v /= scale
		}
		q[i] = round(v)
	}
	return q
}

// E4M3 rounds f to the nearest fp8 e4m3fn value (ties to even), saturating at ±448 (as a quantiser clamps
// before its cast); NaN stays NaN.
func E4M3(f float64) byte { return e4m3.round(f) }

// DecodeE4M3 is the value of an e4m3fn byte (NaN for 0x7F and 0xFF).
func DecodeE4M3(b byte) float64 {
	sign := 1.0
	if b&0x80 != 0 {
		sign = -1
	}
	e, m := int(b>>3&15), float64(b&7)
	switch {
	case b&0x7F == 0x7F:
		return math.NaN()
	case e == 0:
		return sign * m * math.Exp2(-9)
	}
	return sign * (1 + m/8) * math.Exp2(float64(e-7))
}

// E5M2 rounds f to the nearest fp8 e5m2 value (ties to even), saturating at ±57344; NaN stays NaN.
func E5M2(f float64) byte { return e5m2.round(f) }

// format is an fp8 layout: sign, then an exponent with bias, then mbits of mantissa. maxByte is the largest
// finite magnitude's bits (0x7E for e4m3fn, whose 0x7F is NaN; 0x7B for e5m2, above which lie the infinities).
type format struct {
	mbits   uint
	bias    int
	largest float64
	maxByte byte
}

var (
	e4m3 = format{mbits: 3, bias: 7, largest: 448, maxByte: 0x7E}
	e5m2 = format{mbits: 2, bias: 15, largest: 57344, maxByte: 0x7B}
)

// round rounds f to the nearest value of the format (ties to even), saturating at ±largest; NaN stays NaN.
func (ft format) round(f float64) byte {
	var sign byte
	if math.Signbit(f) {
		sign, f = 0x80, -f
	}
	switch {
	case math.IsNaN(f):
		return sign | 0x7F
	case f >= ft.largest:
		return sign | ft.maxByte
	}
	minExp := 1 - ft.bias
	e := math.Floor(math.Log2(f))
	if f == 0 || e < float64(minExp) {
		// Subnormal: units of 2^(minExp-mbits). A round up to 2^mbits units is the smallest normal, whose bits
		// are also 2^mbits.
		return sign | byte(math.RoundToEven(f*math.Exp2(float64(int(ft.mbits)-minExp))))
	}
	units := math.Exp2(float64(ft.mbits))
	m := math.RoundToEven((f/math.Exp2(e) - 1) * units)
	if m == units {
		e, m = e+1, 0
	}
	v := (int(e)+ft.bias)<<ft.mbits | int(m)
	if v > int(ft.maxByte) {
		return sign | ft.maxByte
	}
	return sign | byte(v)
}
