package connector

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const gbit = 1e9 / 8 // bytes per second of one Gbit/s

// Figures like the 2-core test host's (AVX-512): fast mode near memory speed, high-ratio about 2 GB/s to
// encode with a learned table and 4.4 GB/s to decode; gather and scatter copies 12 GB/s.
var hostRates = [numPaths]pathRates{
	pathRaw:       {enc: 12e9, dec: 12e9, ratio: 1},
	pathFast:      {enc: 10e9, dec: 10e9, ratio: 1.33},
	pathHighRatio: {enc: 2e9, dec: 4.4e9, ratio: 1.46},
}

// pureGoRates: a host without the SIMD kernels, where the high-ratio decoder is far slower.
var pureGoRates = [numPaths]pathRates{
	pathRaw:       {enc: 8e9, dec: 8e9, ratio: 1},
	pathFast:      {enc: 2e9, dec: 2e9, ratio: 1.33},
	pathHighRatio: {enc: 0.9e9, dec: 0.35e9, ratio: 1.46},
}

var all = [numPaths]bool{true, true, true}

func TestChoose(t *testing.T) {
	const req = 94e6 // 4096 tokens of SmolLM2-135M
	slowFast := hostRates
	slowFast[pathFast] = pathRates{enc: 1.2e9, dec: 1.2e9, ratio: 1.33}
	cases := []struct {
		name    string
		link    float64
		rates   [numPaths]pathRates
		allowed [numPaths]bool
		eff     [numPaths]float64
		want    path
	}{
		{"1 Gbit/s: the wire decides, high-ratio moves least", 1 * gbit, hostRates, all, [3]float64{}, pathHighRatio},
		{"5 Gbit/s: high-ratio's codec keeps up", 5 * gbit, hostRates, all, [3]float64{}, pathHighRatio},
		{"25 Gbit/s: high-ratio's encoder is the bottleneck, fast is not", 25 * gbit, hostRates, all, [3]float64{}, pathFast},
		{"400 Gbit/s: nothing beats raw", 400 * gbit, hostRates, all, [3]float64{}, pathRaw},
		{"fast link, slow codecs: raw", 25 * gbit, pureGoRates, all, [3]float64{}, pathRaw},
		{"slow link, slow high-ratio decoder: fast", 2.5 * gbit, pureGoRates, all, [3]float64{}, pathFast},
		{"fast codec too slow for a 10 Gbit/s link: raw", 10 * gbit, slowFast, [3]bool{true, true, false}, [3]float64{}, pathRaw},
		{"bypass never: the faster codec mode even where raw would win", 400 * gbit, hostRates, [3]bool{false, true, true}, [3]float64{}, pathFast},
		{"mode fast: no high-ratio", 1 * gbit, hostRates, [3]bool{true, true, false}, [3]float64{}, pathFast},
		{"high-ratio only (mode high-ratio, bypass auto): wins on a slow link", 1 * gbit, hostRates, [3]bool{true, false, true}, [3]float64{}, pathHighRatio},
		{"high-ratio only: loses to raw on a fast one", 100 * gbit, hostRates, [3]bool{true, false, true}, [3]float64{}, pathRaw},
		{"unknown link: fast, to measure it", 0, hostRates, all, [3]float64{}, pathFast},
		{"unknown link, raw or high-ratio: high-ratio, to measure it", 0, hostRates, [3]bool{true, false, true}, [3]float64{}, pathHighRatio},
		{"bypass always", 1 * gbit, hostRates, [3]bool{true, false, false}, [3]float64{}, pathRaw},
		{"measured: high-ratio handoffs took twice the model's time", 5 * gbit, hostRates, all, [3]float64{1, 1, 0.5}, pathFast},
		{"measured: compressed handoffs slower than predicted, raw as predicted", 10 * gbit, hostRates, all, [3]float64{1, 0.6, 0.6}, pathRaw},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pl := plan{rawBytes: req, frameBytes: 3 << 20, link: c.link, rates: c.rates, eff: c.eff, allowed: c.allowed}
			got := pl.choose()
			assert.Equal(t, c.want, got, "predicted raw %.1f ms, fast %.1f ms, high-ratio %.1f ms",
				1e3*pl.expect(pathRaw), 1e3*pl.expect(pathFast), 1e3*pl.expect(pathHighRatio))
			if c.link > 0 && c.allowed[pathRaw] {
				assert.LessOrEqual(t, pl.expect(got), pl.expect(pathRaw), "never predicted slower than raw")
			}
		})
	}
}

// The model's time: the slowest stage over all bytes, plus one frame through encode and decode.
func TestPredict(t *testing.T) {
	pl := plan{rawBytes: 100e6, frameBytes: 4e6, link: 1e9, rates: hostRates}
	wire := 100e6 / (1.46 * 1e9)
	assert.InDelta(t, wire+4e6/2e9+4e6/4.4e9, pl.predict(pathHighRatio), 1e-9)
	fastLink := plan{rawBytes: 100e6, frameBytes: 4e6, link: 100e9, rates: hostRates}
	assert.InDelta(t, 100e6/10e9+4e6/10e9*2, fastLink.predict(pathFast), 1e-9, "the codec is the slowest stage")
	// A frame larger than the handoff fills the pipeline with the handoff itself.
	small := plan{rawBytes: 1e6, frameBytes: 8e6, link: 1e9, rates: hostRates}
	assert.InDelta(t, 1e6/1e9+1e6/12e9*2, small.predict(pathRaw), 1e-9)
	pl.eff[pathHighRatio] = 0.5
	assert.InDelta(t, 2*pl.predict(pathHighRatio), pl.expect(pathHighRatio), 1e-9)
	pl.eff[pathHighRatio] = 0.01
	assert.InDelta(t, pl.predict(pathHighRatio)/effMin, pl.expect(pathHighRatio), 1e-9, "efficiency is clamped")
}

func TestModePolicy(t *testing.T) {
	const req, frame = 94e6, 3 << 20
	t.Run("configured link", func(t *testing.T) {
		m := modePolicy{linkConf: 1 * gbit}
		require.Equal(t, pathHighRatio, m.choose(req, frame, all), "defaults alone: a 1 Gbit/s link wants high-ratio")
		m.linkConf = 100 * gbit
		require.Equal(t, pathRaw, m.choose(req, frame, all), "defaults alone: a 100 Gbit/s link outruns them")
	})
	t.Run("measured codec rates", func(t *testing.T) {
		m := modePolicy{linkConf: 10 * gbit}
		for range 3 { // the encoder turns out fast, and so does its decoder
			m.observeFrame(pathHighRatio, 8<<20, 8<<20*100/146, 8<<20*time.Second/(3<<30), true)
			require.True(t, m.needsCalibration(pathHighRatio))
			m.calibrate(pathHighRatio, 8<<20, 8<<20*time.Second/(5<<30))
		}
		require.False(t, m.needsCalibration(pathHighRatio), "three frames calibrate the decoder")
		require.False(t, m.needsCalibration(pathRaw))
		est := m.estimates()
		require.InDelta(t, 3<<30, est.HighRatio.Encode, 1e6)
		require.InDelta(t, 5<<30, est.HighRatio.Decode, 1e6)
		require.InDelta(t, 1.46, est.HighRatio.Ratio, 0.01)
		require.True(t, est.LinkConfigured)
		require.Equal(t, pathHighRatio, m.choose(req, frame, all), "3 GB/s encode, 5 GB/s decode outrun 10 Gbit/s × 1.46")
	})
	t.Run("learned tables", func(t *testing.T) {
		m := modePolicy{linkConf: 10 * gbit}
		m.observeFrame(pathHighRatio, 8<<20, 6<<20, 8<<20*time.Second/1e9, false) // its own table: 1 GB/s
		require.InDelta(t, 1e9, m.estimates().HighRatio.Encode, 1e3)
		m.observeFrame(pathHighRatio, 8<<20, 6<<20, 8<<20*time.Second/2e9, true) // a learned one: 2 GB/s
		require.InDelta(t, 2e9, m.estimates().HighRatio.Encode, 1e3, "frames on learned tables are what comes next")
	})
	t.Run("near tie: the runner-up is measured now and then", func(t *testing.T) {
		m := modePolicy{linkConf: 1 * gbit} // defaults: high-ratio, with fast expected 8 % slower
		picks := map[path]int{}
		for range 2 * probeEvery {
			picks[m.choose(req, frame, all)]++
		}
		require.Equal(t, map[path]int{pathHighRatio: 2*probeEvery - 2, pathFast: 2}, picks)
		far := modePolicy{linkConf: 400 * gbit} // raw; fast expected far slower: never probed
		for range 2 * probeEvery {
			require.Equal(t, pathRaw, far.choose(req, frame, all))
		}
	})
	t.Run("GPU cache", func(t *testing.T) {
		m := modePolicy{linkConf: 10 * gbit}
		m.setGPU(true)
		// Unmeasured, the GPU figures apply: on a 10 Gbit/s link the kernels' high-ratio frames are tried
		// first (the CPU figures would never try them there).
		require.Equal(t, pathHighRatio, m.choose(req, frame, all))
		cpu := modePolicy{linkConf: 10 * gbit}
		require.Equal(t, pathFast, cpu.choose(req, frame, all))
		require.False(t, m.needsCalibration(pathFast))
		m.observeFrame(pathFast, 8<<20, 6<<20, time.Millisecond, false)
		require.InDelta(t, m.estimates().Fast.Encode, m.estimates().Fast.Decode, 1)

		// At 100 Gbit/s the kernels' fast and high-ratio frames come out about even: whichever the defaults
		// favour, the other is tried now and then, so that it gets measured.
		tie := modePolicy{linkConf: 100 * gbit}
		tie.setGPU(true)
		picks := map[path]int{}
		for range 2 * probeEvery {
			picks[tie.choose(req, frame, all)]++
		}
		require.Positive(t, picks[pathFast], "picks %v", picks)
		require.Positive(t, picks[pathHighRatio], "picks %v", picks)
	})
	t.Run("measured link", func(t *testing.T) {
		m := modePolicy{}
		require.Equal(t, pathFast, m.choose(req, frame, all), "link unknown: compress (fast) to measure it")
		for range 3 {
			m.observeFrame(pathFast, 8<<20, 6<<20, 8<<20*time.Second/(10<<30), false)
		}
		// A fast-mode handoff bound by a 1 Gbit/s wire: 70.7 MB on the wire in 565 ms.
		m.observeTransfer(pathFast, 94e6, 70_700_000, 565*time.Millisecond)
		m.observeTransfer(pathFast, 94e6, 70_700_000, 565*time.Millisecond)
		link, ok := m.link.get()
		require.True(t, ok)
		require.InDelta(t, 1*gbit, link, 0.01*gbit)
		require.Equal(t, pathHighRatio, m.choose(req, frame, all))

		// A transfer as long as its codec stages only bounds the link from below: it cannot lower it…
		m.observeTransfer(pathFast, 94e6, 70_700_000, 94e6*time.Second/(10<<30))
		link2, _ := m.link.get()
		require.Greater(t, link2, link, "…and raises it")
		fast := modePolicy{}
		fast.observeTransfer(pathFast, 94e6, 70_700_000, 94e6*time.Second/(3e9)) // default fast rate: codec-bound
		fast.observeTransfer(pathFast, 94e6, 10_000, 94e6*time.Second/(3e9))
		l, _ := fast.link.get()
		require.InDelta(t, 70_700_000/(94e6/3e9), l, 1e3, "a codec-bound transfer never lowers the link")
	})
	t.Run("efficiency overrules the model, probes follow it", func(t *testing.T) {
		m := modePolicy{linkConf: 5 * gbit}
		// High-ratio handoffs keep taking twice what the model says (a consumer short of CPU, say).
		pl := m.plan(req, frame, all)
		for range 4 {
			m.observeDone(pathHighRatio, req, frame, time.Duration(2*pl.predict(pathHighRatio)*float64(time.Second)))
		}
		require.InDelta(t, 0.5, m.estimates().HighRatio.Efficiency, 0.01)
		picks := map[path]int{}
		for range 4 * probeEvery {
			picks[m.choose(req, frame, all)]++
		}
		require.Equal(t, map[path]int{pathFast: 4*probeEvery - 1, pathHighRatio: 1}, picks,
			"fast, and every %d-th handoff high-ratio to measure it again", probeModelEvery)
	})
	t.Run("efficiencies alone do not overrule raw against measured times", func(t *testing.T) {
		// A loopback under load. The model wants raw (gathers at 10 GB/s, fast frames at 3 GB/s). Raw's
		// handoffs took 60 ms, fast's 65 ms; then a few fast frames staged quickly, so fast's prediction fell
		// while its efficiency stayed: the efficiencies now favour fast, the measured times do not.
		m := modePolicy{linkConf: 1e12}
		stage := func(p path, rate float64) {
			m.observeFrame(p, 8<<20, 6<<20, time.Duration(8<<20/rate*float64(time.Second)), false)
		}
		for range 2 {
			stage(pathRaw, 10e9)
			stage(pathFast, 3e9)
			m.calibrate(pathFast, 8<<20, 8<<20*time.Second/20e9) // its decoder is fast
		}
		for range settleSamples + 1 { // the first of each is taken for a cold one
			m.observeDone(pathRaw, req, frame, 60*time.Millisecond)
			m.observeDone(pathFast, req, frame, 65*time.Millisecond)
		}
		for range 3 {
			stage(pathFast, 9e9)
		}
		pl := m.plan(req, frame, all)
		require.Equal(t, pathRaw, pl.modelChoice())
		require.Equal(t, pathFast, pl.choose(), "the efficiencies' choice")
		for range probeEvery - 1 {
			require.Equal(t, pathRaw, m.choose(req, frame, all))
		}
		// Once fast's handoffs measure faster than raw's, its efficiencies decide again.
		for range 3 {
			m.observeDone(pathFast, req, frame, 50*time.Millisecond)
		}
		require.Equal(t, pathFast, m.choose(req, frame, all))
	})
}
