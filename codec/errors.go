package codec

import "errors"

// Sentinel errors. Errors returned by this package wrap one of these with %w and add detail (offsets,
// counts), so callers compare with errors.Is and people read the message.
var (
	// ErrBadMagic: the input does not start with a SplitZip frame header.
	ErrBadMagic = errors.New("splitzip: not a SplitZip frame (bad magic)")
	// ErrVersion: the frame was written by an unknown format version.
	ErrVersion = errors.New("splitzip: unsupported frame version")
	// ErrHeaderCRC: the header checksum does not match; the header is damaged.
	ErrHeaderCRC = errors.New("splitzip: header checksum mismatch")
	// ErrCorrupt: a header field or section is inconsistent (lengths, counts, offsets, escape positions).
	ErrCorrupt = errors.New("splitzip: corrupt frame")
	// ErrTruncated: the input is shorter than the frame's header says.
	ErrTruncated = errors.New("splitzip: truncated frame")
	// ErrDType: an unknown element type, or one the operation does not support.
	ErrDType = errors.New("splitzip: unsupported dtype")
	// ErrSize: the input length is not a whole number of elements, or exceeds the format's limits.
	ErrSize = errors.New("splitzip: invalid input size")
	// ErrShortBuffer: a caller-supplied destination is too small.
	ErrShortBuffer = errors.New("splitzip: destination buffer too small")
	// ErrCodebook: a codebook or code table is invalid or does not match the data's dtype.
	ErrCodebook = errors.New("splitzip: invalid codebook")
	// ErrChecksum: the payload checksum of a frame that carries one (flags bit 2) does not match; the payload is
	// damaged.
	ErrChecksum = errors.New("splitzip: payload checksum mismatch")
	// ErrOption: an invalid encoder or decoder option.
	ErrOption = errors.New("splitzip: invalid option")
)
