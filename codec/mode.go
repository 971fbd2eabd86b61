package codec

import (
	"fmt"
	"strings"
)

// Mode selects how an encoder codes exponents.
type Mode uint8

const (
	// ModeFast codes each exponent with a fixed-width code from a codebook (4 bits; exponents outside the
	// codebook escape to a side list) and writes version 1 frames. It is the default: the fastest path, the
	// one the GPU kernels share byte for byte.
	ModeFast Mode = iota
	// ModeHighRatio codes exponents with a length-limited canonical Huffman code (at most 8 bits, about 2.7
	// bits an exponent on real KV) in 32 interleaved lanes, and writes version 2 frames with the entropy flag.
	// By default the code is built from each frame's own exponent histogram (one extra read of the input).
	ModeHighRatio
)

// String returns "fast" or "high-ratio".
func (m Mode) String() string {
	switch m {
	case ModeFast:
		return "fast"
	case ModeHighRatio:
		return "high-ratio"
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// Valid reports whether m is a known mode.
func (m Mode) Valid() bool { return m <= ModeHighRatio }

// ParseMode accepts "fast" and "high-ratio" (also "high_ratio", "highratio", "ratio", "entropy"),
// case-insensitively.
func ParseMode(s string) (Mode, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "fast":
		return ModeFast, nil
	case "high-ratio", "high_ratio", "highratio", "ratio", "entropy":
		return ModeHighRatio, nil
	}
	return 0, fmt.Errorf("%w: mode %q (known: fast, high-ratio)", ErrOption, s)
}

// MarshalText writes the mode's name.
func (m Mode) MarshalText() ([]byte, error) {
	if !m.Valid() {
		return nil, fmt.Errorf("%w: mode %d", ErrOption, uint8(m))
	}
	return []byte(m.String()), nil
}

// UnmarshalText reads a name ParseMode accepts.
func (m *Mode) UnmarshalText(b []byte) error {
	v, err := ParseMode(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}
