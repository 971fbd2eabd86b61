package connector

import (
	"fmt"
	"strings"

	"github.com/splitzip/splitzip/codec"
	szn "github.com/splitzip/splitzip/nats"
)

// Mode chooses how a producer codes a handoff's frames: every frame of one handoff is coded in one mode, which
// its shard record names, so the consumer knows what to expect.
//
// Mode and Bypass combine: Bypass decides whether raw frames are allowed (BypassAuto), required
// (BypassAlways) or refused (BypassNever); Mode decides which codec modes are. Under BypassAuto with ModeAuto
// (the defaults) each handoff goes raw, fast or high-ratio, whichever the pipeline model predicts fastest
// (see modePolicy); ModeFast or ModeHighRatio under BypassAuto chooses between that mode and raw; under
// BypassNever, ModeAuto chooses between the two codec modes.
type Mode int

const (
	// ModeAuto picks per handoff the fastest of the modes allowed, by the pipeline model.
	ModeAuto Mode = iota
	// ModeFast codes exponents with 4-bit codes (codec.ModeFast): about 1.33× on real KV at memory speed,
	// on the CPU and the GPU kernels alike.
	ModeFast
	// ModeHighRatio codes exponents with a Huffman code (codec.ModeHighRatio), K and V of a layer each with
	// a code table learned online per layer (or the pinned one, WithCodeTable): about 1.47× on real KV. A host
	// cache codes it at about 2 GB/s a core to encode and 4 GB/s to decode, a GPU cache with the kernels.
	ModeHighRatio
)

func (m Mode) String() string {
	switch m {
	case ModeAuto:
		return "auto"
	case ModeFast:
		return "fast"
	case ModeHighRatio:
		return "high-ratio"
	}
	return fmt.Sprintf("mode(%d)", int(m))
}

// ParseMode reads "auto" (or ""), "fast" or "high-ratio" (and the spellings codec.ParseMode accepts).
func ParseMode(s string) (Mode, error) {
	if t := strings.ToLower(strings.TrimSpace(s)); t == "auto" || t == "" {
		return ModeAuto, nil
	}
	m, err := codec.ParseMode(s)
	if err != nil {
		return 0, fmt.Errorf("%w: mode %q (want auto, fast or high-ratio)", ErrOption, s)
	}
	if m == codec.ModeHighRatio {
		return ModeHighRatio, nil
	}
	return ModeFast, nil
}

// WithMode sets how frames are coded (default ModeAuto; producer).
func WithMode(m Mode) Option {
	return func(o *Options) error {
		if m < ModeAuto || m > ModeHighRatio {
			return optErr("mode %d", int(m))
		}
		o.Mode = m
		return nil
	}
}

// WithCodeTable pins the code table of high-ratio frames (producer): every layer's K and V are coded with t
// instead of tables learned from earlier handoffs. t must be for the cache's dtype (checked when the cache is
// registered) and code every exponent (codec.CodeTable.CodesAll; codec.Histogram.CodeTable gives such
// tables).
func WithCodeTable(t *codec.CodeTable) Option {
	return func(o *Options) error {
		if err := t.Validate(); err != nil {
			return optErr("code table: %v", err)
		}
		if !t.CodesAll() {
			return optErr("code table for %s leaves exponents without a code (and ESC has none)", t.DType)
		}
		o.CodeTable = t
		return nil
	}
}

// path is how one handoff's frames travel: raw, or coded in one codec mode.
type path int

const (
	pathRaw path = iota
	pathFast
	pathHighRatio
	numPaths
)

func (p path) String() string {
	return [...]string{"raw", "fast", "high-ratio"}[p]
}

// recordMode is the frame mode a shard record names for frames of path p.
func (p path) recordMode() string {
	switch p {
	case pathFast:
		return szn.FrameModeFast
	case pathHighRatio:
		return szn.FrameModeHighRatio
	}
	return ""
}

// allowedPaths are the paths a handoff may take under bypass and mode.
func allowedPaths(b Bypass, m Mode) (ok [numPaths]bool) {
	if b == BypassAlways {
		ok[pathRaw] = true
		return ok
	}
	ok[pathRaw] = b == BypassAuto
	ok[pathFast] = m == ModeAuto || m == ModeFast
	ok[pathHighRatio] = m == ModeAuto || m == ModeHighRatio
	return ok
}
