package nats

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

// A record names its payload transport: TCP records (the default, no "transport" key) need a host:port, NIXL
// records a locator, which survives the round trip through the server unchanged.
func TestShardPayloadTransport(t *testing.T) {
	p := newPlane(t)
	ctx := testCtx(t)

	tcp := sampleShard("prefill-0", 0, 1, 2)
	data, err := json.Marshal(tcp)
	require.NoError(t, err)
	require.NotContains(t, string(data), `"transport"`, "a TCP record is written as before")

	nx := sampleShard("prefill-0", 0, 1, 2)
	nx.Transport, nx.Addr = PayloadNIXL, "nixl:prefill-0-r0"
	nx.Locator = json.RawMessage(`{"v":1,"agent":"prefill-0-r0","md":"eA==","table":4096,"chunks":2,"nonce":7}`)
	require.NoError(t, p.PutShard(ctx, nx))
	got, err := p.WaitShard(ctx, nx.HandoffID, 0, false)
	require.NoError(t, err)
	require.Equal(t, PayloadNIXL, got.Transport)
	require.JSONEq(t, string(nx.Locator), string(got.Locator))

	for name, mutate := range map[string]func(r *ShardRecord){
		"nixl without locator": func(r *ShardRecord) { r.Transport, r.Addr = PayloadNIXL, "nixl:x" },
		"nixl bad locator":     func(r *ShardRecord) { r.Transport, r.Locator = PayloadNIXL, json.RawMessage(`{`) },
		"unknown transport":    func(r *ShardRecord) { r.Transport = "carrier-pigeon" },
		"tcp without port":     func(r *ShardRecord) { r.Transport, r.Addr = PayloadTCP, "localhost" },
	} {
		r := sampleShard("prefill-0", 0, 1, 2)
		mutate(r)
		require.ErrorIs(t, p.PutShard(ctx, r), ErrInvalidRecord, name)
	}
}
