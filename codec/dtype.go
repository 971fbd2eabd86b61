package codec

import (
	"fmt"
	"strings"
)

// DType identifies the element type of a tensor. The numeric values are the frame format's dtype byte
// (FORMAT.md) and never change.
type DType uint8

const (
	BF16    DType = 1
	FP16    DType = 2
	FP32    DType = 3
	FP8E5M2 DType = 4
	FP8E4M3 DType = 5
	Int8    DType = 6
	Uint8   DType = 7
	Int16   DType = 8
	Int32   DType = 9
	Int64   DType = 10
	FP64    DType = 11
	Bytes   DType = 12 // opaque bytes, carried raw
)

// dtypeInfo describes where the exponent sits in an element of a coded dtype.
type dtypeInfo struct {
	name     string
	size     int   // bytes per element
	expBits  uint8 // 0: carried raw
	expShift uint8 // position of the exponent field's lowest bit
	fastRaw  bool  // carried raw in fast mode (its exponent is already 4 bits), coded in high-ratio mode
	aliases  []string
}

var dtypes = [...]dtypeInfo{
	BF16:    {"bf16", 2, 8, 7, false, []string{"bfloat16", "torch.bfloat16"}},
	FP16:    {"fp16", 2, 5, 10, false, []string{"f16", "float16", "half", "torch.float16"}},
	FP32:    {"fp32", 4, 8, 23, false, []string{"f32", "float32", "float", "torch.float32"}},
	FP8E5M2: {"fp8_e5m2", 1, 5, 2, false, []string{"f8_e5m2", "float8_e5m2", "torch.float8_e5m2"}},
	FP8E4M3: {"fp8_e4m3", 1, 4, 3, true, []string{"f8_e4m3", "float8_e4m3fn", "fp8_e4m3fn", "torch.float8_e4m3fn"}},
	Int8:    {"int8", 1, 0, 0, false, []string{"i8", "torch.int8"}},
	Uint8:   {"uint8", 1, 0, 0, false, []string{"u8", "torch.uint8"}},
	Int16:   {"int16", 2, 0, 0, false, []string{"i16", "torch.int16"}},
	Int32:   {"int32", 4, 0, 0, false, []string{"i32", "torch.int32"}},
	Int64:   {"int64", 8, 0, 0, false, []string{"i64", "torch.int64"}},
	FP64:    {"fp64", 8, 0, 0, false, []string{"f64", "float64", "double", "torch.float64"}},
	Bytes:   {"bytes", 1, 0, 0, false, []string{"raw"}},
}

func (d DType) info() (dtypeInfo, bool) {
	if d == 0 || int(d) >= len(dtypes) {
		return dtypeInfo{}, false
	}
	return dtypes[d], true
}

// Valid reports whether d is a dtype this version knows.
func (d DType) Valid() bool { _, ok := d.info(); return ok }

// String returns the canonical lower-case name ("bf16", "fp8_e5m2", …).
func (d DType) String() string {
	if in, ok := d.info(); ok {
		return in.name
	}
	return fmt.Sprintf("dtype(%d)", uint8(d))
}

// Size is the element size in bytes (0 for an unknown dtype).
func (d DType) Size() int { in, _ := d.info(); return in.size }

// Coded reports whether the dtype's exponents are coded in fast mode (v1 frames): bf16, fp16, fp32 and
// fp8_e5m2. Other dtypes are carried raw in fast mode; see CodedIn for high-ratio mode, which adds fp8_e4m3.
func (d DType) Coded() bool { in, _ := d.info(); return in.expBits > 0 && !in.fastRaw }

// CodedIn reports whether mode m codes the dtype's exponents (otherwise its frames are raw).
func (d DType) CodedIn(m Mode) bool {
	in, _ := d.info()
	if m == ModeHighRatio {
		return in.expBits > 0
	}
	return in.expBits > 0 && !in.fastRaw
}

// ExponentBits is the width of the dtype's exponent field: 8 (bf16, fp32), 5 (fp16, fp8_e5m2), 4 (fp8_e4m3),
// 0 for dtypes without one.
func (d DType) ExponentBits() int { in, _ := d.info(); return int(in.expBits) }

// ResidualBits is the number of bits kept exact per element: sign and mantissa (0 for dtypes without an
// exponent field).
func (d DType) ResidualBits() int {
	in, _ := d.info()
	if in.expBits == 0 {
		return 0
	}
	return in.size*8 - int(in.expBits)
}

// MarshalText writes the canonical name, so DTypes read naturally in JSON.
func (d DType) MarshalText() ([]byte, error) {
	if !d.Valid() {
		return nil, fmt.Errorf("%w: %d", ErrDType, uint8(d))
	}
	return []byte(d.String()), nil
}

// UnmarshalText accepts the canonical names, torch and safetensors spellings (see ParseDType).
func (d *DType) UnmarshalText(b []byte) error {
	v, err := ParseDType(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// ParseDType accepts canonical names ("bf16"), torch names ("torch.bfloat16", "float16") and safetensors
// names ("BF16", "F8_E5M2"), case-insensitively.
func ParseDType(s string) (DType, error) {
	k := strings.ToLower(strings.TrimSpace(s))
	for i := range dtypes {
		in := dtypes[i]
		if in.name == "" {
			continue
		}
		if k == in.name {
			return DType(i), nil
		}
		for _, a := range in.aliases {
			if k == a {
				return DType(i), nil
			}
		}
	}
	return 0, fmt.Errorf("%w: %q (known: bf16, fp16, fp32, fp8_e5m2, fp8_e4m3, int8, uint8, int16, int32, int64, fp64, bytes)", ErrDType, s)
}
