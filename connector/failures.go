package connector

import (
	"context"
	"errors"

	"github.com/splitzip/splitzip/connector/transport"
	szn "github.com/splitzip/splitzip/nats"
)

// FailureKind classifies why a load failed, for metrics and for the engine's choice between recomputing
// the request and failing it (every kind means the blocks must not be used).
type FailureKind int

const (
	// FailOther: none of the kinds below.
	FailOther FailureKind = iota
	// FailUnknown: the control plane has no record of the handoff (never published, or lost with a NATS
	// restart), or the producer no longer offers it.
	FailUnknown
	// FailExpired: the handoff's time to live ran out before the consumer fetched it.
	FailExpired
	// FailReleased: the producer withdrew the handoff.
	FailReleased
	// FailMismatch: the handoff does not fit this consumer (layout, dtype, block count, protocol version).
	FailMismatch
	// FailCorrupt: a chunk failed its CRC-32C, or a frame failed to decode or disagreed with the completed
	// record: damage in transit, caught before anything counted as loaded.
	FailCorrupt
	// FailProducer: the producer could not be reached, went away mid-transfer, stalled past the I/O timeout,
	// or failed to produce a chunk.
	FailProducer
	// FailControlPlane: NATS was unreachable, timed out or restarted while the load needed it.
	FailControlPlane
	// FailTimeout: the load ran past its LoadTimeout.
	FailTimeout
	// FailClosed: the consumer closed with the load in flight.
	FailClosed
	// FailAccess: the consumer's secret is not the one the handoff's record (its hash, or a sealed NIXL
	// locator) was made with: parameters altered on the way, or a consumer the handoff is not for. (A producer
	// that refuses a fetch's proof answers as for an unknown id, so that refusal counts as FailUnknown.)
	FailAccess
	numFailureKinds
)

var failureNames = [numFailureKinds]string{"other", "unknown", "expired", "released", "mismatch", "corrupt", "producer", "control_plane", "timeout", "closed", "access"}

func (k FailureKind) String() string {
	if k < 0 || k >= numFailureKinds {
		return "other"
	}
	return failureNames[k]
}

// KindOf classifies a load's error (a Failure's Err).
func KindOf(err error) FailureKind {
	switch {
	case err == nil:
		return FailOther
	case errors.Is(err, ErrClosed), errors.Is(err, szn.ErrClosed):
		return FailClosed
	case errors.Is(err, ErrAccess):
		return FailAccess
	case errors.Is(err, transport.ErrChecksum), errors.Is(err, ErrFrame), errors.Is(err, transport.ErrProtocol):
		return FailCorrupt
	case errors.Is(err, ErrMismatch), errors.Is(err, szn.ErrLayoutMismatch), errors.Is(err, szn.ErrDTypeMismatch),
		errors.Is(err, szn.ErrIncompatibleVersion), errors.Is(err, transport.ErrIncompatibleVersion):
		return FailMismatch
	case errors.Is(err, szn.ErrHandoffExpired), errors.Is(err, transport.ErrExpired):
		return FailExpired
	case errors.Is(err, szn.ErrHandoffReleased):
		return FailReleased
	case errors.Is(err, szn.ErrServerRestarted), errors.Is(err, szn.ErrDisconnected), errors.Is(err, szn.ErrTimeout):
		return FailControlPlane
	case errors.Is(err, szn.ErrUnknownHandoff), errors.Is(err, transport.ErrUnknownHandoff):
		return FailUnknown
	case errors.Is(err, transport.ErrUnreachable), errors.Is(err, transport.ErrPeerClosed), errors.Is(err, transport.ErrTimeout),
		errors.Is(err, transport.ErrProducer), errors.Is(err, transport.ErrBusy), errors.Is(err, transport.ErrClosed):
		return FailProducer
	case errors.Is(err, context.DeadlineExceeded):
		return FailTimeout
	}
	return FailOther
}

// FailureCounts counts failed loads by kind (FailureKind's String names them).
type FailureCounts [numFailureKinds]int64

// Map returns the non-zero counts by kind name.
func (f FailureCounts) Map() map[string]int64 {
	m := map[string]int64{}
	for k, n := range f {
		if n > 0 {
			m[FailureKind(k).String()] = n
		}
	}
	return m
}
