package connector

import (
	"encoding/json"
	"strconv"
	"testing"

	"github.com/splitzip/splitzip/connector/transport"
	"github.com/splitzip/splitzip/internal/natstest"
	"github.com/splitzip/splitzip/internal/testpki"
	szn "github.com/splitzip/splitzip/nats"
	"github.com/stretchr/testify/require"
)

// Only the consumer holding a handoff's secret loads it; the control plane never carries the secret.
func TestHandoffSecret(t *testing.T) {
	plane := startPlane(t)
	p, c := newPair(t, plane, []Option{WithEngineID("prefill-s")}, []Option{WithEngineID("decode-s")})
	src := newTestCache(t, smallLayout(8), true, 5)
	dst := newTestCache(t, smallLayout(8), false, 0)
	require.NoError(t, p.RegisterHostCache(src.layout, src.bases))
	require.NoError(t, c.RegisterHostCache(dst.layout, dst.bases))

	h, err := p.Save("r", []int{1, 2})
	require.NoError(t, err)
	require.Len(t, h.Secret, 43)
	rec, err := plane.WaitShard(t.Context(), h.ID, 0, false)
	require.NoError(t, err)
	js, err := json.Marshal(rec)
	require.NoError(t, err)
	require.NotContains(t, string(js), h.Secret, "the secret must not go on the control plane")
	require.NotEmpty(t, rec.SecretHash)

	// No secret, a malformed one: refused at once.
	require.ErrorIs(t, c.Load("none", Handoff{ID: h.ID}, []int{3, 4}), ErrAccess)
	require.ErrorIs(t, c.Load("short", Handoff{ID: h.ID, Secret: h.Secret[:20]}, []int{3, 4}), ErrAccess)
	// Another secret: the load fails before the consumer dials, and the handoff stays for its consumer.
	require.NoError(t, c.Load("wrong", Handoff{ID: h.ID, Secret: NewHandoffSecret()}, []int{3, 4}))
	require.ErrorIs(t, waitLoad(t, c, "wrong"), ErrAccess)
	require.NoError(t, c.Load("r", h, []int{5, 6}))
	require.NoError(t, waitLoad(t, c, "r"))
	requireSameBlocks(t, src, []int{1, 2}, dst, []int{5, 6})

	// A caller-chosen id needs its secret (every TP rank must serve the same one).
	_, err = p.BeginHandoff("tp", NewHandoffID(), "", []int{0})
	require.ErrorIs(t, err, ErrAccess)
	_, err = p.BeginHandoff("tp", "", NewHandoffSecret(), []int{0})
	require.ErrorIs(t, err, ErrAccess)
}

// A stranger who reads the record off the control plane (id, address) and fetches directly gets what an
// unknown id gets, and the handoff's consumer still loads it.
func TestStrangerWithTheRecord(t *testing.T) {
	plane := startPlane(t)
	p, c := newPair(t, plane, []Option{WithEngineID("prefill-x")}, []Option{WithEngineID("decode-x")})
	src := newTestCache(t, smallLayout(8), true, 9)
	dst := newTestCache(t, smallLayout(8), false, 0)
	require.NoError(t, p.RegisterHostCache(src.layout, src.bases))
	require.NoError(t, c.RegisterHostCache(dst.layout, dst.bases))
	h, err := p.Save("r", []int{0, 3})
	require.NoError(t, err)
	rec, err := plane.WaitShard(t.Context(), h.ID, 0, true)
	require.NoError(t, err)
	_, err = transport.Fetch(t.Context(), rec.Addr, rec.HandoffID, transport.NewSecret(), func(int, []byte) error {
		t.Fatal("a stranger received a chunk")
		return nil
	})
	require.ErrorIs(t, err, transport.ErrUnknownHandoff)
	require.NoError(t, c.Load("r", h, []int{4, 7}))
	require.NoError(t, waitLoad(t, c, "r"))
	requireSameBlocks(t, src, []int{0, 3}, dst, []int{4, 7})
}

// The whole deployment secured: NATS over mutual TLS with a user and password (the nats-server binary),
// the payload over mutual TLS between the engines, each with its own certificate from the cluster's CA.
func TestSecuredDeployment(t *testing.T) {
	ca := testpki.NewCA(t, "cluster")
	natsCert := ca.Issue("nats")
	srv := natstest.StartExternal(t, "--tls", "--tlscert", natsCert.CertFile, "--tlskey", natsCert.KeyFile,
		"--tlsverify", "--tlscacert", ca.CAFile, "--user", "splitzip", "--pass", "s3cret")
	url := "tls://127.0.0.1:" + strconv.Itoa(srv.Port)
	connect := func(name string) *szn.Plane {
		pair := ca.Issue(name)
		pl, err := szn.Connect(szn.WithURL(url), szn.WithUserInfo("splitzip", "s3cret"),
			szn.WithTLS(ca.CAFile, pair.CertFile, pair.KeyFile))
		require.NoError(t, err)
		t.Cleanup(pl.Close)
		return pl
	}
	prefill, decode := ca.Issue("prefill-0"), ca.Issue("decode-0")
	p, err := NewProducer(connect("prefill-0-nats"), WithEngineID("prefill-0"), WithTLS(ca.CAFile, prefill.CertFile, prefill.KeyFile))
	require.NoError(t, err)
	defer p.Close()
	c, err := NewConsumer(connect("decode-0-nats"), WithEngineID("decode-0"), WithTLS(ca.CAFile, decode.CertFile, decode.KeyFile))
	require.NoError(t, err)
	defer c.Close()
	src := newTestCache(t, smallLayout(8), true, 31)
	dst := newTestCache(t, smallLayout(8), false, 0)
	require.NoError(t, p.RegisterHostCache(src.layout, src.bases))
	require.NoError(t, c.RegisterHostCache(dst.layout, dst.bases))
	h, err := p.Save("x", []int{1, 2, 3})
	require.NoError(t, err)
	require.NoError(t, c.Load("x", h, []int{5, 6, 7}))
	require.NoError(t, waitLoad(t, c, "x"))
	requireSameBlocks(t, src, []int{1, 2, 3}, dst, []int{5, 6, 7})

	// A consumer with the secret but a certificate from another CA is refused by TLS.
	other := testpki.NewCA(t, "other").Issue("decode-1")
	c2, err := NewConsumer(connect("decode-1-nats"), WithEngineID("decode-1"), WithTLS(ca.CAFile, other.CertFile, other.KeyFile))
	require.NoError(t, err)
	defer c2.Close()
	require.NoError(t, c2.RegisterHostCache(dst.layout, dst.bases))
	h2, err := p.Save("y", []int{4})
	require.NoError(t, err)
	require.NoError(t, c2.Load("y", h2, []int{0}))
	require.ErrorIs(t, waitLoad(t, c2, "y"), transport.ErrTLS)

	// Options are checked when the endpoint is built.
	_, err = NewConsumer(connect("decode-2-nats"), WithEngineID("decode-2"), WithTLS(ca.CAFile, "", ""))
	require.ErrorIs(t, err, ErrOption)
	// NATS without the client certificate, or without the password, is refused.
	_, err = szn.Connect(szn.WithURL(url), szn.WithUserInfo("splitzip", "s3cret"), szn.WithTLS(ca.CAFile, "", ""))
	require.Error(t, err)
	pair := ca.Issue("nopass")
	_, err = szn.Connect(szn.WithURL(url), szn.WithTLS(ca.CAFile, pair.CertFile, pair.KeyFile))
	require.Error(t, err)
}
