package nats

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// RankRecord describes the KV payload one tensor-parallel rank of the
// producer holds for a handoff.
type RankRecord struct {
	// Rank is the tensor-parallel rank, equal to the record's index in
	// HandoffRecord.Ranks.
	Rank int `json:"rank"`
	// Addr is the host:port of the payload server holding this rank's frames.
	Addr string `json:"addr"`
	// FrameSizes holds the encoded size in bytes of each layer's frame.
	FrameSizes []uint64 `json:"frame_sizes"`
	// Checksums holds the CRC32C (Castagnoli) of each encoded frame.
	Checksums []uint32 `json:"crc32c"`
	// RawBytes is the uncompressed size of this rank's KV cache.
	RawBytes uint64 `json:"raw_bytes"`
	// EncodedBytes is the sum of FrameSizes.
	EncodedBytes uint64 `json:"encoded_bytes"`
}

// HandoffRecord is the metadata of one request's KV cache that a producer
// (prefill) engine offers to a consumer (decode) engine. The payload itself
// never goes through NATS: the consumer fetches it from the rank addresses.
type HandoffRecord struct {
	// V is the protocol version; PutHandoff sets it.
	V int `json:"v"`
	// ID is the unguessable handoff id (NewHandoffID); PutHandoff assigns
	// one when empty.
	ID string `json:"id"`
	// RequestID is the serving engine's request id, for logs. Optional.
	RequestID string `json:"request_id,omitempty"`
	// ProducerEngineID identifies the producer engine; completion notices go
	// to it.
	ProducerEngineID string `json:"producer"`
	// LayoutFingerprint identifies the KV layout (model, block size, heads,
	// head size, layer count, parallelism); the consumer must match it exactly.
	LayoutFingerprint string `json:"layout"`
	// DType is the KV cache element type, e.g. "bfloat16".
	DType string `json:"dtype"`
	// Ranks holds one entry per tensor-parallel rank, in rank order.
	Ranks []RankRecord `json:"ranks"`
	// CreatedAt is when the record was published; PutHandoff sets it.
	CreatedAt time.Time `json:"created_at"`
	// ExpiresAt is when the producer stops serving the payload; PutHandoff
	// sets it to CreatedAt + HandoffTTL when zero.
	ExpiresAt time.Time `json:"expires_at"`
	// Meta carries optional application data.
	Meta map[string]string `json:"meta,omitempty"`
}

// NumLayers is the number of per-layer frames of each rank.
func (h *HandoffRecord) NumLayers() int {
	if len(h.Ranks) == 0 {
		return 0
	}
	return len(h.Ranks[0].FrameSizes)
}

// Validate checks the record's structure: version, id, producer, layout,
// dtype, one consistent entry per rank, times. Errors wrap ErrInvalidRecord
// or ErrIncompatibleVersion.
func (h *HandoffRecord) Validate() error {
	if err := checkIdentity("handoff record", h.V, h.ID, h.ProducerEngineID); err != nil {
		return err
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: handoff %s: "+format, append([]any{ErrInvalidRecord, h.ID}, args...)...)
	}
	if h.LayoutFingerprint == "" {
		return bad("empty layout fingerprint")
	}
	if h.DType == "" {
		return bad("empty dtype")
	}
	if len(h.Ranks) == 0 {
		return bad("no ranks")
	}
	layers := len(h.Ranks[0].FrameSizes)
	for i := range h.Ranks {
		r := &h.Ranks[i]
		if r.Rank != i {
			return bad("ranks[%d] has rank %d; want one entry per rank, in order", i, r.Rank)
		}
		if host, port, err := net.SplitHostPort(r.Addr); err != nil || host == "" || port == "" {
			return bad("rank %d address %q: want host:port", i, r.Addr)
		}
		if len(r.FrameSizes) == 0 {
			return bad("rank %d has no frames", i)
		}
		if len(r.FrameSizes) != layers {
			return bad("rank %d has %d frames, rank 0 has %d", i, len(r.FrameSizes), layers)
		}
		if len(r.Checksums) != len(r.FrameSizes) {
			return bad("rank %d has %d checksums for %d frames", i, len(r.Checksums), len(r.FrameSizes))
		}
		var sum uint64
		for _, n := range r.FrameSizes {
			sum += n
		}
		if sum != r.EncodedBytes {
			return bad("rank %d frame sizes add up to %d, encoded bytes say %d", i, sum, r.EncodedBytes)
		}
	}
	if h.CreatedAt.IsZero() || !h.ExpiresAt.After(h.CreatedAt) {
		return bad("expiry %v not after creation %v", h.ExpiresAt, h.CreatedAt)
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

// CheckExpiry returns an error wrapping ErrHandoffExpired if the record has
// expired at now.
func (h *HandoffRecord) CheckExpiry(now time.Time) error {
	if !now.Before(h.ExpiresAt) {
		return fmt.Errorf("%w: handoff %s expired at %s (%v ago)", ErrHandoffExpired, h.ID,
			h.ExpiresAt.Format(time.RFC3339Nano), now.Sub(h.ExpiresAt).Round(time.Millisecond))
	}
	return nil
}

// CheckCompatible checks the record against what the consumer expects: the
// layout fingerprint (ErrLayoutMismatch), the dtype (ErrDTypeMismatch) and,
// when tpSize > 0, the number of ranks (ErrLayoutMismatch).
func (h *HandoffRecord) CheckCompatible(layoutFingerprint, dtype string, tpSize int) error {
	if h.LayoutFingerprint != layoutFingerprint {
		return fmt.Errorf("%w: handoff %s has layout %q, consumer expects %q",
			ErrLayoutMismatch, h.ID, h.LayoutFingerprint, layoutFingerprint)
	}
	if h.DType != dtype {
		return fmt.Errorf("%w: handoff %s has dtype %q, consumer expects %q", ErrDTypeMismatch, h.ID, h.DType, dtype)
	}
	if tpSize > 0 && len(h.Ranks) != tpSize {
		return fmt.Errorf("%w: handoff %s has %d tensor-parallel ranks, consumer expects %d",
			ErrLayoutMismatch, h.ID, len(h.Ranks), tpSize)
	}
	return nil
}

// decodeHandoff decodes and validates a stored record.
func decodeHandoff(id string, data []byte) (*HandoffRecord, error) {
	var h HandoffRecord
	if err := decode("handoff record "+id, data, &h); err != nil {
		return nil, err
	}
	if err := h.Validate(); err != nil {
		return nil, err
	}
	if h.ID != id {
		return nil, fmt.Errorf("%w: record stored under %s carries id %s", ErrInvalidRecord, id, h.ID)
	}
	return &h, nil
}

// PutHandoff publishes rec. It fills in V, ID (when empty), CreatedAt and
// ExpiresAt (when zero: now + HandoffTTL), validates the record, and counts it
// against Options.MaxInFlight until DeleteHandoff or its expiry
// (ErrTooManyHandoffs). ExpiresAt may not lie beyond now + HandoffTTL. The
// record is stored before PutHandoff returns, so a consumer asking later finds
// it. Reusing an id fails with ErrHandoffExists.
func (p *Plane) PutHandoff(ctx context.Context, rec *HandoffRecord) error {
	if err := p.checkOpen(); err != nil {
		return err
	}
	now := time.Now()
	rec.V = ProtocolVersion
	if rec.ID == "" {
		rec.ID = NewHandoffID()
	}
	if rec.CreatedAt.IsZero() {
		rec.CreatedAt = now
	}
	if rec.ExpiresAt.IsZero() {
		rec.ExpiresAt = rec.CreatedAt.Add(p.opts.HandoffTTL)
	}
	if err := rec.Validate(); err != nil {
		return err
	}
	if rec.ExpiresAt.After(now.Add(p.opts.HandoffTTL)) {
		return fmt.Errorf("%w: handoff %s expires at %v, beyond the handoff TTL %v",
			ErrInvalidRecord, rec.ID, rec.ExpiresAt, p.opts.HandoffTTL)
	}
	if err := rec.CheckExpiry(now); err != nil {
		return err
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("%w: encoding handoff %s: %v", ErrInvalidRecord, rec.ID, err)
	}
	if err := p.reserve(rec.ID, rec.ExpiresAt, now); err != nil {
		return err
	}
	ctx, cancel := p.opCtx(ctx)
	defer cancel()
	if _, err := p.handoffs.Create(ctx, rec.ID, data); err != nil {
		p.release(rec.ID)
		if errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("%w: %s", ErrHandoffExists, rec.ID)
		}
		return p.wrap("publishing handoff "+rec.ID, err)
	}
	return nil
}

// reserve takes an in-flight slot for id, first dropping expired entries.
func (p *Plane) reserve(id string, expires, now time.Time) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, dup := p.inflight[id]; dup {
		return fmt.Errorf("%w: %s", ErrHandoffExists, id)
	}
	if len(p.inflight) >= p.opts.MaxInFlight {
		for k, exp := range p.inflight {
			if !now.Before(exp) {
				delete(p.inflight, k)
			}
		}
	}
	if len(p.inflight) >= p.opts.MaxInFlight {
		return fmt.Errorf("%w: %d handoffs published and neither released nor expired (limit %d)",
			ErrTooManyHandoffs, len(p.inflight), p.opts.MaxInFlight)
	}
	p.inflight[id] = expires
	return nil
}

func (p *Plane) release(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.inflight, id)
}

// InFlight is the number of handoffs this Plane published that are neither
// released nor expired.
func (p *Plane) InFlight() int {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, exp := range p.inflight {
		if now.Before(exp) {
			n++
		}
	}
	return n
}

// GetHandoff returns the record published under id. Errors wrap
// ErrUnknownHandoff (never published, released, or purged after expiry plus
// Options.ExpiredGrace), ErrHandoffExpired (the record is returned too),
// ErrIncompatibleVersion, ErrInvalidRecord, or a connection sentinel
// (ErrTimeout, ErrDisconnected, ErrClosed).
func (p *Plane) GetHandoff(ctx context.Context, id string) (*HandoffRecord, error) {
	if err := p.checkOpen(); err != nil {
		return nil, err
	}
	if err := ValidHandoffID(id); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnknownHandoff, err)
	}
	ctx, cancel := p.opCtx(ctx)
	defer cancel()
	e, err := p.handoffs.Get(ctx, id)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, fmt.Errorf("%w: %s (never published, released by its producer, or expired and purged)",
				ErrUnknownHandoff, id)
		}
		return nil, p.wrap("reading handoff "+id, err)
	}
	return p.entryRecord(id, e)
}

// entryRecord decodes a Put entry and checks its expiry.
func (p *Plane) entryRecord(id string, e jetstream.KeyValueEntry) (*HandoffRecord, error) {
	rec, err := decodeHandoff(id, e.Value())
	if err != nil {
		return nil, err
	}
	if err := rec.CheckExpiry(time.Now()); err != nil {
		return rec, err
	}
	return rec, nil
}

// WaitHandoff returns the record published under id, waiting for it when it
// is not there yet: it watches the key, so a record published after the call
// is seen at once. It waits until ctx is done, or at most HandoffTTL when ctx
// has no deadline; then the error wraps ErrUnknownHandoff and the context
// error. A record withdrawn by its producer gives ErrHandoffReleased. After a
// reconnect WaitHandoff watches anew; if the server restarted meanwhile and
// the record is not there, it fails with ErrServerRestarted (wrapping
// ErrUnknownHandoff) rather than wait for a record that was probably lost.
// Other errors as GetHandoff.
func (p *Plane) WaitHandoff(ctx context.Context, id string) (*HandoffRecord, error) {
	var rec *HandoffRecord
	err := p.waitKey(ctx, id, id, func(e jetstream.KeyValueEntry) (bool, error) {
		var err error
		rec, err = p.entryRecord(id, e)
		return true, err
	})
	if err != nil && rec == nil || errors.Is(err, ErrHandoffReleased) {
		return nil, err
	}
	return rec, err
}

// waitKey watches key of handoff id until accept takes a stored value (done), the value is deleted
// (ErrHandoffReleased), or ctx ends (at most HandoffTTL without a deadline). It re-watches after reconnects
// and gives up on a key a restarted server no longer has (ErrServerRestarted).
func (p *Plane) waitKey(ctx context.Context, id, key string, accept func(jetstream.KeyValueEntry) (done bool, err error)) error {
	if err := p.checkOpen(); err != nil {
		return err
	}
	if err := ValidHandoffID(id); err != nil {
		return fmt.Errorf("%w: %w", ErrUnknownHandoff, err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.opts.HandoffTTL)
		defer cancel()
	}
	// The value is usually there already (a producer publishes before it hands the id out, and completes its
	// record before the last frame can arrive): one read then answers, where a watch costs a JetStream consumer.
	if e, err := p.handoffs.Get(ctx, key); err == nil && e.Operation() == jetstream.KeyValuePut {
		if done, err := accept(e); done || err != nil {
			return err
		}
	}
	events := make(chan ConnEvent, 16)
	remove := p.OnConnEvent(func(ev ConnEvent) {
		select {
		case events <- ev:
		default: // a newer event will follow or the waiter re-reads anyway
		}
	})
	defer remove()
	var w waiter
	for {
		if err, again := w.watchOnce(ctx, p, key, events, accept); !again {
			return err
		}
	}
}

// waiter is the state of one WaitHandoff across re-watches.
type waiter struct {
	restartedTo string // server id, once a restart was seen during the wait
	failures    int    // consecutive failed watch attempts
}

// watchOnce runs one watch of key id; again asks the caller to watch anew. Each stored value goes to accept,
// which decodes it and says whether it is the one waited for (done) or the watch should go on.
func (w *waiter) watchOnce(ctx context.Context, p *Plane, id string, events <-chan ConnEvent,
	accept func(jetstream.KeyValueEntry) (done bool, err error)) (err error, again bool) {
	// The watch lives as long as its context: cancel it when this attempt
	// ends, not before.
	epoch := p.Epoch()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	kw, err := p.handoffs.Watch(wctx, id)
	if err != nil {
		// Take in the events that happened during the attempt.
		for drained := false; !drained; {
			select {
			case ev := <-events:
				if ev.Kind == Closed {
					return ErrClosed, false
				}
				if ev.Kind == Reconnected && ev.Restarted {
					w.restartedTo = ev.ServerID
				}
			default:
				drained = true
			}
		}
	}
	var updates <-chan jetstream.KeyValueEntry
	var retry <-chan time.Time
	switch {
	case err == nil:
		w.failures = 0
		defer func() { _ = kw.Stop() }()
		updates = kw.Updates()
	case ctx.Err() != nil:
		return p.waitExpired(ctx, id), false
	case p.checkOpen() != nil:
		return ErrClosed, false
	case !p.nc.IsConnected() || p.Epoch() != epoch || (w.restartedTo != "" && w.failures < 100):
		// Disconnected, reconnected meanwhile, or the restarted server is
		// still recovering: wait for the next event or retry shortly.
		w.failures++
		t := time.NewTimer(p.opts.ReconnectWait)
		defer t.Stop()
		retry = t.C
	default:
		return p.wrap("watching handoff "+id, err), false
	}
	for {
		select {
		case <-ctx.Done():
			return p.waitExpired(ctx, id), false
		case <-p.done:
			return ErrClosed, false
		case <-retry:
			return nil, true
		case e, ok := <-updates:
			if !ok {
				// The watch ended (subscription closed). Watch anew now if
				// connected, else after the Reconnected event.
				if p.nc.IsConnected() {
					return nil, true
				}
				updates = nil
				continue
			}
			if e == nil {
				// End of the initial values: the key is not there (yet).
				if w.restartedTo != "" {
					return fmt.Errorf("%w: handoff %s not found on the restarted server %s: %w",
						ErrServerRestarted, id, w.restartedTo, ErrUnknownHandoff), false
				}
				continue
			}
			switch e.Operation() {
			case jetstream.KeyValuePut:
				if done, err := accept(e); done || err != nil {
					return err, false
				}
			default:
				return fmt.Errorf("%w: %s", ErrHandoffReleased, id), false
			}
		case ev := <-events:
			switch ev.Kind {
			case Closed:
				return ErrClosed, false
			case Reconnected:
				if ev.Restarted {
					w.restartedTo = ev.ServerID
				}
				return nil, true // re-watch: the old consumer may be gone
			}
		}
	}
}

func (p *Plane) waitExpired(ctx context.Context, id string) error {
	return fmt.Errorf("%w: %s not published before the wait ended: %w", ErrUnknownHandoff, id, ctx.Err())
}

// DeleteHandoff withdraws the record (the producer calls it once all ranks
// completed, or to abort) and frees its in-flight slot. Consumers reading it
// later get ErrUnknownHandoff, waiting ones ErrHandoffReleased. Deleting an
// unknown id is not an error.
func (p *Plane) DeleteHandoff(ctx context.Context, id string) error {
	if err := p.checkOpen(); err != nil {
		return err
	}
	if err := ValidHandoffID(id); err != nil {
		return fmt.Errorf("%w: %w", ErrUnknownHandoff, err)
	}
	p.release(id)
	ctx, cancel := p.opCtx(ctx)
	defer cancel()
	if err := p.handoffs.Delete(ctx, id); err != nil {
		return p.wrap("deleting handoff "+id, err)
	}
	return nil
}
