package nats

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ShardRecord is one tensor-parallel rank's part of a handoff, published by that rank's producer worker on its
// own: TP ranks run in separate processes, so a handoff is as many records as ranks, all under one handoff id.
// The consumer of rank r reads the shard of rank r. Payloads never go through NATS: the consumer fetches the
// frames from Addr.
//
// A shard is published twice: open (Complete false) as soon as the save begins, so the consumer can start
// fetching while layers are still being encoded, and complete, with every frame's size and CRC32C, when the
// last layer is staged; the consumer checks what it received against the complete record.
type ShardRecord struct {
	V                 int    `json:"v"`                    // protocol version; PutShard sets it
	HandoffID         string `json:"id"`                   // NewHandoffID: names the handoff; fetching also takes its secret
	RequestID         string `json:"request_id,omitempty"` // the serving engine's request id, for logs
	ProducerEngineID  string `json:"producer"`             // completion notices go to it (NotifyDone)
	Rank              int    `json:"rank"`
	TPSize            int    `json:"tp_size"`
	Addr              string `json:"addr"`   // host:port of the rank's payload server (TCP); names the producer's agent (NIXL)
	LayoutFingerprint string `json:"layout"` // the KV layout; the consumer's must match exactly
	DType             string `json:"dtype"`  // KV element type, e.g. "bfloat16"
	Layers            int    `json:"layers"`
	Blocks            int    `json:"blocks"`
	BlocksPerFrame    int    `json:"blocks_per_frame"` // frames are layer-major, K then V of up to this many blocks
	Frames            int    `json:"frames"`
	Raw               bool   `json:"raw,omitempty"` // frames sent uncompressed (bypass)
	// Mode is how the frames' exponents are coded: FrameModeFast or FrameModeHighRatio (see FrameMode). A
	// record without it (older producers) is fast; a raw record is always fast.
	Mode     string `json:"mode,omitempty"`
	Complete bool   `json:"complete"`
	// SecretHash is a hash of the handoff's secret (never the secret, which only the consumer the handoff is
	// addressed to gets, outside the control plane), so that a consumer holding another secret can say so
	// before it dials. Empty: not stated.
	SecretHash string `json:"secret_hash,omitempty"`
	// Transport is how the payload moves: PayloadTCP (or empty: connector/transport, from Addr) or
	// PayloadNIXL (connector/nixl, from Locator).
	Transport string `json:"transport,omitempty"`
	// Locator is what the payload transport needs beyond Addr, opaque to the control plane: for NIXL, the
	// producer agent's metadata and where the handoff's chunk table lies in its registered memory.
	Locator json.RawMessage `json:"locator,omitempty"`

	FrameSizes   []uint64 `json:"frame_sizes,omitempty"` // complete records: encoded size per frame
	Checksums    []uint32 `json:"crc32c,omitempty"`      // complete records: CRC32C (Castagnoli) per frame
	RawBytes     uint64   `json:"raw_bytes,omitempty"`
	EncodedBytes uint64   `json:"encoded_bytes,omitempty"` // complete records: the sum of FrameSizes; PutShard sets it

	CreatedAt time.Time `json:"created_at"` // PutShard sets it when zero
	ExpiresAt time.Time `json:"expires_at"` // when the producer stops serving the payload
	// TTL sets ExpiresAt = CreatedAt + TTL when ExpiresAt is zero (default: the Plane's HandoffTTL).
	TTL time.Duration `json:"-"`
}

// Frame modes of a handoff (ShardRecord.Mode): every frame of one handoff is coded in one mode.
const (
	// FrameModeFast: each frame is one fast-mode frame (4-bit exponent codes) or a raw frame.
	FrameModeFast = "fast"
	// FrameModeHighRatio: each frame is two high-ratio frames (entropy-coded exponents, or raw), the layer's
	// K blocks then its V blocks, back to back.
	FrameModeHighRatio = "high-ratio"
)

// Payload transports of a handoff (ShardRecord.Transport).
const (
	// PayloadTCP: SplitZip's own TCP protocol (connector/transport), from the host:port in Addr.
	PayloadTCP = "tcp"
	// PayloadNIXL: one-sided reads over NIXL (connector/nixl) from the producer's registered memory, as
	// Locator describes.
	PayloadNIXL = "nixl"
)

// FrameMode is the record's frame mode, FrameModeFast when the record names none.
func (s *ShardRecord) FrameMode() string {
	if s.Mode == "" {
		return FrameModeFast
	}
	return s.Mode
}

func shardKey(id string, rank int) string { return id + ".r" + strconv.Itoa(rank) }

// Validate checks the record's structure: version, ids, rank, layout, framing, address, times, and for a
// complete record one size and checksum per frame. Errors wrap ErrInvalidRecord or ErrIncompatibleVersion.
func (s *ShardRecord) Validate() error {
	if err := checkIdentity("shard record", s.V, s.HandoffID, s.ProducerEngineID); err != nil {
		return err
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: handoff %s rank %d: "+format, append([]any{ErrInvalidRecord, s.HandoffID, s.Rank}, args...)...)
	}
	switch {
	case s.TPSize < 1 || s.Rank < 0 || s.Rank >= s.TPSize:
		return bad("rank outside a TP size of %d", s.TPSize)
	case s.LayoutFingerprint == "" || s.DType == "":
		return bad("empty layout fingerprint or dtype")
	case s.Layers < 1 || s.Blocks < 1 || s.BlocksPerFrame < 1:
		return bad("%d layers, %d blocks, %d blocks per frame", s.Layers, s.Blocks, s.BlocksPerFrame)
	case s.Frames != s.Layers*((s.Blocks+s.BlocksPerFrame-1)/s.BlocksPerFrame):
		return bad("%d frames for %d layers of %d blocks, %d per frame", s.Frames, s.Layers, s.Blocks, s.BlocksPerFrame)
	case s.Mode != "" && s.Mode != FrameModeFast && s.Mode != FrameModeHighRatio:
		return bad("frame mode %q (known: %s, %s)", s.Mode, FrameModeFast, FrameModeHighRatio)
	case s.Raw && s.FrameMode() != FrameModeFast:
		return bad("raw frames in mode %s", s.Mode)
	case s.CreatedAt.IsZero() || !s.ExpiresAt.After(s.CreatedAt):
		return bad("expiry %v not after creation %v", s.ExpiresAt, s.CreatedAt)
	}
	switch s.Transport {
	case "", PayloadTCP:
		if host, port, err := net.SplitHostPort(s.Addr); err != nil || host == "" || port == "" {
			return bad("address %q: want host:port", s.Addr)
		}
	case PayloadNIXL:
		if len(s.Locator) == 0 || !json.Valid(s.Locator) {
			return bad("a NIXL payload without a valid locator")
		}
	default:
		return bad("payload transport %q (known: %s, %s)", s.Transport, PayloadTCP, PayloadNIXL)
	}
	if s.Complete {
		if len(s.FrameSizes) != s.Frames || len(s.Checksums) != s.Frames {
			return bad("complete record with %d sizes and %d checksums for %d frames", len(s.FrameSizes), len(s.Checksums), s.Frames)
		}
		var sum uint64
		for _, n := range s.FrameSizes {
			sum += n
		}
		if sum != s.EncodedBytes {
			return bad("frame sizes add up to %d, encoded bytes say %d", sum, s.EncodedBytes)
		}
	}
	return nil
}

// checkIdentity checks what every record starts with: protocol version, handoff id, producer engine id.
func checkIdentity(what string, v int, id, producer string) error {
	if err := checkVersion(what, v); err != nil {
		return err
	}
	if err := ValidHandoffID(id); err != nil {
		return err
	}
	if err := ValidEngineID(producer); err != nil {
		return fmt.Errorf("handoff %s: producer: %w", id, err)
	}
	return nil
}

// CheckCompatible checks the record against the consumer's KV cache and request: the layout fingerprint, the
// layer count and the number of blocks loaded (ErrLayoutMismatch), and the dtype (ErrDTypeMismatch). The
// messages leave the handoff id out; callers name the handoff as they log it.
func (s *ShardRecord) CheckCompatible(layoutFingerprint, dtype string, layers, blocks int) error {
	switch {
	case s.LayoutFingerprint != layoutFingerprint:
		return fmt.Errorf("%w: KV layout %s, the consumer's %s", ErrLayoutMismatch, s.LayoutFingerprint, layoutFingerprint)
	case s.DType != dtype:
		return fmt.Errorf("%w: %s KV, the consumer's %s", ErrDTypeMismatch, s.DType, dtype)
	case s.Layers != layers:
		return fmt.Errorf("%w: %d layers, the consumer's %d", ErrLayoutMismatch, s.Layers, layers)
	case s.Blocks != blocks:
		return fmt.Errorf("%w: %d blocks, the consumer loads %d", ErrLayoutMismatch, s.Blocks, blocks)
	}
	return nil
}

// PutShard publishes a shard record. It sets V, CreatedAt (when zero), ExpiresAt (when zero: CreatedAt + TTL,
// at most HandoffTTL) and, for a complete record, EncodedBytes, then validates the record; an ExpiresAt beyond
// now + HandoffTTL is refused (ErrInvalidRecord), one already past too (ErrHandoffExpired). The open record
// (Complete false) must be new under its id and rank (ErrHandoffExists otherwise) and counts against
// MaxInFlight (ErrTooManyHandoffs) until DeleteShard or its expiry; the complete one replaces it. The record is
// stored before PutShard returns, so a consumer asking later finds it.
func (p *Plane) PutShard(ctx context.Context, rec *ShardRecord) error {
	if err := p.checkOpen(); err != nil {
		return err
	}
	now := time.Now()
	rec.V = ProtocolVersion
	if rec.CreatedAt.IsZero() {
		rec.CreatedAt = now
	}
	if rec.ExpiresAt.IsZero() {
		ttl := rec.TTL
		if ttl <= 0 || ttl > p.opts.HandoffTTL {
			ttl = p.opts.HandoffTTL
		}
		rec.ExpiresAt = rec.CreatedAt.Add(ttl)
	}
	if rec.Complete {
		rec.EncodedBytes = 0
		for _, n := range rec.FrameSizes {
			rec.EncodedBytes += n
		}
	}
	if err := rec.Validate(); err != nil {
		return err
	}
	if rec.ExpiresAt.After(now.Add(p.opts.HandoffTTL)) {
		return fmt.Errorf("%w: handoff %s rank %d expires at %v, beyond the handoff TTL %v",
			ErrInvalidRecord, rec.HandoffID, rec.Rank, rec.ExpiresAt, p.opts.HandoffTTL)
	}
	if !now.Before(rec.ExpiresAt) {
		return fmt.Errorf("%w: handoff %s rank %d expired at %s", ErrHandoffExpired, rec.HandoffID, rec.Rank,
			rec.ExpiresAt.Format(time.RFC3339Nano))
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("%w: encoding shard %s: %v", ErrInvalidRecord, rec.HandoffID, err)
	}
	key := shardKey(rec.HandoffID, rec.Rank)
	ctx, cancel := p.opCtx(ctx)
	defer cancel()
	if rec.Complete {
		if _, err := p.handoffs.Put(ctx, key, data); err != nil {
			return p.wrap("publishing shard "+key, err)
		}
		return nil
	}
	if err := p.reserve(key, rec.ExpiresAt, now); err != nil {
		return err
	}
	if _, err := p.handoffs.Create(ctx, key, data); err != nil {
		p.release(key)
		if errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("%w: %s", ErrHandoffExists, key)
		}
		return p.wrap("publishing shard "+key, err)
	}
	return nil
}

// WaitShard returns rank's shard of handoff id, waiting for it to be published, and with complete for its
// complete version: it watches the key, so a record published after the call is seen at once. It waits until
// ctx is done, or at most HandoffTTL when ctx has no deadline; then the error wraps ErrUnknownHandoff and the
// context error. A record withdrawn by its producer (DeleteShard) gives ErrHandoffReleased, an expired one
// ErrHandoffExpired, a malformed one ErrInvalidRecord or ErrIncompatibleVersion. After a reconnect WaitShard
// watches anew; if the server restarted meanwhile (or the bucket was missing: the server lost its state) and
// the record is not there, it fails with ErrServerRestarted (wrapping ErrUnknownHandoff) rather than wait for a
// record that was probably lost.
// Connection trouble gives ErrTimeout, ErrDisconnected or ErrClosed.
func (p *Plane) WaitShard(ctx context.Context, id string, rank int, complete bool) (*ShardRecord, error) {
	key := shardKey(id, rank)
	var rec *ShardRecord
	err := p.waitKey(ctx, id, key, func(e jetstream.KeyValueEntry) (bool, error) {
		var r ShardRecord
		if err := decode("shard record "+key, e.Value(), &r); err != nil {
			return true, err
		}
		if err := r.Validate(); err != nil {
			return true, err
		}
		if r.HandoffID != id || r.Rank != rank {
			return true, fmt.Errorf("%w: record under %s is for handoff %s rank %d", ErrInvalidRecord, key, r.HandoffID, r.Rank)
		}
		rec = &r
		if !time.Now().Before(r.ExpiresAt) {
			return true, fmt.Errorf("%w: handoff %s expired at %s", ErrHandoffExpired, id, r.ExpiresAt.Format(time.RFC3339Nano))
		}
		return r.Complete || !complete, nil
	})
	if err != nil {
		return nil, err
	}
	return rec, nil
}

// DeleteShard withdraws rank's shard of handoff id (the producer calls it once the payload was fetched, or to
// abort) and frees its in-flight slot. Consumers waiting for it get ErrHandoffReleased. Deleting an unknown
// one is not an error.
func (p *Plane) DeleteShard(ctx context.Context, id string, rank int) error {
	if err := p.checkOpen(); err != nil {
		return err
	}
	if err := ValidHandoffID(id); err != nil {
		return fmt.Errorf("%w: %w", ErrUnknownHandoff, err)
	}
	key := shardKey(id, rank)
	p.release(key)
	ctx, cancel := p.opCtx(ctx)
	defer cancel()
	if err := p.handoffs.Delete(ctx, key); err != nil {
		return p.wrap("deleting shard "+key, err)
	}
	return nil
}
