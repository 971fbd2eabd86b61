package nats

import (
	"crypto/tls"
	"errors"
	"runtime"
	"testing"
	"time"

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
		"empty url":         WithURL(""),
		"url no host":       WithURL("nonsense"),
		"empty user":        WithUserInfo("", "x"),
		"empty token":       WithToken(""),
		"missing nkey":      WithNKeyFile("/nonexistent/seed.nk"),
		"missing creds":     WithCredentials("/nonexistent/user.creds"),
		"tls nothing":       WithTLS("", "", ""),
		"tls half pair":     WithTLS("", "cert.pem", ""),
		"tls missing ca":    WithTLS("/nonexistent/ca.pem", "", ""),
		"nil tls":           WithTLSConfig(nil),
		"namespace dot":     WithNamespace("a.b"),
		"namespace empty":   WithBucketPrefix(""),
		"timeout":           WithTimeout(0),
		"ttl":               WithHandoffTTL(10 * time.Millisecond),
		"grace":             WithExpiredGrace(-time.Second),
		"engine ttl":        WithEngineTTL(0),
		"inflight":          WithMaxInFlight(0),
		"storage":           WithStorage(Storage(7)),
		"reconnect":         WithReconnect(-2, time.Second),
		"port":              WithEmbeddedServer("", 70000, ""),
		"replicas 0":        WithReplicas(0),
		"replicas 6":        WithReplicas(6),
		"replicas embedded": WithReplicas(3), // the embedded server is a single server
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
	// A second process on the machine registers the consumer engine. The registry bucket keeps entries for the
	// EngineTTL of the Plane that created it (p's, 1 s): r heartbeats as often as that needs, so its entry is
	// there until r deregisters it, however long the steps below take.
	r := newPlane(t, WithURL(p.ClientURL()), WithEngineTTL(time.Second))
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
	rec := sampleShard("p", 0, 1, 1)
	require.NoError(t, p.PutShard(testCtx(t), rec))
	_, err = q.WaitShard(testCtx(t), rec.HandoffID, 0, false)
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
	rec := sampleShard("p", 0, 1, 1)
	require.NoError(t, p.PutShard(testCtx(t), rec))
	p.Close()
	require.DirExists(t, dir, "a caller-chosen store dir is kept")

	q := newPlane(t, WithEmbeddedServer("127.0.0.1", -1, dir))
	got, err := q.WaitShard(testCtx(t), rec.HandoffID, 0, false)
	require.NoError(t, err)
	require.Equal(t, rec.HandoffID, got.HandoffID)
}

func TestClosedPlane(t *testing.T) {
	p, err := Connect()
	require.NoError(t, err)
	p.Close()
	p.Close()
	ctx := testCtx(t)
	require.ErrorIs(t, p.PutShard(ctx, sampleShard("p", 0, 1, 1)), ErrClosed)
	_, err = p.WaitShard(ctx, NewHandoffID(), 0, false)
	require.ErrorIs(t, err, ErrClosed)
	require.ErrorIs(t, p.DeleteShard(ctx, NewHandoffID(), 0), ErrClosed)
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
		rec := sampleShard("e", 0, 1, 1)
		waited := make(chan error, 1)
		go func() {
			_, err := q.WaitShard(ctx, rec.HandoffID, 0, true)
			waited <- err
		}()
		require.NoError(t, p.PutShard(ctx, rec))
		require.NoError(t, p.PutShard(ctx, completed(rec)))
		require.NoError(t, <-waited)
		require.NoError(t, q.NotifyDone(ctx, "e", Completion{HandoffID: rec.HandoffID, OK: true}))
		require.NoError(t, p.DeleteShard(ctx, rec.HandoffID, 0))
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
