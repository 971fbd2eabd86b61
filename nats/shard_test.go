package nats

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestShardPutWait(t *testing.T) {
	p := newPlane(t)
	require.True(t, p.Embedded())
	require.Contains(t, p.ClientURL(), "nats://127.0.0.1:")
	ctx := testCtx(t)

	open := sampleShard("prefill-0", 1, 2, 4)
	require.NoError(t, p.PutShard(ctx, open))
	require.Equal(t, ProtocolVersion, open.V)
	require.WithinDuration(t, open.CreatedAt.Add(p.Options().HandoffTTL), open.ExpiresAt, 0)
	require.Equal(t, 1, p.InFlight())

	// A second process on the same machine joins the embedded server and finds the open record at once.
	q := newPlane(t, WithURL(p.ClientURL()))
	require.False(t, q.Embedded())
	got, err := q.WaitShard(ctx, open.HandoffID, 1, false)
	require.NoError(t, err)
	require.True(t, open.CreatedAt.Equal(got.CreatedAt) && open.ExpiresAt.Equal(got.ExpiresAt))
	got.CreatedAt, got.ExpiresAt = open.CreatedAt, open.ExpiresAt // JSON drops the monotonic clock reading
	require.Equal(t, *open, *got)
	require.NoError(t, got.CheckCompatible(open.LayoutFingerprint, "bfloat16", 4, 4))
	// Rank 0 of the same handoff is its own record, not published yet.
	wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, err = q.WaitShard(wctx, open.HandoffID, 0, false)
	require.ErrorIs(t, err, ErrUnknownHandoff)

	require.ErrorIs(t, p.PutShard(ctx, sampleShardAs(open)), ErrHandoffExists, "an open record is new or refused")
	require.Equal(t, 1, p.InFlight())

	// The complete record replaces the open one; it does not take another in-flight slot.
	done := completed(open)
	require.NoError(t, p.PutShard(ctx, done))
	require.Equal(t, 1, p.InFlight())
	got, err = q.WaitShard(ctx, open.HandoffID, 1, true)
	require.NoError(t, err)
	require.True(t, got.Complete)
	require.Equal(t, done.FrameSizes, got.FrameSizes)
	require.Equal(t, done.Checksums, got.Checksums)
	var sum uint64
	for _, n := range done.FrameSizes {
		sum += n
	}
	require.Equal(t, sum, got.EncodedBytes, "PutShard adds up the frame sizes")
	got, err = q.WaitShard(ctx, open.HandoffID, 1, false)
	require.NoError(t, err)
	require.True(t, got.Complete, "a wait for the open record takes the complete one too")

	require.NoError(t, p.DeleteShard(ctx, open.HandoffID, 1))
	require.Equal(t, 0, p.InFlight())
	_, err = q.WaitShard(ctx, open.HandoffID, 1, false)
	require.ErrorIs(t, err, ErrHandoffReleased)
	require.NoError(t, p.DeleteShard(ctx, NewHandoffID(), 0), "deleting an unknown record is fine")
	require.ErrorIs(t, p.DeleteShard(ctx, "not-an-id", 0), ErrUnknownHandoff)
}

// sampleShardAs is a fresh open record under s's handoff id and rank.
func sampleShardAs(s *ShardRecord) *ShardRecord {
	r := sampleShard(s.ProducerEngineID, s.Rank, s.TPSize, s.Layers)
	r.HandoffID = s.HandoffID
	return r
}

func TestShardTTL(t *testing.T) {
	p := newPlane(t, WithHandoffTTL(time.Minute))
	ctx := testCtx(t)
	short := sampleShard("prefill-0", 0, 1, 1)
	short.TTL = 10 * time.Second
	require.NoError(t, p.PutShard(ctx, short))
	require.Equal(t, 10*time.Second, short.ExpiresAt.Sub(short.CreatedAt))
	long := sampleShard("prefill-0", 0, 1, 1)
	long.TTL = time.Hour
	require.NoError(t, p.PutShard(ctx, long))
	require.Equal(t, time.Minute, long.ExpiresAt.Sub(long.CreatedAt), "a TTL beyond HandoffTTL is capped")

	// An expiry set beyond the TTL is refused; so is one in the past.
	late := sampleShard("prefill-0", 0, 1, 1)
	late.CreatedAt = time.Now()
	late.ExpiresAt = late.CreatedAt.Add(time.Hour)
	require.ErrorIs(t, p.PutShard(ctx, late), ErrInvalidRecord)
	past := sampleShard("prefill-0", 0, 1, 1)
	past.CreatedAt = time.Now().Add(-2 * time.Second)
	past.ExpiresAt = time.Now().Add(-time.Second)
	require.ErrorIs(t, p.PutShard(ctx, past), ErrHandoffExpired)
	require.Equal(t, 2, p.InFlight())
}

func TestWaitShardBeforePublish(t *testing.T) {
	p := newPlane(t)
	ctx := testCtx(t)
	rec := sampleShard("prefill-0", 0, 1, 2)

	type result struct {
		rec *ShardRecord
		err error
	}
	res := make(chan result, 2)
	wait := func(complete bool) {
		r, err := p.WaitShard(ctx, rec.HandoffID, 0, complete)
		res <- result{r, err}
	}
	go wait(false)
	// The waiter's watch is a JetStream consumer: publish once it exists.
	require.Eventually(t, func() bool { return consumers(t, p) == 1 }, 10*time.Second, 5*time.Millisecond)
	require.NoError(t, p.PutShard(ctx, rec))
	r := <-res
	require.NoError(t, r.err)
	require.Equal(t, rec.HandoffID, r.rec.HandoffID)
	require.False(t, r.rec.Complete)
	require.Eventually(t, func() bool { return consumers(t, p) == 0 }, 10*time.Second, 5*time.Millisecond,
		"the watch is removed after the wait")

	// A wait for the complete record passes over the open one.
	go wait(true)
	require.Eventually(t, func() bool { return consumers(t, p) == 1 }, 10*time.Second, 5*time.Millisecond)
	select {
	case r := <-res:
		t.Fatalf("the wait for the complete record ended on the open one: %+v", r)
	case <-time.After(50 * time.Millisecond):
	}
	require.NoError(t, p.PutShard(ctx, completed(rec)))
	r = <-res
	require.NoError(t, r.err)
	require.True(t, r.rec.Complete)

	// A withdrawn record ends a wait with ErrHandoffReleased.
	other := sampleShard("prefill-0", 0, 1, 2)
	require.NoError(t, p.PutShard(ctx, other))
	go func() {
		r, err := p.WaitShard(ctx, other.HandoffID, 0, true)
		res <- result{r, err}
	}()
	require.Eventually(t, func() bool { return consumers(t, p) == 1 }, 10*time.Second, 5*time.Millisecond)
	require.NoError(t, p.DeleteShard(ctx, other.HandoffID, 0))
	require.ErrorIs(t, (<-res).err, ErrHandoffReleased)
}

func TestUnknownHandoff(t *testing.T) {
	p := newPlane(t)
	ctx := testCtx(t)
	_, err := p.WaitShard(ctx, "not-an-id", 0, false)
	require.ErrorIs(t, err, ErrUnknownHandoff)
	require.ErrorIs(t, err, ErrInvalidRecord)

	wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, err = p.WaitShard(wctx, NewHandoffID(), 0, false)
	require.ErrorIs(t, err, ErrUnknownHandoff)
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

func TestShardExpiry(t *testing.T) {
	p := newPlane(t, WithHandoffTTL(time.Second), WithExpiredGrace(time.Minute))
	ctx := testCtx(t)
	rec := sampleShard("prefill-0", 0, 1, 1)
	require.NoError(t, p.PutShard(ctx, rec))
	require.Equal(t, 1, p.InFlight())

	require.Eventually(t, func() bool {
		_, err := p.WaitShard(quickCtx(t), rec.HandoffID, 0, false)
		return errors.Is(err, ErrHandoffExpired)
	}, 10*time.Second, 20*time.Millisecond)
	require.Equal(t, 0, p.InFlight(), "expired records free their in-flight slot")
}

func TestShardPurgedAfterGrace(t *testing.T) {
	p := newPlane(t, WithHandoffTTL(time.Second), WithExpiredGrace(0), WithNamespace("purge"))
	ctx := testCtx(t)
	rec := sampleShard("prefill-0", 0, 1, 1)
	require.NoError(t, p.PutShard(ctx, rec))
	// The server drops the record after HandoffTTL + ExpiredGrace.
	require.Eventually(t, func() bool {
		wctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		_, err := p.WaitShard(wctx, rec.HandoffID, 0, false)
		return errors.Is(err, ErrUnknownHandoff) && errors.Is(err, context.DeadlineExceeded)
	}, 15*time.Second, 50*time.Millisecond)
}

func TestMaxInFlight(t *testing.T) {
	p := newPlane(t, WithMaxInFlight(2))
	ctx := testCtx(t)
	a, b, c := sampleShard("p", 0, 1, 1), sampleShard("p", 0, 1, 1), sampleShard("p", 0, 1, 1)
	require.NoError(t, p.PutShard(ctx, a))
	require.NoError(t, p.PutShard(ctx, b))
	require.ErrorIs(t, p.PutShard(ctx, c), ErrTooManyHandoffs)
	require.NoError(t, p.PutShard(ctx, completed(a)), "completing a record takes no slot")
	require.NoError(t, p.DeleteShard(ctx, a.HandoffID, 0))
	require.NoError(t, p.PutShard(ctx, c))
	require.Equal(t, 2, p.InFlight())
}

func TestShardValidation(t *testing.T) {
	valid := func() *ShardRecord {
		r := completed(sampleShard("prefill-0", 1, 2, 3))
		r.V = ProtocolVersion
		r.CreatedAt = time.Now()
		r.ExpiresAt = r.CreatedAt.Add(time.Minute)
		for _, n := range r.FrameSizes {
			r.EncodedBytes += n
		}
		return r
	}
	require.NoError(t, valid().Validate())
	cases := map[string]func(r *ShardRecord){
		"bad id":           func(r *ShardRecord) { r.HandoffID = "abc" },
		"bad producer":     func(r *ShardRecord) { r.ProducerEngineID = "a.b" },
		"rank beyond tp":   func(r *ShardRecord) { r.Rank = 2 },
		"negative rank":    func(r *ShardRecord) { r.Rank = -1 },
		"no tp":            func(r *ShardRecord) { r.TPSize = 0 },
		"no layout":        func(r *ShardRecord) { r.LayoutFingerprint = "" },
		"no dtype":         func(r *ShardRecord) { r.DType = "" },
		"no layers":        func(r *ShardRecord) { r.Layers = 0 },
		"no blocks":        func(r *ShardRecord) { r.Blocks = 0 },
		"frame count":      func(r *ShardRecord) { r.Frames++ },
		"bad addr":         func(r *ShardRecord) { r.Addr = "localhost" },
		"sizes count":      func(r *ShardRecord) { r.FrameSizes = r.FrameSizes[1:] },
		"checksum count":   func(r *ShardRecord) { r.Checksums = r.Checksums[:1] },
		"encoded total":    func(r *ShardRecord) { r.EncodedBytes++ },
		"expiry before":    func(r *ShardRecord) { r.ExpiresAt = r.CreatedAt },
		"no creation time": func(r *ShardRecord) { r.CreatedAt = time.Time{} },
		"unknown mode":     func(r *ShardRecord) { r.Mode = "turbo" },
		"raw high-ratio":   func(r *ShardRecord) { r.Raw, r.Mode = true, FrameModeHighRatio },
	}
	for name, mutate := range cases {
		r := valid()
		mutate(r)
		assert.ErrorIs(t, r.Validate(), ErrInvalidRecord, name)
	}
	r := valid()
	r.V = 0
	require.ErrorIs(t, r.Validate(), ErrIncompatibleVersion)
	r = valid()
	r.Complete, r.FrameSizes, r.Checksums, r.EncodedBytes = false, nil, nil, 0
	require.NoError(t, r.Validate(), "an open record has no frame table yet")

	r = valid()
	require.NoError(t, r.CheckCompatible(r.LayoutFingerprint, r.DType, 3, 4))
	require.ErrorIs(t, r.CheckCompatible("other-layout", r.DType, 3, 4), ErrLayoutMismatch)
	require.ErrorIs(t, r.CheckCompatible(r.LayoutFingerprint, "float16", 3, 4), ErrDTypeMismatch)
	require.ErrorIs(t, r.CheckCompatible(r.LayoutFingerprint, r.DType, 4, 4), ErrLayoutMismatch)
	require.ErrorIs(t, r.CheckCompatible(r.LayoutFingerprint, r.DType, 3, 5), ErrLayoutMismatch)

	p := newPlane(t)
	bad := sampleShard("prefill-0", 0, 1, 1)
	bad.Frames = 7
	require.ErrorIs(t, p.PutShard(testCtx(t), bad), ErrInvalidRecord)
	require.Equal(t, 0, p.InFlight())
}

// A record's frame mode survives the round trip through the server, and a record written without one (by a
// producer that knew only the fast mode) reads as fast.
func TestShardFrameMode(t *testing.T) {
	p := newPlane(t)
	ctx := testCtx(t)
	hr := sampleShard("prefill-0", 0, 1, 2)
	hr.Mode = FrameModeHighRatio
	require.NoError(t, p.PutShard(ctx, hr))
	got, err := p.WaitShard(ctx, hr.HandoffID, 0, false)
	require.NoError(t, err)
	require.Equal(t, FrameModeHighRatio, got.FrameMode())

	// An older producer's record, as it was stored: no "mode" key at all.
	old := sampleShard("prefill-0", 0, 1, 2)
	old.V, old.CreatedAt = ProtocolVersion, time.Now()
	old.ExpiresAt = old.CreatedAt.Add(time.Minute)
	data, err := json.Marshal(old)
	require.NoError(t, err)
	require.NotContains(t, string(data), `"mode"`)
	_, err = p.handoffs.Put(ctx, shardKey(old.HandoffID, 0), data)
	require.NoError(t, err)
	got, err = p.WaitShard(ctx, old.HandoffID, 0, false)
	require.NoError(t, err)
	require.Empty(t, got.Mode)
	require.Equal(t, FrameModeFast, got.FrameMode())

	// A mode this side does not know is refused with a message that names it.
	odd := sampleShard("prefill-0", 0, 1, 2)
	odd.Mode = "turbo"
	err = p.PutShard(ctx, odd)
	require.ErrorIs(t, err, ErrInvalidRecord)
	require.ErrorContains(t, err, `"turbo"`)
}

// A record stored under another handoff's or rank's key is refused, not taken for the one waited for.
func TestShardUnderWrongKey(t *testing.T) {
	p := newPlane(t)
	ctx := testCtx(t)
	rec := sampleShard("prefill-0", 0, 2, 1)
	require.NoError(t, p.PutShard(ctx, rec))
	e, err := p.handoffs.Get(ctx, shardKey(rec.HandoffID, 0))
	require.NoError(t, err)
	_, err = p.handoffs.Put(ctx, shardKey(rec.HandoffID, 1), e.Value())
	require.NoError(t, err)
	_, err = p.WaitShard(ctx, rec.HandoffID, 1, false)
	require.ErrorIs(t, err, ErrInvalidRecord)
}

func TestVersionMismatch(t *testing.T) {
	p := newPlane(t)
	ctx := testCtx(t)

	// A record written by a future peer.
	rec := sampleShard("prefill-0", 0, 1, 1)
	rec.V = ProtocolVersion + 1
	rec.CreatedAt = time.Now()
	rec.ExpiresAt = rec.CreatedAt.Add(time.Minute)
	data, err := json.Marshal(rec)
	require.NoError(t, err)
	_, err = p.handoffs.Put(ctx, shardKey(rec.HandoffID, 0), data)
	require.NoError(t, err)
	_, err = p.WaitShard(ctx, rec.HandoffID, 0, false)
	require.ErrorIs(t, err, ErrIncompatibleVersion)
	require.Contains(t, err.Error(), "protocol v2")

	// A record with no version at all.
	id := NewHandoffID()
	_, err = p.handoffs.Put(ctx, shardKey(id, 0), []byte(`{"id":"`+id+`"}`))
	require.NoError(t, err)
	_, err = p.WaitShard(ctx, id, 0, false)
	require.ErrorIs(t, err, ErrIncompatibleVersion)

	// Not JSON.
	_, err = p.handoffs.Put(ctx, shardKey(id, 1), []byte(`{"v":`))
	require.NoError(t, err)
	_, err = p.WaitShard(ctx, id, 1, false)
	require.ErrorIs(t, err, ErrInvalidRecord)

	// An engine record of another version.
	_, err = p.engines.Put(ctx, "future", []byte(`{"v":9,"id":"future","role":"producer","tp_size":1,"layout":"x"}`))
	require.NoError(t, err)
	_, err = p.LookupEngine(ctx, "future")
	require.ErrorIs(t, err, ErrIncompatibleVersion)
	engines, err := p.Engines(ctx)
	require.NoError(t, err)
	require.Empty(t, engines, "incompatible engines are left out of discovery")

	// A completion notice of another version is refused by the producer.
	unsub, err := p.SubscribeCompletions("prefill-0", AllRanks, func(Completion) error {
		t.Error("handler must not see an incompatible notice")
		return nil
	})
	require.NoError(t, err)
	defer func() { require.NoError(t, unsub()) }()
	msg, err := p.nc.RequestWithContext(ctx, p.completionSubject("prefill-0", 0),
		[]byte(`{"v":7,"handoff_id":"`+id+`","rank":0,"ok":true}`))
	require.NoError(t, err)
	var ack completionAck
	require.NoError(t, json.Unmarshal(msg.Data, &ack))
	require.False(t, ack.OK)
	require.Equal(t, ackIncompatibleVersion, ack.Code)

	// A producer answering with another version is refused by the consumer.
	sub, err := p.nc.Subscribe(p.completionSubject("future-producer", 0), func(m *natsgo.Msg) {
		_ = m.Respond([]byte(`{"v":5,"ok":true}`))
	})
	require.NoError(t, err)
	defer func() { _ = sub.Unsubscribe() }()
	err = p.NotifyDone(ctx, "future-producer", Completion{HandoffID: id, Rank: 0, OK: true})
	require.ErrorIs(t, err, ErrIncompatibleVersion)
}

// A wait that finds the handoff bucket missing (the server lost its JetStream state, perhaps before the wait
// began, so no restart event reached it) waits for the bucket to come back, as after a restart, and then
// reports the record lost; it does not fail on the missing stream.
func TestWaitShardBucketLost(t *testing.T) {
	p := newPlane(t, WithReconnect(-1, 20*time.Millisecond))
	ctx := testCtx(t)
	rec := sampleShard("prefill-0", 0, 1, 1)
	require.NoError(t, p.PutShard(ctx, rec))
	require.NoError(t, p.js.DeleteKeyValue(ctx, p.handoffBucket))

	waited := make(chan error, 1)
	go func() {
		_, err := p.WaitShard(ctx, rec.HandoffID, 0, false)
		waited <- err
	}()
	select {
	case err := <-waited:
		t.Fatalf("the wait ended while the bucket was missing: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	_, _, err := p.ensureBuckets(ctx) // what the Plane's repair after a restart does
	require.NoError(t, err)
	err = <-waited
	require.ErrorIs(t, err, ErrServerRestarted)
	require.ErrorIs(t, err, ErrUnknownHandoff)

	// With no bucket until the wait's end, the record reads as unknown.
	require.NoError(t, p.js.DeleteKeyValue(ctx, p.handoffBucket))
	wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err = p.WaitShard(wctx, rec.HandoffID, 0, false)
	require.ErrorIs(t, err, ErrUnknownHandoff)
	require.ErrorIs(t, err, context.DeadlineExceeded)
}
