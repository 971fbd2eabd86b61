package codec

import (
	"fmt"
	"runtime"
	"slices"
)

// EOption configures an Encoder. Options validate their argument, so a bad configuration fails in NewEncoder.
type EOption func(*encoderOptions) error

type encoderOptions struct {
	concurrency int
	codebooks   map[DType]*Codebook
	adaptive    bool
	mode        Mode
	checksum    bool
	tables      map[DType]*CodeTable
}

// parallelMin is the input size below which a single goroutine is faster than splitting the work.
const parallelMin = 1 << 20

// WithEncoderConcurrency sets how many goroutines encode one large input (default GOMAXPROCS; 1 disables
// splitting). Inputs under 1 MiB always use one.
func WithEncoderConcurrency(n int) EOption {
	return func(o *encoderOptions) error {
		if n < 1 {
			return fmt.Errorf("%w: concurrency %d, must be ≥ 1", ErrOption, n)
		}
		o.concurrency = n
		return nil
	}
}

// WithCodebook makes the encoder use cb for tensors of cb.DType instead of the built-in default.
func WithCodebook(cb *Codebook) EOption {
	return func(o *encoderOptions) error {
		if err := cb.validate(); err != nil {
			return err
		}
		o.codebooks[cb.DType] = cb
		return nil
	}
}

// WithAdaptiveCodebook makes the encoder calibrate a fresh codebook on every input it encodes (one extra read
// of the input). It gives the best ratio for data unlike any calibration set, at some speed.
func WithAdaptiveCodebook(on bool) EOption {
	return func(o *encoderOptions) error { o.adaptive = on; return nil }
}

// WithMode selects how exponents are coded: ModeFast (the default) or ModeHighRatio.
func WithMode(m Mode) EOption {
	return func(o *encoderOptions) error {
		if !m.Valid() {
			return fmt.Errorf("%w: mode %d", ErrOption, uint8(m))
		}
		o.mode = m
		return nil
	}
}

// WithChecksum makes the encoder store a CRC-32C of each frame's payload in its header (flags bit 2), which
// every decoder checks (ErrChecksum). Off by default: a transport that checksums frames itself need not pay
// for it twice; files turn it on. Frames with a checksum are version 2.
func WithChecksum(on bool) EOption {
	return func(o *encoderOptions) error { o.checksum = on; return nil }
}

// WithCodeTable makes a high-ratio encoder use t for tensors of t.DType instead of building a table from each
// frame's own exponents (a pinned table: one pass over the input instead of two). t must code every exponent
// (CodeTable.CodesAll; Histogram.CodeTable gives such tables). The encoder keeps its own copy.
func WithCodeTable(t *CodeTable) EOption {
	return func(o *encoderOptions) error {
		if err := checkEncodingTable(t); err != nil {
			return err
		}
		o.tables[t.DType] = &CodeTable{DType: t.DType, Lengths: slices.Clone(t.Lengths), Samples: t.Samples}
		return nil
	}
}

// DOption configures a Decoder.
type DOption func(*decoderOptions) error

type decoderOptions struct {
	concurrency int
}

// WithDecoderConcurrency sets how many goroutines decode one large frame (default GOMAXPROCS).
func WithDecoderConcurrency(n int) DOption {
	return func(o *decoderOptions) error {
		if n < 1 {
			return fmt.Errorf("%w: concurrency %d, must be ≥ 1", ErrOption, n)
		}
		o.concurrency = n
		return nil
	}
}

func defaultConcurrency() int { return runtime.GOMAXPROCS(0) }
