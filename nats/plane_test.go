package nats

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"runtime"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestOptions(t *testing.T) {
	d := GetDefaultOptions()
	assert.Equal(t, "", d.URL)
	assert.Equal(t, 60*time.Second, d.HandoffTTL)
	d.Namespace = "changed"
	assert.Equal(t, "default", GetDefaultOptions().Namespace, "GetDefaultOptions returns a fresh copy")

	bad := map[string]Option{
		"empty url":       WithURL(""),
		"url no host":     WithURL("nonsense"),
		"empty user":      WithUserInfo("", "x"),
		"empty token":     WithToken(""),
		"missing nkey":    WithNKeyFile("/nonexistent/seed.nk"),
		"missing creds":   WithCredentials("/nonexistent/user.creds"),
		"tls nothing":     WithTLS("", "", ""),
		"tls half pair":   WithTLS("", "cert.pem", ""),
		"tls missing ca":  WithTLS("/nonexistent/ca.pem", "", ""),
		"nil tls":         WithTLSConfig(nil),
		"namespace dot":   WithNamespace("a.b"),
		"namespace empty": WithBucketPrefix(""),
		"timeout":         WithTimeout(0),
		"ttl":             WithHandoffTTL(10 * time.Millisecond),
		"grace":           WithExpiredGrace(-time.Second),
		"engine ttl":      WithEngineTTL(0),
		"inflight":        WithMaxInFlight(0),
		"storage":         WithStorage(Storage(7)),
		"reconnect":       WithReconnect(-2, time.Second),
		"port":            WithEmbeddedServer("", 70000, ""),
	}
	for name, opt := range bad {
		_, err := Connect(opt)
		assert.ErrorIs(t, err, ErrInvalidOption, name)
	}
	_, err := Connect(WithTLSConfig(nil), nil)
	assert.ErrorIs(t, err, ErrInvalidOption)
	_, err = Connect(WithUserInfo("u", "p"), WithToken("t"))
	assert.ErrorIs(t, err, ErrInvalidOption, "user and token together")
}

func TestEmbeddedNeedsURLForTLS(t *testing.T) {
	_, err := Connect(WithTLSConfig(&tls.Config{}))
	require.ErrorIs(t, err, ErrInvalidOption)
	require.Contains(t, err.Error(), "splitzip/nats: ")
}

func TestHandoffPutGet(t *testing.T) {
	p := newPlane(t)
	require.True(t, p.Embedded())
	require.Contains(t, p.ClientURL(), "nats://127.0.0.1:")
	ctx := testCtx(t)

	rec := sampleRecord("prefill-0", 2, 4)
	require.NoError(t, p.PutHandoff(ctx, rec))
	require.NoError(t, ValidHandoffID(rec.ID))
	require.Equal(t, ProtocolVersion, rec.V)
	require.WithinDuration(t, rec.CreatedAt.Add(p.Options().HandoffTTL), rec.ExpiresAt, 0)
	require.Equal(t, 1, p.InFlight())

	// A second process on the same machine joins the embedded server.
	q := newPlane(t, WithURL(p.ClientURL()))
	require.False(t, q.Embedded())
	got, err := q.GetHandoff(ctx, rec.ID)
	require.NoError(t, err)
	require.Equal(t, rec.ID, got.ID)
	require.Equal(t, rec.Ranks, got.Ranks)
	require.Equal(t, "prefill-0", got.ProducerEngineID)
	require.Equal(t, 4, got.NumLayers())
	require.True(t, rec.ExpiresAt.Equal(got.ExpiresAt))
	require.NoError(t, got.CheckCompatible(rec.LayoutFingerprint, "bfloat16", 2))

	// WaitHandoff returns an existing record at once.
	got, err = q.WaitHandoff(ctx, rec.ID)
	require.NoError(t, err)
	require.Equal(t, rec.ID, got.ID)

	require.ErrorIs(t, p.PutHandoff(ctx, rec), ErrHandoffExists)
	require.Equal(t, 1, p.InFlight())

	require.NoError(t, p.DeleteHandoff(ctx, rec.ID))
	require.Equal(t, 0, p.InFlight())
	_, err = q.GetHandoff(ctx, rec.ID)
	require.ErrorIs(t, err, ErrUnknownHandoff)
	_, err = q.WaitHandoff(ctx, rec.ID)
	require.ErrorIs(t, err, ErrHandoffReleased)
	require.NoError(t, p.DeleteHandoff(ctx, NewHandoffID()), "deleting an unknown id is fine")
}

func TestWaitHandoffBeforePublish(t *testing.T) {
	p := newPlane(t)
	ctx := testCtx(t)
	rec := sampleRecord("prefill-0", 1, 2)
	rec.ID = NewHandoffID()

	type result struct {
		rec *HandoffRecord
		err error
	}
	res := make(chan result, 1)
	go func() {
		r, err := p.WaitHandoff(ctx, rec.ID)
		res <- result{r, err}
	}()
	// The waiter's watch is a JetStream consumer: publish once it exists.
	require.Eventually(t, func() bool { return consumers(t, p) == 1 }, 10*time.Second, 5*time.Millisecond)
	require.NoError(t, p.PutHandoff(ctx, rec))
	r := <-res
	require.NoError(t, r.err)
	require.Equal(t, rec.ID, r.rec.ID)
	require.Eventually(t, func() bool { return consumers(t, p) == 0 }, 10*time.Second, 5*time.Millisecond,
		"the watch is removed after the wait")

	// A withdrawn record ends a wait with ErrHandoffReleased.
	id := NewHandoffID()
	go func() {
		r, err := p.WaitHandoff(ctx, id)
		res <- result{r, err}
	}()
	require.Eventually(t, func() bool { return consumers(t, p) == 1 }, 10*time.Second, 5*time.Millisecond)
	require.NoError(t, p.DeleteHandoff(ctx, id))
	require.ErrorIs(t, (<-res).err, ErrHandoffReleased)
}

func TestUnknownHandoff(t *testing.T) {
	p := newPlane(t)
	ctx := testCtx(t)
	_, err := p.GetHandoff(ctx, NewHandoffID())
	require.ErrorIs(t, err, ErrUnknownHandoff)
	_, err = p.GetHandoff(ctx, "not-an-id")
	require.ErrorIs(t, err, ErrUnknownHandoff)
	require.ErrorIs(t, err, ErrInvalidRecord)

	wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, err = p.WaitHandoff(wctx, NewHandoffID())
	require.ErrorIs(t, err, ErrUnknownHandoff)
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

func TestHandoffExpiry(t *testing.T) {
	p := newPlane(t, WithHandoffTTL(time.Second), WithExpiredGrace(time.Minute))
	ctx := testCtx(t)
	rec := sampleRecord("prefill-0", 1, 1)
	require.NoError(t, p.PutHandoff(ctx, rec))
	require.Equal(t, 1, p.InFlight())

	require.Eventually(t, func() bool {
		_, err := p.GetHandoff(ctx, rec.ID)
		return errors.Is(err, ErrHandoffExpired)
	}, 10*time.Second, 20*time.Millisecond)
	got, err := p.GetHandoff(ctx, rec.ID)
	require.ErrorIs(t, err, ErrHandoffExpired)
	require.Equal(t, rec.ID, got.ID, "the expired record comes with the error")
	_, err = p.WaitHandoff(ctx, rec.ID)
	require.ErrorIs(t, err, ErrHandoffExpired)
	require.Equal(t, 0, p.InFlight(), "expired handoffs free their in-flight slot")

	// An expiry beyond the TTL is refused; so is one in the past.
	late := sampleRecord("prefill-0", 1, 1)
	late.ExpiresAt = time.Now().Add(time.Hour)
	require.ErrorIs(t, p.PutHandoff(ctx, late), ErrInvalidRecord)
	past := sampleRecord("prefill-0", 1, 1)
	past.CreatedAt = time.Now().Add(-2 * time.Second)
	past.ExpiresAt = time.Now().Add(-time.Second)
	require.ErrorIs(t, p.PutHandoff(ctx, past), ErrHandoffExpired)
}

func TestHandoffPurgedAfterGrace(t *testing.T) {
	p := newPlane(t, WithHandoffTTL(time.Second), WithExpiredGrace(0), WithNamespace("purge"))
	ctx := testCtx(t)
	rec := sampleRecord("prefill-0", 1, 1)
	require.NoError(t, p.PutHandoff(ctx, rec))
	// The server drops the record after HandoffTTL + ExpiredGrace.
	require.Eventually(t, func() bool {
		_, err := p.GetHandoff(ctx, rec.ID)
		return errors.Is(err, ErrUnknownHandoff)
	}, 15*time.Second, 50*time.Millisecond)
}

func TestMaxInFlight(t *testing.T) {
	p := newPlane(t, WithMaxInFlight(2))
	ctx := testCtx(t)
	a, b, c := sampleRecord("p", 1, 1), sampleRecord("p", 1, 1), sampleRecord("p", 1, 1)
	require.NoError(t, p.PutHandoff(ctx, a))
	require.NoError(t, p.PutHandoff(ctx, b))
	require.ErrorIs(t, p.PutHandoff(ctx, c), ErrTooManyHandoffs)
	require.NoError(t, p.DeleteHandoff(ctx, a.ID))
	require.NoError(t, p.PutHandoff(ctx, c))
	require.Equal(t, 2, p.InFlight())
}

func TestVersionMismatch(t *testing.T) {
	p := newPlane(t)
	ctx := testCtx(t)

	// A record written by a future peer.
	rec := sampleRecord("prefill-0", 1, 1)
	rec.ID = NewHandoffID()
	rec.V = ProtocolVersion + 1
	rec.CreatedAt = time.Now()
	rec.ExpiresAt = rec.CreatedAt.Add(time.Minute)
	data, err := json.Marshal(rec)
	require.NoError(t, err)
	_, err = p.handoffs.Put(ctx, rec.ID, data)
	require.NoError(t, err)
	_, err = p.GetHandoff(ctx, rec.ID)
	require.ErrorIs(t, err, ErrIncompatibleVersion)
	require.Contains(t, err.Error(), "protocol v2")
	_, err = p.WaitHandoff(ctx, rec.ID)
	require.ErrorIs(t, err, ErrIncompatibleVersion)

	// A record with no version at all.
	id := NewHandoffID()
	_, err = p.handoffs.Put(ctx, id, []byte(`{"id":"`+id+`"}`))
	require.NoError(t, err)
	_, err = p.GetHandoff(ctx, id)
	require.ErrorIs(t, err, ErrIncompatibleVersion)

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

func TestRecordValidation(t *testing.T) {
	valid := func() *HandoffRecord {
		r := sampleRecord("prefill-0", 2, 3)
		r.V, r.ID = ProtocolVersion, NewHandoffID()
		r.CreatedAt = time.Now()
		r.ExpiresAt = r.CreatedAt.Add(time.Minute)
		return r
	}
	require.NoError(t, valid().Validate())
	cases := map[string]func(r *HandoffRecord){
		"bad id":           func(r *HandoffRecord) { r.ID = "abc" },
		"bad producer":     func(r *HandoffRecord) { r.ProducerEngineID = "a.b" },
		"no layout":        func(r *HandoffRecord) { r.LayoutFingerprint = "" },
		"no dtype":         func(r *HandoffRecord) { r.DType = "" },
		"no ranks":         func(r *HandoffRecord) { r.Ranks = nil },
		"rank order":       func(r *HandoffRecord) { r.Ranks[1].Rank = 0 },
		"bad addr":         func(r *HandoffRecord) { r.Ranks[0].Addr = "localhost" },
		"no frames":        func(r *HandoffRecord) { r.Ranks[0].FrameSizes, r.Ranks[0].Checksums = nil, nil },
		"layer count":      func(r *HandoffRecord) { r.Ranks[1].FrameSizes = r.Ranks[1].FrameSizes[:2] },
		"checksum count":   func(r *HandoffRecord) { r.Ranks[0].Checksums = r.Ranks[0].Checksums[:1] },
		"encoded total":    func(r *HandoffRecord) { r.Ranks[0].EncodedBytes++ },
		"expiry before":    func(r *HandoffRecord) { r.ExpiresAt = r.CreatedAt },
		"no creation time": func(r *HandoffRecord) { r.CreatedAt = time.Time{} },
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
	require.ErrorIs(t, r.CheckCompatible("other-layout", r.DType, 0), ErrLayoutMismatch)
	require.ErrorIs(t, r.CheckCompatible(r.LayoutFingerprint, "float16", 0), ErrDTypeMismatch)
	require.ErrorIs(t, r.CheckCompatible(r.LayoutFingerprint, r.DType, 4), ErrLayoutMismatch)
	require.NoError(t, r.CheckCompatible(r.LayoutFingerprint, r.DType, 2))

	p := newPlane(t)
	bad := valid()
	bad.ID = ""
	bad.Ranks[0].EncodedBytes = 1
	require.ErrorIs(t, p.PutHandoff(testCtx(t), bad), ErrInvalidRecord)
	require.Equal(t, 0, p.InFlight())
}

func TestNewHandoffID(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		id := NewHandoffID()
		require.Len(t, id, 22)
		require.NoError(t, ValidHandoffID(id))
		require.False(t, seen[id])
		seen[id] = true
	}
	require.Error(t, ValidHandoffID("!!!!!!!!!!!!!!!!!!!!!!"))
}

func TestEngineRegistry(t *testing.T) {
	p := newPlane(t, WithEngineTTL(time.Second))
	ctx := testCtx(t)
	dereg, err := p.RegisterEngine(ctx, Engine{ID: "prefill-0", Role: RoleProducer, Addr: "10.0.0.1:7000",
		TPSize: 2, LayoutFingerprint: "L", DType: "bfloat16"})
	require.NoError(t, err)
	// A second process on the machine registers the consumer engine.
	r := newPlane(t, WithURL(p.ClientURL()))
	_, err = r.RegisterEngine(ctx, Engine{ID: "decode-0", Role: RoleConsumer, TPSize: 2, LayoutFingerprint: "L"})
	require.NoError(t, err)
	_, err = r.RegisterEngine(ctx, Engine{ID: "decode-0", Role: RoleConsumer, TPSize: 2, LayoutFingerprint: "L"})
	require.ErrorIs(t, err, ErrInvalidRecord, "duplicate registration on one Plane")
	_, err = p.RegisterEngine(ctx, Engine{ID: "x", Role: "router", TPSize: 1, LayoutFingerprint: "L"})
	require.ErrorIs(t, err, ErrInvalidRecord)

	q := newPlane(t, WithURL(p.ClientURL()), WithEngineTTL(time.Second))
	engines, err := q.Engines(ctx)
	require.NoError(t, err)
	require.Len(t, engines, 2)
	require.Equal(t, "decode-0", engines[0].ID)
	require.Equal(t, "prefill-0", engines[1].ID)
	require.Equal(t, RoleProducer, engines[1].Role)
	require.Equal(t, "10.0.0.1:7000", engines[1].Addr)

	// Heartbeats refresh the entry, so it outlives its TTL.
	first, err := q.LookupEngine(ctx, "prefill-0")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		e, err := q.LookupEngine(ctx, "prefill-0")
		return err == nil && e.LastSeen.After(first.StartedAt.Add(1500*time.Millisecond))
	}, 10*time.Second, 50*time.Millisecond)

	require.NoError(t, dereg(ctx))
	require.NoError(t, dereg(ctx), "deregister is idempotent")
	_, err = q.LookupEngine(ctx, "prefill-0")
	require.ErrorIs(t, err, ErrUnknownEngine)
	_, err = q.LookupEngine(ctx, "bad.id")
	require.ErrorIs(t, err, ErrUnknownEngine)

	// Close deregisters the remaining engine.
	r.Close()
	_, err = q.LookupEngine(ctx, "decode-0")
	require.ErrorIs(t, err, ErrUnknownEngine)
	_, err = r.RegisterEngine(ctx, Engine{ID: "late", Role: RoleBoth, TPSize: 1, LayoutFingerprint: "L"})
	require.ErrorIs(t, err, ErrClosed)
}

func TestCompletionRoundTrip(t *testing.T) {
	producer := newPlane(t)
	consumer := newPlane(t, WithURL(producer.ClientURL()))
	ctx := testCtx(t)
	id := NewHandoffID()

	got := make(chan Completion, 4)
	unsub, err := producer.SubscribeCompletions("prefill-0", AllRanks, func(c Completion) error {
		if !c.OK {
			return errors.New("payload for rank failed: " + c.Err)
		}
		got <- c
		return nil
	})
	require.NoError(t, err)

	require.NoError(t, consumer.NotifyDone(ctx, "prefill-0",
		Completion{HandoffID: id, ConsumerEngineID: "decode-0", Rank: 1, OK: true}))
	c := <-got
	require.Equal(t, id, c.HandoffID)
	require.Equal(t, 1, c.Rank)
	require.Equal(t, "decode-0", c.ConsumerEngineID)
	require.Equal(t, ProtocolVersion, c.V)

	err = consumer.NotifyDone(ctx, "prefill-0", Completion{HandoffID: id, Rank: 0, Err: "crc mismatch"})
	require.ErrorIs(t, err, ErrCompletionRejected)
	require.Contains(t, err.Error(), "crc mismatch")

	err = consumer.NotifyDone(ctx, "prefill-0", Completion{HandoffID: "short", Rank: 0, OK: true})
	require.ErrorIs(t, err, ErrInvalidRecord)

	err = consumer.NotifyDone(ctx, "nobody", Completion{HandoffID: id, Rank: 0, OK: true})
	require.ErrorIs(t, err, ErrUnknownEngine)

	require.NoError(t, unsub())
	err = consumer.NotifyDone(ctx, "prefill-0", Completion{HandoffID: id, Rank: 0, OK: true})
	require.ErrorIs(t, err, ErrUnknownEngine)

	// Per-rank subscriptions only see their rank.
	rank0 := make(chan Completion, 1)
	unsub0, err := producer.SubscribeCompletions("prefill-0", 0, func(c Completion) error { rank0 <- c; return nil })
	require.NoError(t, err)
	defer func() { require.NoError(t, unsub0()) }()
	require.NoError(t, consumer.NotifyDone(ctx, "prefill-0", Completion{HandoffID: id, Rank: 0, OK: true}))
	require.Equal(t, 0, (<-rank0).Rank)
	err = consumer.NotifyDone(ctx, "prefill-0", Completion{HandoffID: id, Rank: 1, OK: true})
	require.ErrorIs(t, err, ErrUnknownEngine)
}

func TestEmbeddedAuth(t *testing.T) {
	p := newPlane(t, WithUserInfo("splitzip", "s3cret"))
	_, err := Connect(WithURL(p.ClientURL()), WithTimeout(2*time.Second))
	require.Error(t, err, "the embedded server requires the configured user")
	q := newPlane(t, WithURL(p.ClientURL()), WithUserInfo("splitzip", "s3cret"))
	rec := sampleRecord("p", 1, 1)
	require.NoError(t, p.PutHandoff(testCtx(t), rec))
	_, err = q.GetHandoff(testCtx(t), rec.ID)
	require.NoError(t, err)

	tok := newPlane(t, WithToken("tok3n"), WithNamespace("tok"))
	_, err = Connect(WithURL(tok.ClientURL()), WithToken("wrong"), WithTimeout(2*time.Second))
	require.Error(t, err)
	newPlane(t, WithURL(tok.ClientURL()), WithToken("tok3n"), WithNamespace("tok"))
}

func TestEmbeddedStoreDirSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	p, err := Connect(WithEmbeddedServer("127.0.0.1", -1, dir))
	require.NoError(t, err)
	rec := sampleRecord("p", 1, 1)
	require.NoError(t, p.PutHandoff(testCtx(t), rec))
	p.Close()
	require.DirExists(t, dir, "a caller-chosen store dir is kept")

	q := newPlane(t, WithEmbeddedServer("127.0.0.1", -1, dir))
	got, err := q.GetHandoff(testCtx(t), rec.ID)
	require.NoError(t, err)
	require.Equal(t, rec.ID, got.ID)
}

func TestClosedPlane(t *testing.T) {
	p, err := Connect()
	require.NoError(t, err)
	p.Close()
	p.Close()
	ctx := testCtx(t)
	require.ErrorIs(t, p.PutHandoff(ctx, sampleRecord("p", 1, 1)), ErrClosed)
	_, err = p.GetHandoff(ctx, NewHandoffID())
	require.ErrorIs(t, err, ErrClosed)
	require.ErrorIs(t, p.NotifyDone(ctx, "p", Completion{HandoffID: NewHandoffID()}), ErrClosed)
	require.ErrorIs(t, p.CheckEpoch(0), ErrClosed)
}

func TestNoGoroutineLeak(t *testing.T) {
	base := runtime.NumGoroutine()
	func() {
		p, err := Connect(WithEngineTTL(time.Second))
		require.NoError(t, err)
		defer p.Close()
		q, err := Connect(WithURL(p.ClientURL()))
		require.NoError(t, err)
		defer q.Close()
		ctx := testCtx(t)
		_, err = p.RegisterEngine(ctx, Engine{ID: "e", Role: RoleBoth, TPSize: 1, LayoutFingerprint: "L"})
		require.NoError(t, err)
		_, err = p.SubscribeCompletions("e", AllRanks, func(Completion) error { return nil })
		require.NoError(t, err)
		watchEvents(t, q)
		rec := sampleRecord("e", 1, 1)
		require.NoError(t, p.PutHandoff(ctx, rec))
		_, err = q.WaitHandoff(ctx, rec.ID)
		require.NoError(t, err)
		require.NoError(t, q.NotifyDone(ctx, "e", Completion{HandoffID: rec.ID, OK: true}))
		_, err = q.Engines(ctx)
		require.NoError(t, err)
	}()
	// Poll from this goroutine (require.Eventually would add its own).
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines: %d before, %d after Close:\n%s", base, runtime.NumGoroutine(),
				buf[:runtime.Stack(buf, true)])
		}
		<-tick.C
	}
}
