package nixl

import "errors"

// Sentinel errors of this package; returned errors wrap them (compare with errors.Is). Failures of a transfer
// itself wrap the sentinels of connector/transport instead (ErrChecksum, ErrPeerClosed, ErrTimeout, …), so a
// consumer handles both payload transports alike.
var (
	// ErrNoLibrary: libnixl_capi.so could not be loaded (see [Load] for where it is looked for).
	ErrNoLibrary = errors.New("splitzip/nixl: NIXL library not found (libnixl_capi.so; pip install nixl-cu13, or set " + libraryEnv + ")")
	// ErrLibrary: the library lacks an entry point this package needs (another NIXL version).
	ErrLibrary = errors.New("splitzip/nixl: unsupported NIXL library")
	// ErrCall: a NIXL call failed; the error also wraps its Status.
	ErrCall = errors.New("splitzip/nixl: NIXL call failed")
	// ErrClosed: the agent, server or client is closed.
	ErrClosed = errors.New("splitzip/nixl: closed")
	// ErrArena: registered staging memory cannot hold a buffer of the size asked for.
	ErrArena = errors.New("splitzip/nixl: registered memory exhausted")
	// ErrOption: an invalid option.
	ErrOption = errors.New("splitzip/nixl: invalid option")
	// ErrLocator: a handoff's locator (the shard record's part for NIXL) is malformed.
	ErrLocator = errors.New("splitzip/nixl: malformed locator")
)
