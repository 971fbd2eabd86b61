package connector

import (
	"sync"
	"time"
)

// rateMeter keeps an exponentially weighted average of a throughput in bytes per second.
type rateMeter struct {
	mu   sync.Mutex
	rate float64
	n    int
}

const rateWeight = 0.25 // weight of a new observation

func (m *rateMeter) observe(bytes int64, d time.Duration) {
	if bytes <= 0 || d <= 0 {
		return
	}
	r := float64(bytes) / d.Seconds()
	m.mu.Lock()
	if m.n <= 1 {
		// The first transfer each way is often a cold one (connections, staging memory faulted in): the second
		// replaces it rather than being averaged with it.
		m.rate = r
	} else {
		m.rate += rateWeight * (r - m.rate)
	}
	m.n++
	m.mu.Unlock()
}

// get returns the average and whether anything was observed.
func (m *rateMeter) get() (float64, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rate, m.n > 0
}

// bypassPolicy decides per handoff whether to send raw frames. Pipelined, a compressed transfer runs at
// min(codec path, ratio × link) and a raw one at min(copy path, link): compression wins when its whole path
// (gather, encode, wire, decode, scatter) outruns the link. The policy measures exactly that: the raw bytes per
// second that compressed and raw transfers deliver, from the consumer's first request until its completion
// notice says every frame is decoded. With a configured link rate and no raw measurement yet, it compares the
// compressed rate with the configured one. In auto mode it keeps both measurements fresh by sending every
// probeEvery-th handoff the other way.
type bypassPolicy struct {
	mode       Bypass
	linkConf   float64
	compressed rateMeter // delivered raw bytes per second of compressed transfers
	rawRate    rateMeter // delivered raw bytes per second of raw transfers
	mu         sync.Mutex
	decisions  int
}

const probeEvery = 16

// raw decides for one handoff; the caller passes mode (read under the producer's lock).
func (p *bypassPolicy) raw(mode Bypass) bool {
	switch mode {
	case BypassAlways:
		return true
	case BypassNever:
		return false
	}
	p.mu.Lock()
	p.decisions++
	probe := p.decisions%probeEvery == 0
	p.mu.Unlock()
	comp, okC := p.compressed.get()
	raw, okR := p.rawRate.get()
	switch {
	case !okC:
		return false // measure compression first
	case !okR && p.linkConf > 0:
		return comp <= p.linkConf // a link slower than the codec path: compress
	case !okR:
		return true // measure raw
	}
	rawBetter := raw > comp
	if probe {
		return !rawBetter
	}
	return rawBetter
}

// observe records a finished transfer of rawBytes.
func (p *bypassPolicy) observe(raw bool, rawBytes int64, d time.Duration) {
	if raw {
		p.rawRate.observe(rawBytes, d)
	} else {
		p.compressed.observe(rawBytes, d)
	}
}
