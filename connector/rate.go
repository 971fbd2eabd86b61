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
	if m.n == 0 {
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

// bypassPolicy decides per handoff whether to send raw frames. Once encode, wire and decode are pipelined, a
// compressed transfer runs at min(codec, ratio × link) and a raw one at the link's speed, so compression wins
// exactly when the codec is faster than the link. The link is taken from configuration or measured from raw
// transfers: while compressing, the wire rate is capped by the encoder and says little about the link, so in
// auto mode without a configured rate every probeEvery-th handoff goes raw to measure it.
type bypassPolicy struct {
	mode      Bypass
	linkConf  float64
	codec     rateMeter // encode throughput, raw bytes per second
	link      rateMeter // raw-frame wire throughput
	mu        sync.Mutex
	decisions int
}

const probeEvery = 32

// raw decides for one handoff; the caller passes mode (read under the producer's lock).
func (p *bypassPolicy) raw(mode Bypass) bool {
	switch mode {
	case BypassAlways:
		return true
	case BypassNever:
		return false
	}
	codec, ok := p.codec.get()
	if !ok {
		return false // measure the codec first
	}
	link := p.linkConf
	if link == 0 {
		p.mu.Lock()
		p.decisions++
		probe := p.decisions%probeEvery == 0
		p.mu.Unlock()
		measured, ok := p.link.get()
		if probe || !ok && p.decisions > 1 {
			return true
		}
		if !ok {
			return false
		}
		link = measured
	}
	return codec <= link
}
