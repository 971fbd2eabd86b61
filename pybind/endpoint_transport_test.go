package pybind

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/splitzip/splitzip/connector"
)

// The payload transport is an endpoint option: "tcp" by default, "nixl" validated, anything else an option
// error.
func TestEndpointTransportOption(t *testing.T) {
	js, err := EndpointDefaults()
	require.NoError(t, err)
	assert.Equal(t, connector.TransportTCP, settings(t, js)["transport"])
	got, err := EndpointOptions(`{"engine_id":"x","transport":"nixl"}`)
	require.NoError(t, err)
	assert.Equal(t, "nixl", settings(t, got)["transport"])
	_, err = EndpointOptions(`{"engine_id":"x","transport":"rdma"}`)
	require.Error(t, err)
	assert.Equal(t, KindOption, kindPrefix(t, err))
	assert.Contains(t, err.Error(), "want tcp or nixl")
}

// A consumer's GPU receive memory for NIXL chunks and a producer's GPU staging: off by default, they need the
// transport nixl; the receive memory is never negative.
func TestEndpointNIXLDeviceOptions(t *testing.T) {
	js, err := EndpointDefaults()
	require.NoError(t, err)
	assert.EqualValues(t, 0, settings(t, js)["nixl_device_receive_bytes"])
	assert.Equal(t, false, settings(t, js)["nixl_device_staging"])
	got, err := EndpointOptions(`{"engine_id":"x","transport":"nixl","nixl_device_staging":true}`)
	require.NoError(t, err)
	assert.Equal(t, true, settings(t, got)["nixl_device_staging"])
	got, err = EndpointOptions(`{"engine_id":"x","transport":"nixl","nixl_device_receive_bytes":268435456}`)
	require.NoError(t, err)
	assert.EqualValues(t, 256<<20, settings(t, got)["nixl_device_receive_bytes"])
	for _, bad := range []string{
		`{"engine_id":"x","nixl_device_receive_bytes":268435456}`,
		`{"engine_id":"x","transport":"nixl","nixl_device_receive_bytes":-1}`,
		`{"engine_id":"x","nixl_device_staging":true}`,
	} {
		_, err = EndpointOptions(bad)
		require.Error(t, err, bad)
		assert.Equal(t, KindOption, kindPrefix(t, err), bad)
	}
}
