// Package connector is the engine-independent heart of the SplitZip KV connector: a prefill-side Producer
// and a decode-side Consumer that any engine binding (vLLM first) drives.
//
// # Data path
//
//	engine blocks ──encode (CPU codec or CUDA kernels)──▶ pinned/host staging ──TCP, P2P, chunked──▶ consumer
//	consumer ──decode each frame as it arrives──▶ its own blocks (other block ids)
//
// A handoff moves one request's KV blocks of one tensor-parallel rank as frames of a layer's K blocks then
// its V blocks (chunk.go: one SplitZip frame, or two in high-ratio mode). The producer encodes layers as the engine saves them (SaveLayer / SaveLayerAfter,
// so compression overlaps the prefill forward), into a bounded pool of staging memory, and serves them with
// connector/transport while later layers are still being encoded. A handoff reserves all the staging its
// frames can take before its first frame, in the order the engine began them: when the pool is spent, later
// handoffs wait holding nothing (backpressure), and one larger than the pool fails at once. The
// consumer decodes each frame while the next ones are on the wire. Once a request's layers are staged, its
// blocks are free for the engine (FinishedSending); staging is freed when the consumer's fetch completes or
// the handoff expires.
//
// # Control plane
//
// Metadata only, through a ControlPlane: a *nats.Plane (package nats) over NATS. The producer publishes a
// shard record per rank (address, layout fingerprint, dtype, block count) when the save begins, and again
// with every frame's size and CRC32C when it ends; the consumer waits for the record, checks that layouts
// match, fetches, checks the frames against the final record, and sends the producer a completion notice. A
// load ends done only when every layer arrived, verified and decoded; anything else — producer gone, a
// corrupted chunk, a NATS restart that lost the record, expiry, a layout or dtype mismatch, an unknown id —
// ends it failed with an error that says which, and the blocks must not be used.
//
// # Access
//
// A handoff has an id, which names it on the control plane (everyone who reads NATS sees it), and a secret
// (Handoff.Secret), which the engine passes only to the consumer the handoff is addressed to, through its own
// request path. The producer's transport serves the frames only to a fetch that proves it holds the secret
// (connector/transport/PROTOCOL.md); the shard record carries a hash of it at most, so a consumer given
// another secret fails with ErrAccess before it dials. WithTLS adds mutual TLS between the engines; the NATS
// connection has its own auth and TLS options (package nats). Operators' view: docs/security.md.
//
// # Modes and bypass
//
// Each handoff travels one way: raw frames, fast-mode frames (4-bit exponent codes, about 1.33×, at memory
// speed) or high-ratio frames (Huffman-coded exponents with per-layer K and V tables learned online, about
// 1.45×, at a few GB/s a core); its shard record says which. With WithMode(ModeAuto) and
// WithBypass(BypassAuto) (the defaults) the producer picks, per handoff, the way its pipeline model predicts
// fastest: about max(encode, wire / ratio, decode) plus filling and draining the pipeline, from codec rates
// it measures as it runs and the link rate (configured with WithLinkRate or the transport's rate limit, else
// measured), corrected by how long handoffs really took (policy.go). GPU caches code both modes with the kernels.
package connector
