package kernels

import (
	"fmt"

	"github.com/splitzip/splitzip/codec"
)

// Decode status codes the kernels write (format.cuh, enum Status).
const (
	StatusOK           = 0
	StatusBadMagic     = 1
	StatusBadVersion   = 2
	StatusBadCRC       = 3
	StatusUnsupported  = 4
	StatusSizeMismatch = 5
	StatusCorrupt      = 6
	StatusTruncated    = 7
)

// StatusError turns a decode status word into an error wrapping the codec's sentinel (nil for StatusOK).
func StatusError(status uint32) error {
	switch status {
	case StatusOK:
		return nil
	case StatusBadMagic:
		return fmt.Errorf("%w (GPU decode)", codec.ErrBadMagic)
	case StatusBadVersion:
		return fmt.Errorf("%w (GPU decode)", codec.ErrVersion)
	case StatusBadCRC:
		return fmt.Errorf("%w (GPU decode)", codec.ErrHeaderCRC)
	case StatusUnsupported:
		return fmt.Errorf("%w: the GPU decoders read raw frames, bf16 frames in the fast mode (4-bit codes, 4,096-element chunks; DecodeAsync), and bf16, fp8_e4m3 and fp8_e5m2 frames in the high-ratio mode into a destination of the frame's dtype (8,192- or 16,384-element chunks, no payload checksum; DecodeHighRatioDTypeAsync)", codec.ErrDType)
	case StatusSizeMismatch:
		return fmt.Errorf("%w: the frame holds a different number of bytes than the destination (GPU decode)", codec.ErrShortBuffer)
	case StatusCorrupt:
		return fmt.Errorf("%w (GPU decode)", codec.ErrCorrupt)
	case StatusTruncated:
		return fmt.Errorf("%w (GPU decode)", codec.ErrTruncated)
	}
	return fmt.Errorf("%w: GPU decode status %d", codec.ErrCorrupt, status)
}
