package connector

import (
	"sync"

	"github.com/splitzip/splitzip/codec"
)

// High-ratio frames code exponents with a Huffman table. Built from the frame's own exponents it costs a
// second pass over the input; given, the encoder makes one pass (about 1.5× faster). The producer learns a
// table per layer for K and one for V from the handoffs it sends, with no step by the user: each high-ratio
// frame adds a sample of its blocks (every sampleEvery-th) to the exponent histogram of its (layer, K/V), and
// the table is rebuilt from it once enough new samples came in. After each rebuild the histogram's counts are
// halved, so it follows the cache's statistics as they drift while older handoffs fade. Until a (layer, K/V)
// has a table its frames carry their own. A pinned table (WithCodeTable) replaces all of them.
//
// Memory is fixed by the layout: one histogram (about 2 KiB) and one table per layer and K/V.

const (
	sampleEvery  = 8       // one block in sampleEvery of each high-ratio frame feeds the histograms
	learnFirst   = 1 << 16 // sampled exponents of a (layer, K/V) before its first table
	learnRebuild = 1 << 20 // sampled exponents between rebuilds
)

// tableLearner holds the learned tables of one registered cache.
type tableLearner struct {
	dt     codec.DType
	pinned *codec.CodeTable

	mu    sync.Mutex
	slots []learnSlot // 2 per layer: K, V
}

type learnSlot struct {
	hist    codec.Histogram
	table   *codec.CodeTable
	pending uint64 // exponents sampled since the last build
}

func newTableLearner(l *Layout, pinned *codec.CodeTable) *tableLearner {
	t := &tableLearner{dt: l.DType, pinned: pinned}
	if pinned == nil && l.DType.CodedIn(codec.ModeHighRatio) {
		t.slots = make([]learnSlot, 2*l.Layers)
		for i := range t.slots {
			t.slots[i].hist.DType = l.DType
		}
	}
	return t
}

// table returns the table for layer l's K (kv 0) or V (kv 1), or nil while none is learned.
func (t *tableLearner) table(l, kv int) *codec.CodeTable {
	if t.pinned != nil {
		return t.pinned
	}
	if t.slots == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.slots[2*l+kv].table
}

// learning says whether samples are wanted.
func (t *tableLearner) learning() bool { return t.pinned == nil && t.slots != nil }

// add merges a histogram sampled from a frame of layer l's K or V (counted by the caller, outside the
// lock) and rebuilds the table when enough new samples came in.
func (t *tableLearner) add(l, kv int, h *codec.Histogram) {
	if !t.learning() || h.Total == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	s := &t.slots[2*l+kv]
	for i, c := range h.Counts {
		s.hist.Counts[i] += c
	}
	s.hist.Total += h.Total
	s.pending += h.Total
	if (s.table == nil && s.pending < learnFirst) || (s.table != nil && s.pending < learnRebuild) {
		return
	}
	table, err := s.hist.CodeTable()
	if err != nil {
		return // cannot happen with samples; the frames keep their own tables
	}
	s.table, s.pending = table, 0
	s.hist.Total = 0
	for i := range s.hist.Counts {
		s.hist.Counts[i] /= 2
		s.hist.Total += s.hist.Counts[i]
	}
}
