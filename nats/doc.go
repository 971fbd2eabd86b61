// Package nats is SplitZip's control plane: the metadata that lets a prefill
// (producer) engine hand a request's compressed KV cache to a decode
// (consumer) engine, carried over NATS with JetStream. Payloads never go
// through NATS; they move over direct TCP between the engines, at the
// address each shard record names.
//
// # Connecting
//
// Connect(opts...) returns a *Plane. Options follow the nats.go style: an
// Options struct whose fields state their defaults, GetDefaultOptions, and
// validating Option functions (WithURL, WithUserInfo, WithToken,
// WithNKeyFile, WithCredentials, WithTLS, WithTLSConfig, WithTimeout,
// WithHandoffTTL, WithExpiredGrace, WithEngineTTL, WithMaxInFlight,
// WithStorage, WithReplicas, WithReconnect, WithNamespace/WithBucketPrefix,
// WithEmbeddedServer, WithName). Bad values fail with ErrInvalidOption.
//
// Without WithURL, Connect starts an embedded nats-server in-process with
// JetStream (127.0.0.1, a free port, a temporary store directory unless
// WithEmbeddedServer says otherwise; user/password or token options become
// the server's auth) so one machine needs nothing else. Other processes on
// the machine join it with WithURL(plane.ClientURL()); the server lives as
// long as the Plane that started it. For several hosts, point every Plane at
// an external server or cluster with WithURL and the auth/TLS options.
//
// # Protocol
//
// Every record and message is JSON carrying "v", the ProtocolVersion; a
// receiver rejects versions outside [MinProtocolVersion, ProtocolVersion]
// with ErrIncompatibleVersion (history beside the constant). The version is
// not part of bucket names or subjects, so that mismatched peers meet and
// fail clearly instead of missing each other.
//
// Names, for namespace N (default "default"):
//
//	splitzip_N_handoffs                KV bucket: "<handoff id>.r<rank>" -> ShardRecord,
//	                                   TTL HandoffTTL+ExpiredGrace
//	splitzip_N_engines                 KV bucket: engine id -> Engine, TTL EngineTTL
//	splitzip.N.engine.<id>.done.<rank> request/reply: Completion -> ack
//
// # Handoff life cycle
//
// A handoff is one request's KV cache passing from a producer to a consumer
// under one handoff id: 128 random bits, URL-safe (NewHandoffID), the
// capability to fetch the payload. With tensor parallelism every rank's
// worker is its own process, so each rank publishes its own part, a
// ShardRecord, and the consumer of rank r deals only with shard r:
//
//  1. When a save begins, the producer's rank calls PutShard with the open
//     record (Complete false): payload address, layout fingerprint, dtype and
//     framing, so the consumer can fetch while layers are still being
//     encoded. PutShard sets CreatedAt and ExpiresAt (CreatedAt + the
//     record's TTL, at most HandoffTTL) and stores the record before it
//     returns, so a consumer that asks later still finds it.
//  2. The consumer calls WaitShard with the id and its rank. It watches the
//     key, so it also works when called before the producer published. The
//     consumer checks the record against its own cache (CheckCompatible) and
//     fetches the frames from the record's address.
//  3. Once every frame is encoded, the producer publishes the complete record
//     (Complete true), which adds each frame's size and CRC32C and replaces
//     the open one. The consumer waits for it (WaitShard with complete) and
//     checks what it received against it, end to end.
//  4. After fetching, the consumer calls NotifyDone on the producer engine;
//     the producer's SubscribeCompletions handler acks it, so a nil error
//     means the producer got it.
//  5. The producer calls DeleteShard once the payload was fetched (or to
//     abort), which frees its in-flight slot and the record.
//
// Resources: each Plane admits at most MaxInFlight open shard records that
// are neither deleted nor expired (ErrTooManyHandoffs beyond). Unclaimed
// records expire at ExpiresAt: readers then get ErrHandoffExpired; the server
// drops them ExpiredGrace later, after which the id reads as
// ErrUnknownHandoff.
//
// # Failures
//
// Every failure a connector must turn into a per-request error wraps a
// sentinel from errors.go: ErrUnknownHandoff, ErrHandoffExpired,
// ErrHandoffReleased, ErrLayoutMismatch, ErrDTypeMismatch,
// ErrIncompatibleVersion, ErrInvalidRecord, ErrUnknownEngine,
// ErrCompletionRejected, ErrServerRestarted, ErrDisconnected, ErrTimeout,
// ErrClosed.
//
// Server restarts and disconnects: the client reconnects by itself
// (WithReconnect; forever by default). Plane.OnConnEvent reports
// Disconnected, Reconnected (with Restarted true when the server instance
// changed) and Closed. Plane.Epoch counts disconnects: record it when a
// handoff starts and call CheckEpoch(epoch) when it ends or fails; it returns
// ErrServerRestarted or ErrDisconnected if the control plane was interrupted
// meanwhile. While disconnected, operations fail with ErrDisconnected (or
// ErrTimeout); a WaitShard in progress resumes after a reconnect and fails
// with ErrServerRestarted if, after a restart, the record is not there. A
// WaitShard that finds the handoff bucket missing (the server lost its state,
// perhaps before the wait began) waits for the bucket to be recreated and
// then fails the same way.
//
// What survives a restart: with FileStorage (the default) and a server that
// restarts on the same store directory after a graceful stop, shard
// records and engine entries survive (tested with the nats-server binary
// built from the module go.mod pins; see internal/natstest). A crash may lose the last writes, and MemoryStorage or a new
// store directory loses everything: the Plane then recreates the buckets and
// re-registers its engines at once, and lost handoffs read as
// ErrUnknownHandoff, which CheckEpoch lets the caller attribute to
// ErrServerRestarted. Right after a restart, before the buckets exist again,
// reads may take up to Options.Timeout to fail.
//
// The embedded server shares the Plane's process: it cannot restart without
// the Plane, and with the default temporary store directory its records go
// with it.
//
// # Engines
//
// RegisterEngine puts an Engine (id, role, address, tensor-parallel size,
// layout fingerprint) in the registry and refreshes it every EngineTTL/3;
// entries of engines that stop heartbeating vanish after EngineTTL. Engines
// lists them, LookupEngine finds one (ErrUnknownEngine). Close deregisters.
package nats
