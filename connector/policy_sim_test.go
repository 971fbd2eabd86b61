package connector

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// world is what a simulated host really does: per path, how long a handoff takes (before noise) and how fast
// its codec runs, which the policy only learns from measurements, as on a producer.
type world struct {
	rates   [numPaths]pathRates // what the producer measures per frame
	took    [numPaths]float64   // seconds one handoff of simReq really takes
	outlier float64             // the share of handoffs slowed down 2.5× (something else ran on the host)
	sigma   float64             // log-normal noise of every handoff's time
}

const simReq, simFrame = 94e6, 3 << 20

func only(p path) (ok [numPaths]bool) { ok[p] = true; return ok }

func (w *world) noise(rng *rand.Rand) float64 {
	f := math.Exp(rng.NormFloat64() * w.sigma)
	if rng.Float64() < w.outlier {
		f *= 2.5
	}
	return f
}

// handoff runs one handoff of path p through the policy's measurements, as Producer does (observeFrame per
// frame, calibrate for the first frames, observeTransfer when the wire is done, observeDone on the consumer's
// notice), and returns how long it took.
func (w *world) handoff(m *modePolicy, p path, slow float64) float64 {
	r := w.rates[p]
	for range 4 {
		m.observeFrame(p, simFrame, int(simFrame/r.ratio), time.Duration(simFrame/r.enc*float64(time.Second)), p == pathHighRatio)
		if m.needsCalibration(p) {
			m.calibrate(p, simFrame, time.Duration(simFrame/r.dec*float64(time.Second)))
		}
	}
	took := w.took[p] * slow
	d := time.Duration(took * float64(time.Second))
	m.observeTransfer(p, simReq, int64(simReq/r.ratio), d)
	m.observeDone(p, simReq, simFrame, d)
	return took
}

// run warms the policy up as bench transfer does (each path twice, forced), then lets it choose n times;
// it returns the mean time of the chosen handoffs and how often each path was chosen.
func (w *world) run(t *testing.T, m *modePolicy, n int, warm []float64) (mean float64, picks map[path]int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	for i, p := range []path{pathRaw, pathRaw, pathFast, pathFast, pathHighRatio, pathHighRatio} {
		slow := w.noise(rng)
		if i < len(warm) && warm[i] > 0 {
			slow = warm[i]
		}
		w.handoff(m, m.choose(simReq, simFrame, only(p)), slow)
	}
	picks = map[path]int{}
	var sum float64
	for range n {
		p := m.choose(simReq, simFrame, all)
		picks[p]++
		sum += w.handoff(m, p, w.noise(rng))
	}
	return sum / float64(n), picks
}

// truthFromModel is a world where handoffs take what the pipeline model says for the given rates and link.
func truthFromModel(rates [numPaths]pathRates, link float64) [numPaths]float64 {
	pl := plan{rawBytes: simReq, frameBytes: simFrame, link: link, rates: rates}
	return [numPaths]float64{pl.predict(pathRaw), pl.predict(pathFast), pl.predict(pathHighRatio)}
}

// The auto choice is never slower than raw beyond noise, on a slow link and a fast one, whether or not the
// model's view of the host is right, and a single unlucky handoff does not keep it off the better path.
func TestAutoNeverBelowRaw(t *testing.T) {
	noisy := func(w world) world { w.sigma, w.outlier = 0.08, 0.05; return w }
	cases := []struct {
		name     string
		link     float64 // configured
		w        world
		warm     []float64 // forced slow-downs of the warm-up handoffs (raw, raw, fast, fast, hr, hr)
		maxOfRaw float64   // auto's mean time over raw's (noise-free) time must stay below this
	}{
		{"slow link (1 Gbit/s): compress", 1 * gbit, noisy(world{rates: hostRates, took: truthFromModel(hostRates, 1*gbit)}), nil, 0.8},
		{"fast link (400 Gbit/s): raw", 400 * gbit, noisy(world{rates: hostRates, took: truthFromModel(hostRates, 400*gbit)}), nil, 1.03},
		{"fast link, slow codecs (25 Gbit/s, pure Go): raw", 25 * gbit, noisy(world{rates: pureGoRates, took: truthFromModel(pureGoRates, 25*gbit)}), nil, 1.03},
		{"the model is wrong: compressed handoffs lose to raw on a CPU-bound host", 10 * gbit,
			noisy(world{rates: hostRates, took: [numPaths]float64{0.08, 0.088, 0.12}}), nil, 1.03},
		{"an unlucky fast-mode warm-up handoff (2.5×) does not keep auto on raw", 10 * gbit,
			noisy(world{rates: hostRates, took: truthFromModel(hostRates, 10*gbit)}), []float64{1, 1, 1, 2.5, 1, 1}, 0.8},
		{"an unlucky raw warm-up handoff does not lure auto off it", 400 * gbit,
			noisy(world{rates: hostRates, took: truthFromModel(hostRates, 400*gbit)}), []float64{1, 2.5, 1, 1, 1, 1}, 1.03},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := c.w
			m := &modePolicy{linkConf: c.link}
			mean, picks := w.run(t, m, 400, c.warm)
			// Raw's mean time under the same noise.
			raw := w.took[pathRaw] * math.Exp(w.sigma*w.sigma/2) * (1 + 1.5*w.outlier)
			t.Logf("auto %.1f ms against raw %.1f ms (%.3f×); picks %v", 1e3*mean, 1e3*raw, mean/raw, picks)
			require.Less(t, mean/raw, c.maxOfRaw)
			// The first handoffs after the warm-up matter most to a short benchmark: no lock-in either.
			m2 := &modePolicy{linkConf: c.link}
			mean10, picks10 := w.run(t, m2, 10, c.warm)
			t.Logf("first 10: auto %.3f× raw; picks %v", mean10/raw, picks10)
			require.Less(t, mean10/raw, c.maxOfRaw+0.1)
		})
	}
}
