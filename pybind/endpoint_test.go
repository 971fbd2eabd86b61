package pybind

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/splitzip/splitzip/connector"
	"github.com/splitzip/splitzip/connector/transport"
)

func settings(t *testing.T, js string) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal([]byte(js), &m))
	return m
}

func TestEndpointDefaultsAreTheConnectors(t *testing.T) {
	js, err := EndpointDefaults()
	require.NoError(t, err)
	d := settings(t, js)
	c, tr := connector.GetDefaultOptions(), transport.GetDefaultOptions()
	assert.Equal(t, c.ListenAddr, d["listen_addr"])
	assert.Equal(t, float64(c.StagingBytes), d["staging_bytes"])
	assert.Equal(t, c.HandoffTTL.Seconds(), d["handoff_ttl_s"])
	assert.Equal(t, c.LoadTimeout.Seconds(), d["load_timeout_s"])
	assert.Equal(t, c.RecordWait.Seconds(), d["record_wait_s"])
	assert.Equal(t, c.Bypass.String(), d["bypass"])
	assert.Equal(t, float64(c.MaxInFlight), d["max_in_flight"])
	assert.Equal(t, float64(tr.Conns), d["conns"])
	assert.Equal(t, tr.IOTimeout.Seconds(), d["io_timeout_s"])
	assert.Equal(t, float64(tr.RateLimit), d["rate_limit"])
}

func TestEndpointOptionsUnsetKeepsDefaultsAndZeroIsValidated(t *testing.T) {
	defaults, err := EndpointDefaults()
	require.NoError(t, err)
	for _, js := range []string{`{"engine_id":"x"}`, `{"engine_id":"x","handoff_ttl_s":null,"conns":null,"bypass":null}`} {
		got, err := EndpointOptions(js)
		require.NoError(t, err, js)
		assert.JSONEq(t, defaults, got, "absent and null fields keep the defaults: %s", js)
	}

	got, err := EndpointOptions(`{"engine_id":"x","handoff_ttl_s":5,"conns":2,"rate_limit":0,"bypass":"never","listen_addr":"0.0.0.0:7000"}`)
	require.NoError(t, err)
	s := settings(t, got)
	assert.Equal(t, 5.0, s["handoff_ttl_s"])
	assert.Equal(t, 2.0, s["conns"])
	assert.Equal(t, 0.0, s["rate_limit"], "rate_limit 0 is a value (no cap), not 'unset'")
	assert.Equal(t, "never", s["bypass"])
	assert.Equal(t, "0.0.0.0:7000", s["listen_addr"])
	assert.Equal(t, settings(t, defaults)["load_timeout_s"], s["load_timeout_s"])

	// An explicit zero is a value: where the option refuses it, it is an option error, not a silent default.
	for _, js := range []string{
		`{"engine_id":"x","handoff_ttl_s":0}`,
		`{"engine_id":"x","staging_bytes":0}`,
		`{"engine_id":"x","load_timeout_s":0}`,
		`{"engine_id":"x","max_in_flight":0}`,
		`{"engine_id":"x","conns":0}`,
		`{"engine_id":"x","io_timeout_s":0}`,
		`{"engine_id":"x","bypass":"sometimes"}`,
		`{"engine_id":""}`,
	} {
		_, err := EndpointOptions(js)
		require.Error(t, err, js)
		assert.Equal(t, KindOption, kindPrefix(t, err), js)
	}
}

func TestProducerNewRefusesWhatEndpointOptionsRefuses(t *testing.T) {
	plane := mustPlane(t)
	_, err := ProducerNew(plane, `{"engine_id":"x","conns":0}`)
	assert.Equal(t, KindOption, kindPrefix(t, err))
	_, err = ConsumerNew(plane, `{"engine_id":"x","record_wait_s":0}`)
	assert.Equal(t, KindOption, kindPrefix(t, err))
}
