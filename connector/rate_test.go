package connector

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestBypassPolicy(t *testing.T) {
	p := bypassPolicy{mode: BypassAuto}
	require.False(t, p.raw(BypassAuto), "compression is measured first")
	p.observe(false, 0.5e9, time.Second) // a cold first compressed transfer: replaced by the next one
	p.observe(false, 1e9, time.Second)   // compressed path: 1 GB/s
	got, _ := p.compressed.get()
	require.Equal(t, 1e9, got, "the first observation is replaced, not averaged")
	require.True(t, p.raw(BypassAuto), "then raw")
	p.observe(true, 2e9, time.Second) // raw path: 2 GB/s (a fast link)
	raws := 0
	for range probeEvery * 4 {
		if p.raw(BypassAuto) {
			raws++
		}
	}
	require.Equal(t, probeEvery*4-4, raws, "raw wins, with a compressed probe every %d", probeEvery)
	p.observe(false, 4e9, time.Second) // compression got faster (slow link now)
	p.observe(false, 4e9, time.Second)
	p.observe(false, 4e9, time.Second)
	p.observe(false, 4e9, time.Second)
	require.False(t, p.raw(BypassAuto))

	conf := bypassPolicy{mode: BypassAuto, linkConf: 1.25e9}
	conf.observe(false, 3e9, time.Second)
	require.False(t, conf.raw(BypassAuto), "the codec path outruns a configured 10 Gbit/s link")
	conf2 := bypassPolicy{mode: BypassAuto, linkConf: 12.5e9}
	conf2.observe(false, 3e9, time.Second)
	require.True(t, conf2.raw(BypassAuto), "a configured 100 Gbit/s link outruns the codec path")

	require.True(t, p.raw(BypassAlways))
	require.False(t, p.raw(BypassNever))
}
