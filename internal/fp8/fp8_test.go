package fp8

import (
	"math"
	"testing"

	"github.com/stretchr/testify/require"
)

// E4M3 gives every finite e4m3 value its own bits, rounds halfway cases to the even mantissa, saturates
// at ±448 and keeps NaN.
func TestE4M3(t *testing.T) {
	for b := range 256 {
		v := DecodeE4M3(byte(b))
		if math.IsNaN(v) {
			require.Equal(t, byte(b), E4M3(v)|byte(b)&0x80, "NaN %#x", b)
			continue
		}
		if b == 0x80 {
			require.Equal(t, byte(0x80), E4M3(math.Copysign(0, -1)))
			continue
		}
		require.Equal(t, byte(b), E4M3(v), "%#02x = %g", b, v)
		if next := byte(b + 1); b&0x7F < 0x7E && b != 0x7F {
			mid := (v + DecodeE4M3(next)) / 2
			want := byte(b)
			if b&1 == 1 { // ties go to the even bit pattern
				want = next
			}
			require.Equal(t, want, E4M3(mid), "halfway between %#02x and %#02x", b, next)
			require.Equal(t, byte(b), E4M3(v+(DecodeE4M3(next)-v)*0.49))
			require.Equal(t, next, E4M3(v+(DecodeE4M3(next)-v)*0.51))
		}
	}
	require.Equal(t, byte(0x7E), E4M3(1e9))
	require.Equal(t, byte(0xFE), E4M3(-464))
	require.Equal(t, byte(0x00), E4M3(math.Exp2(-11)), "below half the smallest subnormal")
}

// QuantizeBF16E4M3 scales each tensor so that its largest magnitude is 448.
func TestQuantizeBF16E4M3(t *testing.T) {
	bf16 := func(fs ...float32) []byte {
		var b []byte
		for _, f := range fs {
			u := math.Float32bits(f) >> 16
			b = append(b, byte(u), byte(u>>8))
		}
		return b
	}
	require.Equal(t, []byte{0x7E, 0xFE, 0x3C, 0x00}, QuantizeBF16E4M3(bf16(448, -448, 1.5, 0)), "scale 1")
	require.Equal(t, []byte{0x3C, 0xFE, 0x30}, QuantizeBF16E4M3(bf16(3, -896, 1)), "scale 2: 1.5, -448, 0.5")
	require.Equal(t, []byte{0, 0}, QuantizeBF16E4M3(bf16(0, 0)), "an all-zero tensor stays zero")
}

// E5M2: exact values stay exact, halfway values round to even, the
// range saturates.
func TestE5M2Quantiser(t *testing.T) {
	for _, c := range []struct {
		f    float64
		want byte
	}{
		{0, 0x00}, {1, 0x3C}, {-1, 0xBC}, {1.25, 0x3D}, {1.125, 0x3C}, {1.375, 0x3E}, {1.875, 0x40},
		{57344, 0x7B}, {1e9, 0x7B}, {-1e9, 0xFB}, {math.Exp2(-14), 0x04}, {math.Exp2(-16), 0x01},
		{3 * math.Exp2(-17), 0x02}, {math.Exp2(-17), 0x00}, {math.NaN(), 0x7F},
	} {
		require.Equal(t, c.want, E5M2(c.f), "%g", c.f)
	}
	q := QuantizeBF16E5M2([]byte{0x80, 0x3F, 0x00, 0x40, 0x00, 0xC0}) // 1, 2, -2: amax 2 maps to 57344, 1 to 28672
	require.Equal(t, []byte{0x77, 0x7B, 0xFB}, q)
}
