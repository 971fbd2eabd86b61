package connector

import (
	"math"
	"sync"
	"time"
)

// The auto choice of a handoff's path (raw, fast or high-ratio frames). A handoff is a pipeline: the producer
// encodes frame after frame, the transport sends each one as soon as it is staged, and the consumer decodes
// each one as it arrives. Its time is about that of the slowest stage over all the bytes, plus filling and
// draining the pipeline with one frame:
//
//	T(path) ≈ R · max(1/enc, 1/(ratio · link), 1/dec) + F · (1/enc + 1/dec)
//
// with R the handoff's raw bytes, F a frame's raw bytes, enc and dec the codec's rates in raw bytes per second
// (for raw frames: the gather and scatter copies), ratio raw over wire bytes, and link the link's rate in
// bytes per second. The producer measures enc and ratio per path on every frame it stages (high-ratio frames
// coded with learned tables apart from those coding their own, which take a second pass), and dec once per
// path by decoding its first frames itself (the consumer runs the same codec; GPU caches take dec = enc, the
// kernels being alike both ways). The link is the configured rate (WithLinkRate, else the transport's rate
// limit) or, failing both, measured from finished transfers: a transfer that took clearly longer than its
// codec stages was bound by the wire and measures it; one that was not only bounds it from below. A handoff
// that waited for staging measures neither the link nor its path (its consumer may have waited on the line).
//
// What the model leaves out (CPU shared between codec and network stack, a slower consumer, the engine's
// pacing) shows as a difference between predicted and measured handoff times: each path keeps the ratio of
// the two over its last effWindow handoffs (its efficiency, their median: one handoff slowed by something
// else on the host does not move it), and predictions are divided by it. A path is chosen over raw only when
// predicted at least rawMargin faster, so auto is never slower than raw beyond noise.
//
// Efficiencies resting on fewer than settleSamples handoffs do not overrule the plain model (efficiencies
// left out): until the model's choice has that many, it is taken, so that a path that the model favours but
// a single unlucky handoff made look slow is measured again before auto settles on another. Measurements of a
// path are only refreshed while it is taken, so every probeEvery-th handoff takes the runner-up instead when
// it is expected within probeWindow of the choice, and every probeModelEvery-th the plain model's choice
// however slow it measured: a path measured slow for a while (a busy moment, a cold start) is measured again,
// at the cost of one handoff in probeEvery running at most probeWindow slower, and one in probeModelEvery
// running as slow as that path now is.
//
// Efficiencies are measured at different moments for different paths, and each prediction moves with the
// rates' averages: on a busy host their product is noisy. Where the plain model prefers raw, a codec path
// chosen by its efficiencies alone must also have been measured faster than raw, handoff time per raw byte
// against handoff time per raw byte (their medians; once both are settled): on a loopback under load, auto
// otherwise kept taking fast frames whose handoffs measured 1.2× raw's time.

// pathRates are one path's speeds in raw bytes per second, and its ratio of raw to wire bytes.
type pathRates struct {
	enc, dec, ratio float64
}

// defaultRates stand in until a path is measured: modest figures for one core of a server CPU, so that the
// first handoffs over a fast link do not count on a codec speed the host may not have.
var defaultRates = [numPaths]pathRates{
	pathRaw:       {enc: 4e9, dec: 4e9, ratio: 1},
	pathFast:      {enc: 3e9, dec: 3e9, ratio: 1.30},
	pathHighRatio: {enc: 1e9, dec: 1.5e9, ratio: 1.40},
}

// gpuDefaultRates stand in for GPU caches, where a frame's stage is the kernels plus its copy to pinned
// staging: somewhat below what an H100 on PCIe Gen5 measured through the connector (raw and fast frames about
// 24 GB/s, high-ratio frames about 20 GB/s: kernels and copy of 2 GiB of KV in 104 ms). CPU figures there
// would keep auto from ever trying high-ratio frames on slow links, where they are the fastest, and figures
// far below the kernels' from trying them where they tie with fast ones: a path is only measured once it is
// taken.
var gpuDefaultRates = [numPaths]pathRates{
	pathRaw:       {enc: 20e9, dec: 20e9, ratio: 1},
	pathFast:      {enc: 16e9, dec: 16e9, ratio: 1.30},
	pathHighRatio: {enc: 14e9, dec: 14e9, ratio: 1.40},
}

const (
	rawMargin       = 0.05           // a codec path must be predicted this much faster than raw to be chosen over it
	tieMargin       = 0.02           // high-ratio must be predicted this much faster than fast (it costs more CPU)
	probeEvery      = 16             // every probeEvery-th handoff may take the runner-up, to measure it again
	probeModelEvery = 4 * probeEvery // … and every probeModelEvery-th the plain model's choice, however slow it measured
	probeWindow     = 0.25           // … when it is expected at most this much slower than the choice
	calibFrames     = 3              // frames of each path the producer decodes itself to learn the decode rate (the best)
	settleSamples   = 3              // handoffs of a path before its efficiency may overrule the plain model
	wireBound       = 1.25           // a transfer this much longer than its codec stages was bound by the wire
	effMin          = 0.2            // efficiencies are clamped to [effMin, 1/effMin]
)

// plan is what one choice depends on.
type plan struct {
	rawBytes, frameBytes float64 // the handoff's raw bytes and one frame's
	link                 float64 // bytes per second on the wire; 0: unknown
	rates                [numPaths]pathRates
	eff                  [numPaths]float64 // measured time over predicted, per path; 0 counts as 1
	allowed              [numPaths]bool
}

// predict is the model's time for path p in seconds, before efficiency.
func (pl *plan) predict(p path) float64 {
	r := pl.rates[p]
	stage := max(1/r.enc, 1/r.dec)
	if pl.link > 0 {
		stage = max(stage, 1/(max(r.ratio, 1)*pl.link))
	}
	return pl.rawBytes*stage + min(pl.frameBytes, pl.rawBytes)*(1/r.enc+1/r.dec)
}

// expect is predict divided by the path's measured efficiency.
func (pl *plan) expect(p path) float64 {
	e := pl.eff[p]
	if e == 0 {
		e = 1
	}
	return pl.predict(p) / min(max(e, effMin), 1/effMin)
}

// choose returns the path with the smallest expected time among those allowed. With the link unknown it
// compresses (fast first) to measure the link; raw is taken only when nothing else is allowed.
func (pl *plan) choose() path {
	return pl.pick(pl.expect, -1)
}

// runnerUp is choose without path best.
func (pl *plan) runnerUp(best path) path {
	return pl.pick(pl.expect, best)
}

// modelChoice is choose on the plain model, efficiencies left out.
func (pl *plan) modelChoice() path {
	return pl.pick(pl.predict, -1)
}

// pick chooses by the times t among the allowed paths other than skip (-1: none); with nothing left, raw.
func (pl *plan) pick(t func(path) float64, skip path) path {
	ok := pl.allowed
	if skip >= 0 {
		ok[skip] = false
	}
	if pl.link <= 0 {
		for _, p := range []path{pathFast, pathHighRatio, pathRaw} {
			if ok[p] {
				return p
			}
		}
		return pathRaw
	}
	best, bt := pathRaw, math.Inf(1)
	if ok[pathFast] {
		best, bt = pathFast, t(pathFast)
	}
	if ok[pathHighRatio] {
		if h := t(pathHighRatio); h < bt*(1-tieMargin) {
			best, bt = pathHighRatio, h
		}
	}
	if ok[pathRaw] && (best == pathRaw || bt > t(pathRaw)*(1-rawMargin)) {
		return pathRaw
	}
	return best
}

// modePolicy holds a producer's measurements and makes the choice per handoff.
type modePolicy struct {
	linkConf float64 // configured link rate; 0: measured

	link      ewma // measured link rate, wire bytes per second
	enc       [numPaths]ewma
	encTabled ewma // high-ratio frames coded with learned or pinned tables
	ratio     [numPaths]ewma
	eff       [numPaths]window
	perByte   [numPaths]window // measured handoff seconds per raw byte

	mu         sync.Mutex
	gpu        bool              // GPU caches: GPU default rates, and decode rates taken to be the encode rates
	dec        [numPaths]float64 // best decode rate of the calibration frames
	calibrated [numPaths]int
	decisions  int
}

// setGPU says whether the cache is on a GPU: its unmeasured paths start from gpuDefaultRates, and its decode
// rates follow its encode rates (the kernels are alike both ways) rather than being calibrated on the host.
func (m *modePolicy) setGPU(on bool) {
	m.mu.Lock()
	m.gpu = on
	m.mu.Unlock()
}

// plan gathers the current estimates for a handoff of rawBytes in frames of frameBytes.
func (m *modePolicy) plan(rawBytes, frameBytes float64, allowed [numPaths]bool) plan {
	pl := plan{rawBytes: rawBytes, frameBytes: frameBytes, link: m.linkConf, allowed: allowed}
	if pl.link <= 0 {
		pl.link, _ = m.link.get()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	defaults := &defaultRates
	if m.gpu {
		defaults = &gpuDefaultRates
	}
	for p := range numPaths {
		d := defaults[p]
		r := pathRates{enc: m.enc[p].or(d.enc), ratio: m.ratio[p].or(d.ratio), dec: d.dec}
		if p == pathHighRatio {
			r.enc = m.encTabled.or(r.enc)
		}
		switch {
		case m.gpu:
			r.dec = r.enc
		case m.dec[p] > 0:
			r.dec = m.dec[p]
		case p == pathRaw:
			r.dec = r.enc // a scatter costs what a gather does
		}
		pl.rates[p] = r
		pl.eff[p] = m.eff[p].or(1)
	}
	return pl
}

// choose picks the path of a handoff of rawBytes in frames of frameBytes.
func (m *modePolicy) choose(rawBytes, frameBytes float64, allowed [numPaths]bool) path {
	pl := m.plan(rawBytes, frameBytes, allowed)
	m.mu.Lock()
	m.decisions++
	n := m.decisions
	m.mu.Unlock()
	return m.decide(&pl, n)
}

// next is the path choose would pick now, without counting a decision.
func (m *modePolicy) next(rawBytes, frameBytes float64, allowed [numPaths]bool) path {
	pl := m.plan(rawBytes, frameBytes, allowed)
	m.mu.Lock()
	n := m.decisions + 1
	m.mu.Unlock()
	return m.decide(&pl, n)
}

// decide is decision n: the choice, unless the plain model's choice is not settled or due for a probe, or
// the runner-up is.
func (m *modePolicy) decide(pl *plan, n int) path {
	best := pl.choose()
	if pl.link <= 0 {
		return best
	}
	if model := pl.modelChoice(); model != best {
		if _, k := m.eff[model].median(); k < settleSamples || n%probeModelEvery == 0 {
			return model
		}
	}
	if best != pathRaw && pl.allowed[pathRaw] && pl.modelChoice() == pathRaw && !m.measuredFaster(best, pathRaw) {
		best = pathRaw
	}
	if n%probeEvery != 0 {
		return best
	}
	if next := pl.runnerUp(best); next != best && pl.allowed[next] && pl.expect(next) <= pl.expect(best)*(1+probeWindow) {
		return next
	}
	return best
}

// measuredFaster reports whether path p's handoffs measured at least rawMargin faster per raw byte than path
// q's, or either is not settled yet (settleSamples handoffs).
func (m *modePolicy) measuredFaster(p, q path) bool {
	tp, kp := m.perByte[p].median()
	tq, kq := m.perByte[q].median()
	return kp < settleSamples || kq < settleSamples || tp < tq*(1-rawMargin)
}

// observeFrame records one staged frame of path p: n raw bytes in encoded bytes, staged in d (codec and
// copies); tabled says a high-ratio frame was coded with given tables.
func (m *modePolicy) observeFrame(p path, n, encoded int, d time.Duration, tabled bool) {
	if tabled {
		m.encTabled.observeRate(float64(n), d)
	} else {
		m.enc[p].observeRate(float64(n), d)
	}
	if encoded > 0 {
		m.ratio[p].add(float64(n) / float64(encoded))
	}
}

// needsCalibration says whether the producer should time a decode of path p's next frame.
func (m *modePolicy) needsCalibration(p path) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return p != pathRaw && !m.gpu && m.calibrated[p] < calibFrames
}

// calibrate records a decode of n raw bytes of path p in d.
func (m *modePolicy) calibrate(p path, n int, d time.Duration) {
	if n <= 0 || d <= 0 {
		return
	}
	m.mu.Lock()
	m.dec[p] = max(m.dec[p], float64(n)/d.Seconds())
	m.calibrated[p]++
	m.mu.Unlock()
}

// observeTransfer records the transport's side of a finished transfer of path p: wireBytes sent in d for a
// handoff of rawBytes. Only a transfer clearly longer than its codec stages measures the link; a shorter one
// was bound by the codec, and only shows the link is at least that fast.
func (m *modePolicy) observeTransfer(p path, rawBytes, wireBytes int64, d time.Duration) {
	if wireBytes <= 0 || d <= 0 {
		return
	}
	pl := m.plan(float64(rawBytes), 0, [numPaths]bool{})
	r := pl.rates[p]
	codecTime := float64(rawBytes) * max(1/r.enc, 1/r.dec)
	rate := float64(wireBytes) / d.Seconds()
	if d.Seconds() > wireBound*codecTime {
		m.link.add(rate)
	} else {
		m.link.raise(rate)
	}
}

// observeDone records a handoff of path p completed in d, from the consumer's first request until every
// frame was decoded: its efficiency against the model's time for it, with what is known now.
func (m *modePolicy) observeDone(p path, rawBytes, frameBytes float64, d time.Duration) {
	if d <= 0 || rawBytes <= 0 {
		return
	}
	pl := m.plan(rawBytes, frameBytes, [numPaths]bool{})
	if pl.link <= 0 {
		return // no prediction to compare with
	}
	m.eff[p].add(pl.predict(p) / d.Seconds())
	m.perByte[p].add(d.Seconds() / rawBytes)
}

// ModeEstimates are what a producer's auto choice knows: per path, its measured or default rates.
type ModeEstimates struct {
	// Link is the link rate in bytes per second the choice uses, 0 while unknown; LinkConfigured says it
	// was configured (WithLinkRate or the transport's rate limit), not measured.
	Link           float64
	LinkConfigured bool
	Raw, Fast      PathEstimate
	HighRatio      PathEstimate
}

// PathEstimate is one path's figures: encode and decode rates in raw bytes per second, ratio of raw to wire
// bytes, and Efficiency, the measured handoff time over the model's (1: as predicted, < 1: slower).
type PathEstimate struct {
	Encode, Decode, Ratio, Efficiency float64
}

func (m *modePolicy) estimates() ModeEstimates {
	pl := m.plan(0, 0, [numPaths]bool{})
	est := func(p path) PathEstimate {
		r := pl.rates[p]
		return PathEstimate{Encode: r.enc, Decode: r.dec, Ratio: r.ratio, Efficiency: pl.eff[p]}
	}
	return ModeEstimates{Link: pl.link, LinkConfigured: m.linkConf > 0, Raw: est(pathRaw), Fast: est(pathFast), HighRatio: est(pathHighRatio)}
}
