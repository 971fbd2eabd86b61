// Package transport moves a handoff's payload — the compressed KV cache of
// one request, as an ordered list of chunks — directly from the prefill
// worker (the producer, a [Server]) to the decode worker (the consumer,
// [Fetch]) over TCP. Control messages travel elsewhere (NATS); payload bytes
// never do.
//
// A transfer is chunked and pipelined at both ends:
//
//   - the producer may [Server.Offer] a payload whose chunks are still being
//     encoded ([StreamPayload]); each chunk is sent as soon as it is ready;
//   - the consumer opens several parallel connections, pulls chunk indices
//     from a shared work queue with a small window of requests in flight per
//     connection, verifies a CRC32C per chunk and hands every verified chunk
//     to its [Sink] while later chunks are still on the wire.
//
// Access: a handoff is offered under an id and a secret. On every
// connection the producer challenges the consumer with a fresh nonce and
// serves only one that proves, with an HMAC-SHA256 over the nonce and its
// hello, that it holds the secret; an unknown id and a wrong proof get the
// same answer, so a consumer without the secret learns nothing, and a
// recorded proof cannot be replayed. With WithTLSFiles on both sides the
// connections run over mutual TLS, which also keeps the payload from
// observers.
//
// Every read and write carries a deadline; a producer that is slow to
// produce a chunk keeps the connection alive with keepalive frames, a
// producer that died does not. Resources are bounded on both sides: chunk
// sizes and counts are validated before anything is allocated, the server
// limits concurrent connections and transfers and answers "busy" beyond
// them, and the consumer holds at most three chunk buffers per connection,
// drawn from a pool.
//
// A Fetch either delivers every chunk and returns nil, or returns an error
// wrapping one of the sentinels in errors.go; in the second case some chunks
// may already have been handed to the sink and the caller must discard them.
//
// The wire protocol is described byte by byte in PROTOCOL.md.
package transport
