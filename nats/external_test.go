package nats

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/splitzip/splitzip/internal/natstest"
	"github.com/stretchr/testify/require"
)

func TestExternalUserPassword(t *testing.T) {
	srv := natstest.StartExternal(t, "--user", "splitzip", "--pass", "s3cret")
	_, err := Connect(WithURL(srv.URL()), WithUserInfo("splitzip", "wrong"), WithTimeout(2*time.Second))
	require.Error(t, err, "wrong password")
	_, err = Connect(WithURL(srv.URL()), WithTimeout(2*time.Second))
	require.Error(t, err, "no credentials")

	p := newPlane(t, WithURL(srv.URL()), WithUserInfo("splitzip", "s3cret"))
	require.False(t, p.Embedded())
	require.Equal(t, srv.URL(), p.ClientURL())
	q := newPlane(t, WithURL(srv.URL()), WithUserInfo("splitzip", "s3cret"))
	exerciseProtocol(t, p, q)
}

func TestExternalToken(t *testing.T) {
	srv := natstest.StartExternal(t, "--auth", "t0ken")
	_, err := Connect(WithURL(srv.URL()), WithToken("nope"), WithTimeout(2*time.Second))
	require.Error(t, err)
	p := newPlane(t, WithURL(srv.URL()), WithToken("t0ken"))
	q := newPlane(t, WithURL(srv.URL()), WithToken("t0ken"))
	exerciseProtocol(t, p, q)
}

// exerciseProtocol runs a handoff through producer p and consumer q.
func exerciseProtocol(t *testing.T, p, q *Plane) {
	t.Helper()
	ctx := testCtx(t)
	_, err := p.RegisterEngine(ctx, Engine{ID: "prefill-0", Role: RoleProducer, Addr: "127.0.0.1:7000",
		TPSize: 1, LayoutFingerprint: "L"})
	require.NoError(t, err)
	e, err := q.LookupEngine(ctx, "prefill-0")
	require.NoError(t, err)
	require.Equal(t, RoleProducer, e.Role)

	done := make(chan Completion, 1)
	_, err = p.SubscribeCompletions("prefill-0", AllRanks, func(c Completion) error { done <- c; return nil })
	require.NoError(t, err)

	rec := sampleShard("prefill-0", 0, 1, 3)
	waited := make(chan error, 1)
	go func() {
		_, err := q.WaitShard(ctx, rec.HandoffID, 0, true)
		waited <- err
	}()
	require.Eventually(t, func() bool { return consumers(t, q) == 1 }, 10*time.Second, 5*time.Millisecond)
	require.NoError(t, p.PutShard(ctx, rec))
	require.NoError(t, p.PutShard(ctx, completed(rec)))
	require.NoError(t, <-waited)
	require.NoError(t, q.NotifyDone(ctx, "prefill-0", Completion{HandoffID: rec.HandoffID, OK: true}))
	require.Equal(t, rec.HandoffID, (<-done).HandoffID)
	require.NoError(t, p.DeleteShard(ctx, rec.HandoffID, 0))
	_, err = q.WaitShard(ctx, rec.HandoffID, 0, false)
	require.ErrorIs(t, err, ErrHandoffReleased)
}

// TestExternalRestart stops the server and starts it again on the same port
// and store directory. The clients reconnect and report the restart; records
// in file storage survive (the server is stopped gracefully); a wait for a
// record that was never published fails with ErrServerRestarted.
func TestExternalRestart(t *testing.T) {
	srv := natstest.StartExternal(t)
	opts := []Option{WithURL(srv.URL()), WithReconnect(-1, 20*time.Millisecond), WithEngineTTL(time.Minute)}
	p := newPlane(t, opts...)
	events := watchEvents(t, p)
	ctx := testCtx(t)

	_, err := p.RegisterEngine(ctx, Engine{ID: "prefill-0", Role: RoleProducer, TPSize: 1, LayoutFingerprint: "L"})
	require.NoError(t, err)
	rec := sampleShard("prefill-0", 0, 1, 2)
	require.NoError(t, p.PutShard(ctx, rec))
	epoch := p.Epoch()
	require.NoError(t, p.CheckEpoch(epoch))
	oldServer := p.ServerID()

	// A consumer waiting for a record that will never come.
	missing := NewHandoffID()
	waited := make(chan error, 1)
	go func() {
		_, err := p.WaitShard(ctx, missing, 0, false)
		waited <- err
	}()
	require.Eventually(t, func() bool { return consumers(t, p) == 1 }, 10*time.Second, 5*time.Millisecond)

	srv.Stop()
	ev := events.next(t, Disconnected)
	require.Equal(t, epoch+1, ev.Epoch)
	require.False(t, p.Connected())
	require.ErrorIs(t, p.CheckEpoch(epoch), ErrDisconnected)
	require.ErrorIs(t, p.PutShard(quickCtx(t), sampleShard("prefill-0", 0, 1, 2)), ErrDisconnected,
		"operations fail clearly while the server is down")

	srv.Start()
	ev = events.next(t, Reconnected)
	require.True(t, ev.Restarted)
	require.Equal(t, oldServer, ev.PrevServerID)
	require.NotEqual(t, oldServer, p.ServerID())
	require.ErrorIs(t, p.CheckEpoch(epoch), ErrServerRestarted)
	require.NoError(t, p.CheckEpoch(p.Epoch()))

	err = <-waited
	require.ErrorIs(t, err, ErrServerRestarted)
	require.ErrorIs(t, err, ErrUnknownHandoff)

	// The record was flushed to the store dir and survives the restart (once
	// JetStream has recovered its streams).
	require.Eventually(t, func() bool {
		got, err := p.WaitShard(quickCtx(t), rec.HandoffID, 0, false)
		return err == nil && got.HandoffID == rec.HandoffID
	}, 20*time.Second, 20*time.Millisecond)
	_, err = p.LookupEngine(ctx, "prefill-0")
	require.NoError(t, err)
}

// TestExternalRestartMemoryStorage: with memory storage the restart loses
// the records; the Plane recreates the buckets and refreshes its engine
// registrations, and reads of old handoffs report ErrUnknownHandoff while
// CheckEpoch reports ErrServerRestarted.
func TestExternalRestartMemoryStorage(t *testing.T) {
	srv := natstest.StartExternal(t)
	p := newPlane(t, WithURL(srv.URL()), WithReconnect(-1, 20*time.Millisecond), WithStorage(MemoryStorage),
		WithEngineTTL(time.Minute), WithNamespace("mem"))
	events := watchEvents(t, p)
	ctx := testCtx(t)
	_, err := p.RegisterEngine(ctx, Engine{ID: "prefill-0", Role: RoleProducer, TPSize: 1, LayoutFingerprint: "L"})
	require.NoError(t, err)
	rec := sampleShard("prefill-0", 0, 1, 2)
	require.NoError(t, p.PutShard(ctx, rec))
	epoch := p.Epoch()

	srv.Stop()
	events.next(t, Disconnected)
	srv.Start()
	require.True(t, events.next(t, Reconnected).Restarted)
	require.ErrorIs(t, p.CheckEpoch(epoch), ErrServerRestarted)

	// The engine entry comes back through the post-restart refresh.
	require.Eventually(t, func() bool {
		_, err := p.LookupEngine(quickCtx(t), "prefill-0")
		return err == nil
	}, 20*time.Second, 20*time.Millisecond)
	wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, err = p.WaitShard(wctx, rec.HandoffID, 0, false)
	require.ErrorIs(t, err, ErrUnknownHandoff)
	next := sampleShard("prefill-0", 0, 1, 2)
	require.NoError(t, p.PutShard(ctx, next), "the recreated bucket takes new handoffs")
}

func TestExternalUnreachable(t *testing.T) {
	srv := natstest.StartExternal(t)
	url := srv.URL()
	srv.Stop()
	_, err := Connect(WithURL(url), WithTimeout(time.Second))
	require.Error(t, err)
	require.Contains(t, err.Error(), "splitzip/nats: connecting to")
	require.False(t, errors.Is(err, context.Canceled))
}
