package kernels

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// On compute capability 9.0 the codec loads the sm_90 cubin. The sm_90 PTX that the driver compiles in its
// place (on newer GPUs, with WithPTX, or where the driver refuses the cubin) writes the same frames in both
// modes, and every build decodes them bit for bit.
func TestPrecompiled(t *testing.T) {
	def := newGPU(t)
	major, minor, err := def.ctx.Device().ComputeCapability()
	require.NoError(t, err)
	hopper := major == 9 && minor == 0 && def.codec.DependentLaunch()
	assert.Equal(t, hopper, def.codec.Precompiled(), "compute capability %d.%d", major, minor)
	envs := map[string]*gpuEnv{
		"default":       def,
		"sm_90 PTX":     newGPU(t, WithPTX(ptxSM90)),
		"refused cubin": newGPU(t, withCubin([]byte("not a cubin"))),
	}
	assert.False(t, envs["sm_90 PTX"].codec.Precompiled())
	assert.False(t, envs["refused cubin"].codec.Precompiled(), "a cubin the driver refuses falls back to the PTX")
	assert.Equal(t, def.codec.DependentLaunch(), envs["refused cubin"].codec.DependentLaunch())

	kv := concat(realKV(t))
	cb := defaultBook(t)
	tab, table := hrTable(t, kv)
	fast, hr := cpuEncode(t, kv, cb), cpuEncodeHR(t, kv, tab)
	for name, g := range envs {
		require.Equal(t, fast, g.encode(t, kv, cb, 0xA5), name)
		require.Equal(t, hr, g.encodeHR(t, kv, table, 0xA5), name)
		out, err := g.decode(t, fast, len(fast), len(kv), 0x5A)
		require.NoError(t, err, name)
		require.True(t, bytes.Equal(kv, out), name)
		out, err = g.decodeHR(t, hr, len(hr), len(kv), 0x5A)
		require.NoError(t, err, name)
		require.True(t, bytes.Equal(kv, out), name)
	}
}

// BenchmarkNewCodec times loading the kernels: as NewCodec picks them (the sm_90 cubin on compute capability
// 9.0), the sm_90 PTX, and the sm_80 PTX. With CUDA_CACHE_DISABLE=1 in the environment the PTX rows are the
// driver's JIT, as on a fresh machine; otherwise they are mostly its cache's look-up.
func BenchmarkNewCodec(b *testing.B) {
	g := newGPU(b)
	for _, bc := range []struct {
		name string
		opts []Option
	}{{"default", nil}, {"sm_90 PTX", []Option{WithPTX(ptxSM90)}}, {"sm_80 PTX", []Option{withoutDependentLaunch()}}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				c, err := NewCodec(g.ctx, bc.opts...)
				require.NoError(b, err)
				require.NoError(b, c.Close())
			}
		})
	}
}
