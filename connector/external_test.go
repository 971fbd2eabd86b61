package connector

import (
	"context"
	"testing"
	"time"

	"github.com/splitzip/splitzip/internal/natstest"
	szn "github.com/splitzip/splitzip/nats"
	"github.com/stretchr/testify/require"
)

// The external-server path: producer and consumer on separate connections to a nats-server binary, as on
// separate hosts, with user/password authentication.
func TestExternalNATSServer(t *testing.T) {
	srv := natstest.StartExternal(t, "--user", "splitzip", "--pass", "s3cret")
	connect := func() *szn.Plane {
		p, err := szn.Connect(szn.WithURL(srv.URL()), szn.WithUserInfo("splitzip", "s3cret"))
		require.NoError(t, err)
		t.Cleanup(p.Close)
		return p
	}
	prodPlane, consPlane := connect(), connect()
	p, err := NewProducer(prodPlane, WithEngineID("prefill-ext"))
	require.NoError(t, err)
	defer p.Close()
	c, err := NewConsumer(consPlane, WithEngineID("decode-ext"))
	require.NoError(t, err)
	defer c.Close()
	src := newTestCache(t, smallLayout(8), true, 77)
	dst := newTestCache(t, smallLayout(8), false, 0)
	require.NoError(t, p.RegisterHostCache(src.layout, src.bases))
	require.NoError(t, c.RegisterHostCache(dst.layout, dst.bases))
	h, err := p.Save("x", []int{1, 2, 3})
	require.NoError(t, err)
	require.NoError(t, c.Load("x", h, []int{5, 6, 7}))
	require.NoError(t, waitLoad(t, c, "x"))
	requireSameBlocks(t, src, []int{1, 2, 3}, dst, []int{5, 6, 7})
}

// A NATS server restart that loses the control plane's records (memory storage) fails the loads that still
// needed them, with an error that says so; the producer goes on serving new handoffs once the plane is back.
func TestNATSRestartFailsLoad(t *testing.T) {
	srv := natstest.StartExternal(t)
	connect := func() *szn.Plane {
		p, err := szn.Connect(szn.WithURL(srv.URL()), szn.WithStorage(szn.MemoryStorage), szn.WithReconnect(-1, 50*time.Millisecond))
		require.NoError(t, err)
		t.Cleanup(p.Close)
		return p
	}
	prodPlane, consPlane := connect(), connect()
	p, err := NewProducer(prodPlane, WithEngineID("prefill-rs"))
	require.NoError(t, err)
	defer p.Close()
	c, err := NewConsumer(consPlane, WithEngineID("decode-rs"), WithRecordWait(3*time.Second))
	require.NoError(t, err)
	defer c.Close()
	src := newTestCache(t, smallLayout(8), true, 5)
	dst := newTestCache(t, smallLayout(8), false, 0)
	require.NoError(t, p.RegisterHostCache(src.layout, src.bases))
	require.NoError(t, c.RegisterHostCache(dst.layout, dst.bases))

	h, err := p.Save("before", []int{0, 1})
	require.NoError(t, err)
	// Once staged, the producer has published its last record; the restart then loses it for good.
	require.NoError(t, p.WaitSaved(context.Background(), "before"))
	srv.Stop()
	srv.Start()
	require.NoError(t, c.Load("before", h, []int{2, 3}))
	err = waitLoad(t, c, "before")
	require.Error(t, err)
	require.ErrorIs(t, err, szn.ErrUnknownHandoff, "the record was lost with the server: %v", err)

	// After the restart the planes recreate their buckets; new handoffs work.
	require.Eventually(t, func() bool {
		h, err = p.Save("after", []int{4, 5})
		return err == nil
	}, 20*time.Second, 100*time.Millisecond)
	require.NoError(t, c.Load("after", h, []int{6, 7}))
	require.NoError(t, waitLoad(t, c, "after"))
	requireSameBlocks(t, src, []int{4, 5}, dst, []int{6, 7})
}
