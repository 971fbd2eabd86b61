package pybind

import (
	"encoding/json"
	"fmt"
	"runtime"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/splitzip/splitzip/internal/natstest"
	"github.com/splitzip/splitzip/internal/testpki"
)

// The binding end to end with every access option: NATS over mutual TLS with a user and password (the
// nats-server binary), mutual TLS between the engines, and a handoff secret only the consumer holds.
func TestBindingSecured(t *testing.T) {
	ca := testpki.NewCA(t, "cluster")
	natsCert := ca.Issue("nats")
	srv := natstest.StartExternal(t, "--tls", "--tlscert", natsCert.CertFile, "--tlskey", natsCert.KeyFile,
		"--tlsverify", "--tlscacert", ca.CAFile, "--user", "splitzip", "--pass", "s3cret")
	client := ca.Issue("engine")
	planeJS, err := json.Marshal(map[string]any{"url": "tls://127.0.0.1:" + strconv.Itoa(srv.Port), "user": "splitzip",
		"password": "s3cret", "tls_ca": ca.CAFile, "tls_cert": client.CertFile, "tls_key": client.KeyFile})
	require.NoError(t, err)
	plane, err := PlaneConnect(string(planeJS))
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = PlaneClose(plane) })
	_, err = PlaneConnect(fmt.Sprintf(`{"url":"tls://127.0.0.1:%d","user":"splitzip","password":"s3cret","tls_ca":%q,"timeout_s":2}`, srv.Port, ca.CAFile))
	require.Error(t, err, "the server wants a client certificate")

	endpoint := func(name string) string {
		pair := ca.Issue(name)
		js, err := json.Marshal(map[string]any{"engine_id": name, "tls_ca": ca.CAFile, "tls_cert": pair.CertFile,
			"tls_key": pair.KeyFile, "record_wait_s": 5})
		require.NoError(t, err)
		return string(js)
	}
	st, err := EndpointOptions(endpoint("x"))
	require.NoError(t, err)
	require.Equal(t, true, settings(t, st)["tls"])
	p, err := ProducerNew(plane, endpoint("prefill"))
	require.NoError(t, err)
	defer ProducerClose(p)
	c, err := ConsumerNew(plane, endpoint("decode"))
	require.NoError(t, err)
	defer ConsumerClose(c)
	sc := newTestCache(2, 4, 4, 2, 16, 1, 7)
	dc := newTestCache(2, 4, 4, 2, 16, 1, 8)
	_, err = ProducerRegisterHostCache(p, sc.layoutJSON(t), sc.bases())
	require.NoError(t, err)
	_, err = ConsumerRegisterHostCache(c, dc.layoutJSON(t), dc.bases())
	require.NoError(t, err)

	begin := func(req string) map[string]string {
		js, err := ProducerBeginHandoff(p, req, "", "", "0,1")
		require.NoError(t, err)
		var ho map[string]string
		require.NoError(t, json.Unmarshal([]byte(js), &ho))
		for l := range 2 {
			_, err = ProducerSaveLayer(p, req, l)
			require.NoError(t, err)
		}
		return ho
	}
	ho := begin("r")
	_, err = ConsumerLoad(c, "wrong", ho["handoff_id"], NewHandoffSecret(), "2,3")
	require.NoError(t, err)
	ok, f := pollUntil(t, c, "wrong")
	require.False(t, ok)
	require.Equal(t, KindAccess, f.Kind, f.Error)
	_, err = ConsumerLoad(c, "none", ho["handoff_id"], "", "2,3")
	require.Equal(t, KindAccess, kindPrefix(t, err))
	_, err = ConsumerLoad(c, "r", ho["handoff_id"], ho["secret"], "2,3")
	require.NoError(t, err)
	ok, f = pollUntil(t, c, "r")
	require.True(t, ok, "%+v", f)
	for l := range 2 {
		for kv := range 2 {
			for i, b := range []int{0, 1} {
				require.Equal(t, sc.block(l, kv, b), dc.block(l, kv, 2+i))
			}
		}
	}

	// A consumer without TLS is refused by the producer's transport: an access failure.
	plain, err := ConsumerNew(plane, `{"engine_id":"plain","record_wait_s":5}`)
	require.NoError(t, err)
	defer ConsumerClose(plain)
	_, err = ConsumerRegisterHostCache(plain, dc.layoutJSON(t), dc.bases())
	require.NoError(t, err)
	ho = begin("t")
	_, err = ConsumerLoad(plain, "t", ho["handoff_id"], ho["secret"], "2,3")
	require.NoError(t, err)
	ok, f = pollUntil(t, plain, "t")
	require.False(t, ok)
	require.Equal(t, KindAccess, f.Kind, f.Error)

	// Bad TLS files are option errors.
	for _, js := range []string{`{"engine_id":"x","tls_ca":"/nonexistent","tls_cert":"/a","tls_key":"/b"}`,
		`{"engine_id":"x","tls_cert":"/a"}`} {
		_, err := EndpointOptions(js)
		require.Equal(t, KindOption, kindPrefix(t, err), js)
	}
	_, err = PlaneConnect(`{"url":"tls://127.0.0.1:1","tls_ca":"/nonexistent"}`)
	require.Equal(t, KindOption, kindPrefix(t, err))
	runtime.KeepAlive(sc)
	runtime.KeepAlive(dc)
}
