package pybind

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/kernels/cuda"
)

// Error kinds: the bracketed prefix of every error message this package returns. errorKinds lists them all;
// ErrorKinds hands the list to the Python package, which maps each kind to an exception class
// (splitzip_connector/errors.py) and whose tests check that the mapping covers exactly this list.
const (
	// codec and binding kinds (kindOf)
	KindBadMagic  = "bad_magic"
	KindVersion   = "version"
	KindCorrupt   = "corrupt"
	KindChecksum  = "checksum" // codec.ErrChecksum: the payload checksum of a frame that carries one
	KindTruncated = "truncated"
	KindDType     = "dtype"
	KindSize      = "size"
	KindBuffer    = "buffer"
	KindCodebook  = "codebook"
	KindOption    = "option"
	KindHandle    = "handle"
	KindIO        = "io"
	KindNoDriver  = "no_driver"
	KindCUDA      = "cuda"
	KindAlignment = "alignment"
	KindArgument  = "argument"
	KindInternal  = "internal"

	// connector kinds (connectorKind in connector.go)
	KindLayout         = "layout"          // connector.ErrLayout, ErrBlocks: the KV cache description or block ids
	KindNotRegistered  = "not_registered"  // no KV cache registered yet
	KindClosed         = "closed"          // the producer, consumer or plane was closed
	KindDuplicate      = "duplicate"       // request already in flight
	KindUnknownRequest = "unknown_request" // SaveLayer for a request without Begin
	KindMismatch       = "mismatch"        // handoff made by an incompatible producer (model, layout, dtype, TP)
	KindFrame          = "frame"           // a bad frame arrived
	KindBusy           = "busy"            // staging memory or the in-flight bound is exhausted
	KindHandoff        = "handoff"         // unknown, expired or released handoff
	KindControlPlane   = "control_plane"   // NATS trouble (disconnected, invalid record, …)
	KindTimeout        = "timeout"         // a wait ran out
	KindAccess         = "access"          // a handoff secret missing or not the handoff's, or TLS refused a peer
)

// errorKinds is every kind above, in declaration order; TestErrorKindsListsEveryConstant keeps it complete.
var errorKinds = []string{
	KindBadMagic, KindVersion, KindCorrupt, KindChecksum, KindTruncated, KindDType, KindSize, KindBuffer, KindCodebook,
	KindOption, KindHandle, KindIO, KindNoDriver, KindCUDA, KindAlignment, KindArgument, KindInternal,
	KindLayout, KindNotRegistered, KindClosed, KindDuplicate, KindUnknownRequest, KindMismatch, KindFrame,
	KindBusy, KindHandoff, KindControlPlane, KindTimeout, KindAccess,
}

// ErrorKinds returns every error kind this package's messages may carry, comma-separated, in declaration
// order.
func ErrorKinds() string { return strings.Join(errorKinds, ",") }

var (
	// errHandle is returned for a handle that was never issued or was already released.
	errHandle = errors.New("splitzip: invalid or released handle")
	// errArgument is returned for an argument no caller of the Python package should pass (a null address…).
	errArgument = errors.New("splitzip: invalid argument")
)

// extraKinds are classifiers of other files (cuda.go), tried before the generic ones.
var extraKinds []func(error) string

// kindOf classifies err by the sentinel it wraps.
func kindOf(err error) string {
	for _, k := range extraKinds {
		if kind := k(err); kind != "" {
			return kind
		}
	}
	var res cuda.Result
	var pathErr *fs.PathError
	switch {
	case errors.Is(err, codec.ErrBadMagic):
		return KindBadMagic
	case errors.Is(err, codec.ErrVersion):
		return KindVersion
	case errors.Is(err, codec.ErrChecksum):
		return KindChecksum
	case errors.Is(err, codec.ErrHeaderCRC), errors.Is(err, codec.ErrCorrupt):
		return KindCorrupt
	case errors.Is(err, codec.ErrTruncated):
		return KindTruncated
	case errors.Is(err, codec.ErrDType):
		return KindDType
	case errors.Is(err, codec.ErrSize):
		return KindSize
	case errors.Is(err, codec.ErrShortBuffer):
		return KindBuffer
	case errors.Is(err, codec.ErrCodebook):
		return KindCodebook
	case errors.Is(err, codec.ErrOption):
		return KindOption
	case errors.Is(err, errHandle):
		return KindHandle
	case errors.Is(err, errArgument):
		return KindArgument
	case errors.Is(err, cuda.ErrNoDriver):
		return KindNoDriver
	case errors.As(err, &res), errors.Is(err, cuda.ErrDriverTooOld), errors.Is(err, cuda.ErrClosed):
		return KindCUDA
	case errors.As(err, &pathErr):
		return KindIO
	}
	return KindInternal
}

// wrap prefixes err's message with its kind; nil stays nil.
func wrap(err error) error {
	if err == nil {
		return nil
	}
	return &kindError{kind: kindOf(err), err: err}
}

type kindError struct {
	kind string
	err  error
}

func (e *kindError) Error() string { return "[" + e.kind + "] " + e.err.Error() }
func (e *kindError) Unwrap() error { return e.err }

// recoverInto turns a panic into an internal error, so a bug in Go raises in Python instead of killing the
// interpreter. Use as `defer recoverInto(&err)`.
func recoverInto(err *error) {
	if r := recover(); r != nil {
		*err = &kindError{kind: KindInternal, err: fmt.Errorf("splitzip: internal error: %v", r)}
	}
}
