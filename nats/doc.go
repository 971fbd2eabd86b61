// Package nats is SplitZip's control plane: the metadata that lets a prefill
// (producer) engine hand a request's compressed KV cache to a decode
// (consumer) engine, carried over NATS with JetStream. Payloads never go
// through NATS; they move over direct TCP between the engines, at the
// addresses the handoff record names.
//
// # Connecting
//
// Connect(opts...) returns a *Plane. Options follow the nats.go style: an
// Options struct whose fields state their defaults, GetDefaultOptions, and
// validating Option functions (WithURL, WithUserInfo, WithToken,
// WithNKeyFile, WithCredentials, WithTLS, WithTLSConfig, WithTimeout,
// WithHandoffTTL, WithExpiredGrace, WithEngineTTL, WithMaxInFlight,
// WithStorage, WithReconnect, WithNamespace/WithBucketPrefix,
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
//	splitzip_N_handoffs               KV bucket: handoff id -> HandoffRecord,
//	                                  TTL HandoffTTL+ExpiredGrace
//	splitzip_N_engines                KV bucket: engine id -> Engine, TTL EngineTTL
//	splitzip.N.engine.<id>.done.<rank> request/reply: Completion -> ack
//
// # Handoff life cycle
//
//  1. The producer calls PutHandoff with the per-rank frame tables; the
//     record gets a 128-bit random URL-safe id (NewHandoffID), CreatedAt and
//     ExpiresAt = CreatedAt + HandoffTTL. It is stored in JetStream before
//     PutHandoff returns, so a consumer that asks later still finds it.
//  2. The consumer calls WaitHandoff (or GetHandoff) with the id. WaitHandoff
//     watches the key, so it also works when called before the producer
//     published. The consumer then checks CheckCompatible against its own
//     layout fingerprint, dtype and tensor-parallel size.
//  3. After fetching a rank's payload the consumer calls NotifyDone on the
//     producer engine; the producer's SubscribeCompletions handler acks it,
//     so a nil error means the producer got it.
//  4. The producer calls DeleteHandoff when all ranks are done (or to abort),
//     which frees its in-flight slot and the record.
//
// Resources: each Plane admits at most MaxInFlight handoffs that are neither
// deleted nor expired (ErrTooManyHandoffs beyond). Unclaimed records expire
// at ExpiresAt: readers then get ErrHandoffExpired; the server drops them
// ExpiredGrace later, after which the id reads as ErrUnknownHandoff.
//
// # Shard records (what the connector uses)
//
// With tensor parallelism every rank's worker is its own process, so no process can write a HandoffRecord
// holding every rank. The connector therefore publishes one ShardRecord per rank under the key
// "<handoff id>.r<rank>" in the same bucket (PutShard, WaitShard, DeleteShard): first an open record when a
// save begins (address, layout fingerprint, dtype, framing), so the consumer can fetch while layers are
// still being encoded, then the complete record with every frame's size and CRC32C. The consumer of rank r
// waits for shard r, and checks what it received against the complete record.
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
// ErrTimeout); a WaitHandoff in progress resumes after a reconnect and fails
// with ErrServerRestarted if, after a restart, the record is not there.
//
// What survives a restart: with FileStorage (the default) and a server that
// restarts on the same store directory after a graceful stop, handoff
// records and engine entries survive (tested with the Debian nats-server
// binary). A crash may lose the last writes, and MemoryStorage or a new
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
