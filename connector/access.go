package connector

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
)

// Access. A handoff's id names it on the control plane, where every engine (and whoever else reads NATS) sees
// it; fetching the KV cache takes the handoff's secret as well, which the producer gives to the consumer the
// handoff is addressed to only through the engine's own request path (Handoff.Secret; in vLLM the
// kv_transfer_params that go from the prefill engine through the proxy to the decode engine). The transport
// makes the consumer prove it holds the secret on every connection (connector/transport/PROTOCOL.md); the
// control plane carries at most its hash (ShardRecord.SecretHash), so that a consumer given the wrong secret
// says so instead of failing as "unknown handoff".

// secretBytes is a handoff secret's entropy: 256 bits.
const secretBytes = 32

// NewHandoffSecret returns a fresh handoff secret: 256 bits from crypto/rand as 43 characters of unpadded
// URL-safe base64. With tensor parallelism the engine's scheduler picks one per request (beside the handoff
// id) and every rank's producer serves its shard under it (BeginHandoff).
func NewHandoffSecret() string {
	var b [secretBytes]byte
	_, _ = rand.Read(b[:]) // never fails on supported platforms (Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// parseSecret decodes a secret made by NewHandoffSecret.
func parseSecret(s string) ([]byte, error) {
	if s == "" {
		return nil, fmt.Errorf("%w: no handoff secret (pass the Handoff the producer returned, secret included)", ErrAccess)
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) != secretBytes {
		return nil, fmt.Errorf("%w: a handoff secret is %d characters of URL-safe base64 (NewHandoffSecret), got %d characters",
			ErrAccess, base64.RawURLEncoding.EncodedLen(secretBytes), len(s))
	}
	return b, nil
}

// secretHash is what the control plane may carry of a secret: a SHA-256 under a label of its own, which
// reveals nothing of a 256-bit random secret.
func secretHash(secret []byte) string {
	h := sha256.New()
	h.Write([]byte("splitzip handoff secret hash\x00"))
	h.Write(secret)
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil))
}
