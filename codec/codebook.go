package codec

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
)

// Codebook maps fixed-width codes to exponent values: Exponents[k] is the exponent that code k stands for.
// A codebook is built by calibration (the 2^Bits most frequent exponents of sample tensors), stored as a small
// JSON file, and copied into every frame it encodes, so decoding never needs it separately.
type Codebook struct {
	DType     DType
	Bits      uint8
	Exponents []uint8
	// Coverage is the fraction of calibration elements whose exponent is in the codebook (informational).
	Coverage float64
	// Samples is the number of calibration elements (informational).
	Samples uint64
}

// NewCodebook validates exponents for dt and returns a codebook of 2^bits entries. When fewer exponents are
// given, the rest are filled with unused exponent values (the frame format needs exactly 2^bits entries).
func NewCodebook(dt DType, bits int, exponents []uint8) (*Codebook, error) {
	if !dt.Coded() {
		return nil, fmt.Errorf("%w: dtype %s is carried raw and has no codebook", ErrCodebook, dt)
	}
	eb := dt.ExponentBits()
	if bits < 1 || bits > eb || bits > 8 {
		return nil, fmt.Errorf("%w: %d-bit codes for %s (1..%d)", ErrCodebook, bits, dt, min(eb, 8))
	}
	size := 1 << bits
	if len(exponents) > size {
		return nil, fmt.Errorf("%w: %d exponents for %d-bit codes (at most %d)", ErrCodebook, len(exponents), bits, size)
	}
	var seen [256]bool
	out := make([]uint8, 0, size)
	for _, e := range exponents {
		if int(e) >= 1<<eb {
			return nil, fmt.Errorf("%w: exponent %d out of range for %s (%d bits)", ErrCodebook, e, dt, eb)
		}
		if seen[e] {
			return nil, fmt.Errorf("%w: exponent %d listed twice", ErrCodebook, e)
		}
		seen[e] = true
		out = append(out, e)
	}
	for e := 0; len(out) < size; e++ {
		if !seen[e] {
			seen[e] = true
			out = append(out, uint8(e))
		}
	}
	return &Codebook{DType: dt, Bits: uint8(bits), Exponents: out}, nil
}

// validate checks a codebook that did not come from NewCodebook (JSON, a frame).
func (c *Codebook) validate() error {
	if c == nil {
		return fmt.Errorf("%w: nil", ErrCodebook)
	}
	_, err := NewCodebook(c.DType, int(c.Bits), c.Exponents)
	if err == nil && len(c.Exponents) != 1<<c.Bits {
		err = fmt.Errorf("%w: %d entries for %d-bit codes, need %d", ErrCodebook, len(c.Exponents), c.Bits, 1<<c.Bits)
	}
	return err
}

// Contains reports whether exponent e has a code.
func (c *Codebook) Contains(e uint8) bool { return slices.Contains(c.Exponents, e) }

// Equal reports whether two codebooks code the same way.
func (c *Codebook) Equal(o *Codebook) bool {
	return c != nil && o != nil && c.DType == o.DType && c.Bits == o.Bits && slices.Equal(c.Exponents, o.Exponents)
}

// codebookJSON is the file form: a format tag, so a stray JSON file is not mistaken for a codebook, and the
// exponents as numbers (a []uint8 would marshal as base64).
type codebookJSON struct {
	Format    string  `json:"format"`
	Version   int     `json:"version"`
	DType     DType   `json:"dtype"`
	Bits      uint8   `json:"bits"`
	Exponents []int   `json:"exponents"`
	Coverage  float64 `json:"coverage,omitempty"`
	Samples   uint64  `json:"samples,omitempty"`
}

// MarshalJSON writes the codebook's file form.
func (c *Codebook) MarshalJSON() ([]byte, error) {
	v := codebookJSON{Format: "splitzip-codebook", Version: 1, DType: c.DType, Bits: c.Bits, Coverage: c.Coverage, Samples: c.Samples}
	for _, x := range c.Exponents {
		v.Exponents = append(v.Exponents, int(x))
	}
	return json.Marshal(v)
}

// UnmarshalJSON reads and validates a codebook written by MarshalJSON.
func (c *Codebook) UnmarshalJSON(b []byte) error {
	var v codebookJSON
	if err := json.Unmarshal(b, &v); err != nil {
		return fmt.Errorf("%w: %v", ErrCodebook, err)
	}
	if v.Format != "splitzip-codebook" || v.Version != 1 {
		return fmt.Errorf("%w: not a splitzip codebook v1 (format %q, version %d)", ErrCodebook, v.Format, v.Version)
	}
	*c = Codebook{DType: v.DType, Bits: v.Bits, Coverage: v.Coverage, Samples: v.Samples}
	for _, x := range v.Exponents {
		if x < 0 || x > 255 {
			return fmt.Errorf("%w: exponent %d out of range", ErrCodebook, x)
		}
		c.Exponents = append(c.Exponents, uint8(x))
	}
	return c.validate()
}

// LoadCodebook reads a codebook JSON file.
func LoadCodebook(path string) (*Codebook, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c := new(Codebook)
	if err := json.Unmarshal(b, c); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Save writes the codebook as indented JSON.
func (c *Codebook) Save(path string) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// Histogram counts exponent values of one dtype over any number of tensors.
type Histogram struct {
	DType  DType
	Counts [256]uint64
	Total  uint64
}

// NewHistogram returns an empty histogram for a dtype with an exponent field (coded in either mode:
// fp8_e4m3 included).
func NewHistogram(dt DType) (*Histogram, error) {
	if !dt.CodedIn(ModeHighRatio) {
		return nil, fmt.Errorf("%w: dtype %s has no exponent field to count", ErrDType, dt)
	}
	return &Histogram{DType: dt}, nil
}

// Add counts the exponents of a little-endian tensor.
func (h *Histogram) Add(data []byte) error {
	return h.AddSegments([][]byte{data})
}

// AddSegments counts the exponents of the concatenation of segs (a tensor held in pieces, e.g. a paged KV
// cache's blocks), each a whole number of elements; with an error, nothing is counted. Small pieces count about
// twice as fast this way as added one by one.
func (h *Histogram) AddSegments(segs [][]byte) error {
	in, _ := h.DType.info()
	n := 0
	for i, b := range segs {
		if len(b)%in.size != 0 {
			return fmt.Errorf("%w: segment %d: %d bytes is not a whole number of %s elements", ErrSize, i, len(b), h.DType)
		}
		n += len(b)
	}
	countSegments(segs, h.DType, &h.Counts)
	h.Total += uint64(n / in.size)
	return nil
}

// Codebook returns the 2^bits most frequent exponents, most frequent first (ties: smaller exponent first).
func (h *Histogram) Codebook(bits int) (*Codebook, error) {
	if h.Total == 0 {
		return nil, fmt.Errorf("%w: no calibration samples", ErrCodebook)
	}
	n := 1 << h.DType.ExponentBits()
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		switch {
		case h.Counts[a] > h.Counts[b]:
			return -1
		case h.Counts[a] < h.Counts[b]:
			return 1
		}
		return 0
	})
	var exps []uint8
	for _, e := range order[:min(1<<bits, n)] {
		if h.Counts[e] > 0 {
			exps = append(exps, uint8(e))
		}
	}
	cb, err := NewCodebook(h.DType, bits, exps)
	if err != nil {
		return nil, err
	}
	cb.Coverage = h.Coverage(cb)
	cb.Samples = h.Total
	return cb, nil
}

// Coverage is the fraction of counted elements whose exponent the codebook codes.
func (h *Histogram) Coverage(cb *Codebook) float64 {
	if h.Total == 0 {
		return 0
	}
	var hit uint64
	for _, e := range cb.Exponents {
		hit += h.Counts[e]
	}
	return float64(hit) / float64(h.Total)
}

// Calibrate builds a codebook of 2^bits codes from sample tensors of dtype dt.
func Calibrate(dt DType, bits int, samples ...[]byte) (*Codebook, error) {
	h, err := NewHistogram(dt)
	if err != nil {
		return nil, err
	}
	for _, s := range samples {
		if err := h.Add(s); err != nil {
			return nil, err
		}
	}
	return h.Codebook(bits)
}

// errNoCodebook is returned when an encoder has no codebook for a coded dtype; it cannot happen with the
// built-in defaults but guards a custom DefaultCodebook.
var errNoCodebook = fmt.Errorf("%w: no codebook for dtype", ErrCodebook)
