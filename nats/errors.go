package nats

import "errors"

// Sentinel errors. Every error returned by this package that describes one of
// these conditions wraps the sentinel, so callers compare with errors.Is and
// turn it into a per-request failure. Messages are prefixed "splitzip/nats: ".
var (
	// ErrInvalidOption reports a bad configuration value, detected when the
	// option is applied or when Connect combines the options.
	ErrInvalidOption = errors.New("splitzip/nats: invalid option")

	// ErrIncompatibleVersion reports a record or message written with a
	// protocol version this build does not accept (see ProtocolVersion).
	ErrIncompatibleVersion = errors.New("splitzip/nats: incompatible protocol version")

	// ErrInvalidRecord reports a malformed shard record, engine record or
	// completion notice (bad id, missing fields, inconsistent frame tables).
	ErrInvalidRecord = errors.New("splitzip/nats: invalid record")

	// ErrUnknownHandoff reports a handoff id the control plane has no record
	// of: never published, released by its producer, or expired and purged
	// after the grace period (Options.ExpiredGrace).
	ErrUnknownHandoff = errors.New("splitzip/nats: unknown handoff")

	// ErrHandoffExpired reports a handoff whose expiry time has passed. The
	// producer may already have freed the payload.
	ErrHandoffExpired = errors.New("splitzip/nats: handoff expired")

	// ErrHandoffReleased reports a handoff its producer withdrew (DeleteShard)
	// while a consumer was waiting for it or before it read it.
	ErrHandoffReleased = errors.New("splitzip/nats: handoff released by producer")

	// ErrHandoffExists reports an open PutShard under a handoff id and rank
	// already in use.
	ErrHandoffExists = errors.New("splitzip/nats: handoff id already exists")

	// ErrTooManyHandoffs reports that this Plane already has
	// Options.MaxInFlight undeleted, unexpired shard records.
	ErrTooManyHandoffs = errors.New("splitzip/nats: too many in-flight handoffs")

	// ErrLayoutMismatch reports a handoff whose KV layout fingerprint, layer
	// count or block count differs from what the consumer expects
	// (ShardRecord.CheckCompatible).
	ErrLayoutMismatch = errors.New("splitzip/nats: KV layout mismatch")

	// ErrDTypeMismatch reports a handoff whose KV dtype differs from what the
	// consumer expects.
	ErrDTypeMismatch = errors.New("splitzip/nats: KV dtype mismatch")

	// ErrUnknownEngine reports an engine id that is not registered, or that
	// has no completion subscriber.
	ErrUnknownEngine = errors.New("splitzip/nats: unknown engine")

	// ErrCompletionRejected reports a completion notice the producer received
	// but its handler refused.
	ErrCompletionRejected = errors.New("splitzip/nats: completion rejected by producer")

	// ErrDisconnected reports that the connection to the NATS server was lost
	// (possibly only transiently) since a given epoch, or is down now.
	ErrDisconnected = errors.New("splitzip/nats: disconnected from NATS server")

	// ErrServerRestarted reports that the client reconnected to a different
	// server instance (a restart, or a failover to another cluster member)
	// since a given epoch; records published before may be lost.
	ErrServerRestarted = errors.New("splitzip/nats: NATS server restarted")

	// ErrClosed reports use of a Plane after Close.
	ErrClosed = errors.New("splitzip/nats: control plane closed")

	// ErrTimeout reports a control-plane operation that did not finish
	// within its deadline (Options.Timeout unless the context has one).
	ErrTimeout = errors.New("splitzip/nats: timeout")
)
