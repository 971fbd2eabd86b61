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
// own: TP ranks run in separate processes, so no one process could write a HandoffRecord with every rank. The
// consumer of rank r reads the shard of rank r.
//
// A shard is published twice: open (Complete false) as soon as the save begins, so the consumer can start
// fetching while layers are still being encoded, and complete, with every frame's size and CRC32C, when the
// last layer is staged; the consumer checks what it received against the complete record.
type ShardRecord struct {
	V                 int    `json:"v"`
	HandoffID         string `json:"id"`
	RequestID         string `json:"request_id,omitempty"`
	ProducerEngineID  string `json:"producer"`
	Rank              int    `json:"rank"`
	TPSize            int    `json:"tp_size"`
	Addr              string `json:"addr"` // host:port of the rank's payload server
	LayoutFingerprint string `json:"layout"`
	DType             string `json:"dtype"`
	Layers            int    `json:"layers"`
	Blocks            int    `json:"blocks"`
	BlocksPerFrame    int    `json:"blocks_per_frame"` // frames are layer-major, K then V of up to this many blocks
	Frames            int    `json:"frames"`
	Raw               bool   `json:"raw,omitempty"` // frames sent uncompressed (bypass)
	Complete          bool   `json:"complete"`

	FrameSizes   []uint64 `json:"frame_sizes,omitempty"` // complete records: encoded size per frame
	Checksums    []uint32 `json:"crc32c,omitempty"`      // complete records: CRC32C per frame
	RawBytes     uint64   `json:"raw_bytes,omitempty"`
	EncodedBytes uint64   `json:"encoded_bytes,omitempty"`

	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	// TTL sets ExpiresAt = CreatedAt + TTL when ExpiresAt is zero (default: the Plane's HandoffTTL).
	TTL time.Duration `json:"-"`
}

func shardKey(id string, rank int) string { return id + ".r" + strconv.Itoa(rank) }

// Validate checks the record's structure.
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
	case s.CreatedAt.IsZero() || !s.ExpiresAt.After(s.CreatedAt):
		return bad("expiry %v not after creation %v", s.ExpiresAt, s.CreatedAt)
	}
	if host, port, err := net.SplitHostPort(s.Addr); err != nil || host == "" || port == "" {
		return bad("address %q: want host:port", s.Addr)
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

// PutShard publishes a shard record: the open one (Complete false) must be new under its id and rank
// (ErrHandoffExists otherwise) and counts against MaxInFlight until DeleteShard or expiry; the complete one
// replaces it.
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
// complete version. Errors as WaitHandoff.
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

// DeleteShard withdraws rank's shard of handoff id and frees its in-flight slot; deleting an unknown one is
// not an error.
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
