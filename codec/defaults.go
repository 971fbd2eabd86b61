package codec

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"sync"
)

// default_codebooks.json holds the built-in codebooks, calibrated on the real KV calibration fixture
// (tests/data/kv_calibration.safetensors) by gen_defaults.go. fp16, fp32 and fp8_e5m2 books come from the same
// values converted exactly (fp32) or by rounding (fp16, fp8_e5m2).
//
//go:generate go run gen_defaults.go
//go:embed default_codebooks.json
var defaultCodebooksJSON []byte

var defaults struct {
	once  sync.Once
	books map[DType]*Codebook
	err   error
}

// DefaultCodebook returns the built-in codebook for a coded dtype. Callers must not modify it.
func DefaultCodebook(dt DType) (*Codebook, error) {
	defaults.once.Do(func() {
		var list []*Codebook
		if err := json.Unmarshal(defaultCodebooksJSON, &list); err != nil {
			defaults.err = fmt.Errorf("built-in codebooks: %w", err)
			return
		}
		defaults.books = map[DType]*Codebook{}
		for _, cb := range list {
			defaults.books[cb.DType] = cb
		}
	})
	if defaults.err != nil {
		return nil, defaults.err
	}
	if cb, ok := defaults.books[dt]; ok {
		return cb, nil
	}
	if !dt.Coded() {
		return nil, fmt.Errorf("%w: %s is carried raw and has no codebook", ErrCodebook, dt)
	}
	return nil, fmt.Errorf("%w: %s", errNoCodebook, dt)
}
