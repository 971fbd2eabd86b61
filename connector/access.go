package connector

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
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

// A NIXL handoff's locator (the producer agent's metadata, with its registered memory's keys, and where the
// chunk table lies) lets any NIXL peer read the payload with one-sided reads: the producer cannot challenge a
// read as the TCP transport challenges a fetch. So the record carries the locator sealed (AES-256-GCM, the
// handoff id as associated data) under a key derived from the secret, and only the consumer given the secret
// can open it. The producer's agent registers one staging arena, so a consumer that opened one locator holds
// keys to that arena: NIXL, like RDMA, trusts the peers it serves. docs/security.md says so.

// sealedLocator is a sealed locator as the record carries it.
type sealedLocator struct {
	Sealed string `json:"sealed"` // base64url: 12-byte nonce, then the ciphertext and its 16-byte tag
}

func locatorAEAD(secret []byte) (cipher.AEAD, error) {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte("splitzip nixl locator key\x00"))
	block, err := aes.NewCipher(mac.Sum(nil))
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// sealLocator seals a handoff's locator under its secret.
func sealLocator(loc json.RawMessage, secret []byte, id string) (json.RawMessage, error) {
	aead, err := locatorAEAD(secret)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(loc)+aead.Overhead())
	_, _ = rand.Read(nonce)
	b := aead.Seal(nonce, nonce, loc, []byte(id))
	return json.Marshal(sealedLocator{Sealed: base64.RawURLEncoding.EncodeToString(b)})
}

// openLocator opens a sealed locator with the consumer's secret: ErrAccess when the secret is not the one it
// was sealed under (or the record was altered).
func openLocator(rec json.RawMessage, secret []byte, id string) (json.RawMessage, error) {
	var s sealedLocator
	if err := json.Unmarshal(rec, &s); err != nil || s.Sealed == "" {
		return nil, fmt.Errorf("%w: handoff %s: the record's NIXL locator is not sealed", ErrMismatch, shortID(id))
	}
	b, err := base64.RawURLEncoding.DecodeString(s.Sealed)
	aead, aerr := locatorAEAD(secret)
	if err != nil || aerr != nil || len(b) < aead.NonceSize() {
		return nil, fmt.Errorf("%w: handoff %s: a malformed sealed NIXL locator", ErrMismatch, shortID(id))
	}
	loc, err := aead.Open(nil, b[:aead.NonceSize()], b[aead.NonceSize():], []byte(id))
	if err != nil {
		return nil, fmt.Errorf("%w: handoff %s: the NIXL locator does not open with this consumer's secret", ErrAccess, shortID(id))
	}
	return loc, nil
}
