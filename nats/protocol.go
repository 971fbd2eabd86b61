package nats

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
)

// ProtocolVersion is the version of the control-plane protocol this build
// writes. Every record and message carries it in the JSON field "v"; a
// receiver rejects anything outside [MinProtocolVersion, ProtocolVersion]
// with ErrIncompatibleVersion, so mismatched peers fail clearly instead of
// misreading each other. Fields may be added without a bump (unknown fields
// are ignored); any change of meaning, removal or new required field bumps it.
//
// History:
//
//	1: initial version: shard records (one per tensor-parallel rank of a
//	   handoff), engine records, completion notices and acks.
const ProtocolVersion = 1

// MinProtocolVersion is the oldest protocol version this build accepts.
const MinProtocolVersion = 1

// envelope is the part of every record and message decoded first.
type envelope struct {
	V int `json:"v"`
}

// checkVersion reports whether v is accepted by this build.
func checkVersion(what string, v int) error {
	if v == 0 {
		return fmt.Errorf("%w: %s carries no protocol version (this build speaks v%d)",
			ErrIncompatibleVersion, what, ProtocolVersion)
	}
	if v < MinProtocolVersion || v > ProtocolVersion {
		return fmt.Errorf("%w: %s has protocol v%d, this build accepts v%d..v%d",
			ErrIncompatibleVersion, what, v, MinProtocolVersion, ProtocolVersion)
	}
	return nil
}

// decode checks the protocol version of data and then unmarshals it into dst.
func decode(what string, data []byte, dst any) error {
	var env envelope
	if err := json.Unmarshal(data, &env); err != nil {
		return fmt.Errorf("%w: %s is not valid JSON: %v", ErrInvalidRecord, what, err)
	}
	if err := checkVersion(what, env.V); err != nil {
		return err
	}
	if err := json.Unmarshal(data, dst); err != nil {
		return fmt.Errorf("%w: decoding %s: %v", ErrInvalidRecord, what, err)
	}
	return nil
}

// handoffIDBytes is the entropy of a handoff id: 128 bits.
const handoffIDBytes = 16

// handoffIDLen is the length of a handoff id: 16 bytes in unpadded URL-safe
// base64.
var handoffIDLen = base64.RawURLEncoding.EncodedLen(handoffIDBytes)

// NewHandoffID returns a fresh handoff id: 128 bits from crypto/rand encoded as
// 22 characters of unpadded URL-safe base64, usable as a key, a subject token
// and in URLs. It is unguessable, so holding the id is the capability to fetch
// the handoff.
func NewHandoffID() string {
	var b [handoffIDBytes]byte
	// crypto/rand.Read never returns an error on supported platforms (Go 1.24+).
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// ValidHandoffID reports an error wrapping ErrInvalidRecord unless id has the
// form produced by NewHandoffID.
func ValidHandoffID(id string) error {
	if len(id) != handoffIDLen {
		return fmt.Errorf("%w: handoff id %q: want %d characters of URL-safe base64",
			ErrInvalidRecord, id, handoffIDLen)
	}
	if _, err := base64.RawURLEncoding.DecodeString(id); err != nil {
		return fmt.Errorf("%w: handoff id %q is not URL-safe base64", ErrInvalidRecord, id)
	}
	return nil
}

// maxNameLen bounds engine ids and namespaces.
const maxNameLen = 128

// validName reports whether s is 1..maxNameLen characters of [A-Za-z0-9_-]:
// valid as a NATS subject token, a KV key and part of a bucket name.
func validName(s string) bool {
	if len(s) == 0 || len(s) > maxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// ValidEngineID reports an error wrapping ErrInvalidRecord unless id is 1 to
// 128 characters of [A-Za-z0-9_-] (a UUID qualifies).
func ValidEngineID(id string) error {
	if !validName(id) {
		return fmt.Errorf("%w: engine id %q: want 1..%d characters of [A-Za-z0-9_-]",
			ErrInvalidRecord, id, maxNameLen)
	}
	return nil
}
