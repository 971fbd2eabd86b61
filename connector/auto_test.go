package connector

import (
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/splitzip/splitzip/connector/transport"
	"github.com/stretchr/testify/require"
)

// Real handoffs over a slow link and a fast one (the transport's pacer shapes the slow one; the fast one is
// loopback, declared faster than any codec): the auto choice is never slower than raw beyond noise. Raw and
// auto producers take turns, so that whatever else the host does falls on both alike. On the slow link the
// wire sets the pace and auto's median must beat raw's. Loopback on a small shared host is bound by CPU that
// both sides and the kernel share, and other work on the host swings medians of such short handoffs by tens of
// percent; there two raw producers take turns with auto, auto must leave high-ratio frames out, and in the
// median round its handoff must take at most 15 % longer than the mean of the round's two raw ones (auto
// compressing every handoff measured 1.14–1.26× on a slow host; raw against itself differs by 4–27 % a round).
// The policy's choices themselves are checked without noise in TestAutoNeverBelowRaw.
func TestAutoAgainstRawOverLinks(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("times real handoffs; the race detector slows the paths unevenly (instrumented Go against assembly), make soak runs it without")
	}
	cases := []struct {
		name   string
		opts   []Option
		blocks int
		rounds int
		noisy  bool // measure raw's noise against itself, and allow it
	}{
		{"slow link (0.8 Gbit/s)", []Option{WithTransport(transport.WithRateLimit(100e6))}, 32, 11, false},
		{"fast link (loopback)", []Option{WithLinkRate(1e12)}, 48, 31, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			plane := startPlane(t)
			l := smallLayout(64)
			src := newTestCache(t, l, true, 2)
			dst := newTestCache(t, l, false, 0)
			newProducer := func(name string, b Bypass) *Producer {
				p, err := NewProducer(plane, append([]Option{WithEngineID(name), WithBypass(b)}, c.opts...)...)
				require.NoError(t, err)
				t.Cleanup(func() { _ = p.Close() })
				require.NoError(t, p.RegisterHostCache(l, src.bases))
				return p
			}
			raw, auto := newProducer("prefill-raw", BypassAlways), newProducer("prefill-auto", BypassAuto)
			raw2 := raw
			if c.noisy {
				raw2 = newProducer("prefill-raw2", BypassAlways)
			}
			cons, err := NewConsumer(plane, append([]Option{WithEngineID("decode-auto")}, c.opts...)...)
			require.NoError(t, err)
			t.Cleanup(func() { _ = cons.Close() })
			require.NoError(t, cons.RegisterHostCache(l, dst.bases))
			blocks := make([]int, c.blocks)
			for i := range blocks {
				blocks[i] = (i * 7) % 64
			}
			seq := 0
			run := func(p *Producer) time.Duration {
				seq++
				req := fmt.Sprint("r", seq)
				t0 := time.Now()
				h, err := p.Save(req, blocks)
				require.NoError(t, err)
				require.NoError(t, cons.Load(req, h, blocks))
				require.NoError(t, waitLoad(t, cons, req))
				d := time.Since(t0)
				p.FinishedSending()
				return d
			}
			for range 4 { // warm-up: connections, staging, the policy's first measurements
				run(raw)
				run(auto)
				run(raw2)
			}
			before := auto.Stats()
			var tr, ta, tr2 []time.Duration
			for range c.rounds {
				tr = append(tr, run(raw))
				ta = append(ta, run(auto))
				if c.noisy {
					tr2 = append(tr2, run(raw2))
				}
			}
			requireSameBlocks(t, src, blocks, dst, blocks)
			median := func(ts []time.Duration) time.Duration { ts = slices.Clone(ts); slices.Sort(ts); return ts[len(ts)/2] }
			after := auto.Stats()
			r, a := median(tr), median(ta)
			took := fmt.Sprintf("auto took raw %d, fast %d, high-ratio %d", after.RawHandoffs-before.RawHandoffs,
				after.FastHandoffs-before.FastHandoffs, after.HighRatioHandoffs-before.HighRatioHandoffs)
			if !c.noisy {
				fmt.Printf("%s: median raw %.1f ms, auto %.1f ms (%.2f× raw's time); %s\n", c.name, ms(r), ms(a), float64(a)/float64(r), took)
				require.LessOrEqual(t, a, r, "auto's median above raw's: %v against %v", ta, tr)
				return
			}
			// Round by round: the host's state (a busy neighbour, a clock step) moves all three handoffs of a
			// round alike, where medians over the whole run land in whichever state held most of one
			// producer's handoffs.
			var ratios, noise []float64
			for i := range ta {
				ratios = append(ratios, 2*float64(ta[i])/float64(tr[i]+tr2[i]))
				noise = append(noise, float64(max(tr[i], tr2[i]))/float64(min(tr[i], tr2[i])))
			}
			mid := func(v []float64) float64 { v = slices.Clone(v); slices.Sort(v); return v[len(v)/2] }
			fmt.Printf("%s: median raw %.1f and %.1f ms, auto %.1f ms; per round, median raw against itself %.2f×, auto %.2f× raw's mean; %s\n",
				c.name, ms(r), ms(median(tr2)), ms(a), mid(noise), mid(ratios), took)
			require.LessOrEqual(t, mid(ratios), 1.15, "auto %v against raw %v and %v", ta, tr, tr2)
			// Which of raw and fast frames auto takes here depends on the host: where the fast codec keeps up
			// with loopback, fast frames (a quarter fewer bytes through the kernel) can measure as fast as raw
			// ones and auto may keep them (one host: raw 12, fast 19, at 1.10× raw's time). High-ratio frames
			// cost several times their CPU, are not faster here, and come only as the policy's probes.
			require.LessOrEqual(t, after.HighRatioHandoffs-before.HighRatioHandoffs, int64(c.rounds/probeEvery+1), took)
		})
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// With more handoffs in flight than cores and no configured link rate, auto leaves high-ratio frames out: the
// handoffs share the CPU, each one's transfer rate is its share of the host, and high-ratio frames cost the
// most CPU per byte. With few in flight, a slow measured link still gets them.
func TestAutoSparesTheCPUUnderLoad(t *testing.T) {
	plane := startPlane(t)
	l := smallLayout(16)
	src := newTestCache(t, l, true, 0)
	p, err := NewProducer(plane, WithEngineID("prefill-busy"))
	require.NoError(t, err)
	defer p.Close()
	require.NoError(t, p.RegisterHostCache(l, src.bases))
	p.policy.link.add(20e6) // a link measured at 20 MB/s: the model wants high-ratio frames
	p.policy.link.add(20e6)
	pathOf := func(req string) path {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.saves[req].path
	}
	_, err = p.Begin("alone", []int{0})
	require.NoError(t, err)
	require.Equal(t, pathHighRatio, pathOf("alone"))
	for i := range runtime.NumCPU() {
		_, err := p.Begin(fmt.Sprint("busy-", i), []int{1})
		require.NoError(t, err)
	}
	_, err = p.Begin("crowded", []int{2})
	require.NoError(t, err)
	require.NotEqual(t, pathHighRatio, pathOf("crowded"))
}
