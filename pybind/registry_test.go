package pybind

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestEngineRegistryThroughBinding(t *testing.T) {
	h := mustPlane(t)
	list := func() []map[string]any {
		js, err := PlaneEngines(h)
		require.NoError(t, err)
		var es []map[string]any
		require.NoError(t, json.Unmarshal([]byte(js), &es))
		return es
	}
	require.Empty(t, list())
	r1, err := PlaneRegisterEngine(h, `{"id":"prefill-a","role":"producer","tp_size":2,"layout":"abc","dtype":"bf16","meta":{"block_size":"16"}}`)
	require.NoError(t, err)
	r2, err := PlaneRegisterEngine(h, `{"id":"decode-a","role":"consumer","tp_size":1,"layout":"abc"}`)
	require.NoError(t, err)
	es := list()
	require.Len(t, es, 2)
	require.Equal(t, "decode-a", es[0]["id"])
	require.Equal(t, "prefill-a", es[1]["id"])
	require.EqualValues(t, 2, es[1]["tp_size"])
	require.Equal(t, map[string]any{"block_size": "16"}, es[1]["meta"])

	// an id registered twice by one plane, a bad record, an unknown field: errors with kinds
	_, err = PlaneRegisterEngine(h, `{"id":"decode-a","role":"consumer","tp_size":1,"layout":"abc"}`)
	require.ErrorContains(t, err, "[control_plane]")
	_, err = PlaneRegisterEngine(h, `{"id":"x","role":"decoder","tp_size":1,"layout":"abc"}`)
	require.ErrorContains(t, err, "role")
	_, err = PlaneRegisterEngine(h, `{"id":"x","role":"consumer","tp_size":1,"layout":"abc","nope":1}`)
	require.ErrorContains(t, err, "[option]")

	_, err = PlaneDeregisterEngine(r1)
	require.NoError(t, err)
	es = list()
	require.Len(t, es, 1)
	require.Equal(t, "decode-a", es[0]["id"])
	_, err = PlaneDeregisterEngine(r1)
	require.Error(t, err, "a registration is removed once")
	_, err = PlaneDeregisterEngine(r2)
	require.NoError(t, err)
	require.Empty(t, list())
}
