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
