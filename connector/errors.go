package connector

import "errors"

// Sentinel errors; returned errors wrap them with details (request, handoff, layer).
var (
	ErrLayout         = errors.New("splitzip/connector: invalid KV layout")
	ErrBlocks         = errors.New("splitzip/connector: invalid block ids")
	ErrNotRegistered  = errors.New("splitzip/connector: no KV cache registered")
	ErrClosed         = errors.New("splitzip/connector: closed")
	ErrDuplicate      = errors.New("splitzip/connector: request already in flight")
	ErrUnknownRequest = errors.New("splitzip/connector: unknown request")
	ErrMismatch       = errors.New("splitzip/connector: handoff does not match this consumer")
	ErrFrame          = errors.New("splitzip/connector: bad frame in handoff")
	ErrStagingFull    = errors.New("splitzip/connector: staging memory exhausted")
	ErrOption         = errors.New("splitzip/connector: invalid option")
	ErrAccess         = errors.New("splitzip/connector: handoff secret missing or not the handoff's")
)
