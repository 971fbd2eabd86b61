package connector

import (
	"sync"

	"github.com/splitzip/splitzip/codec"
)

// Frames code exponents with tables learned from the cache itself, with no step by the user. High-ratio frames
// use a Huffman table: built from the frame's own exponents it costs a second pass over the input; given, the
// encoder makes one pass (about 1.5× faster). Fast frames use a 4-bit codebook: the built-in one is calibrated
// on one model, and on another model's KV (other exponent ranges, exact zeros) it escapes up to ten times more
// values, which costs ratio and codec speed.
//
// The producer learns, for each layer, a table for K and one for V, and a codebook for the layer (a fast frame
// holds the layer's K and V together), from the handoffs it sends: each coded frame adds a sample of its blocks
// (every sampleEvery-th) to the exponent histogram of its (layer, K/V), and the tables are rebuilt from it once
// enough new samples came in. After each rebuild the histogram's counts are halved, so it follows the cache's
// statistics as they drift while older handoffs fade. Until a layer has them its frames use the frame's own
// table (high-ratio) or the producer's codebook (fast). A pinned table (WithCodeTable) or codebook
// (WithCodebook) replaces all of that mode's.
//
// Memory is fixed by the layout: one histogram (about 2 KiB), one table per layer and K/V, one codebook per layer.

const (
	sampleEvery  = 8       // one block in sampleEvery of each sampled frame feeds the histograms
	learnFirst   = 1 << 16 // sampled exponents of a (layer, K/V) before its first table
	learnRebuild = 1 << 20 // sampled exponents between rebuilds
	// Once a layer's tables are built, one frame of the layer in resampleEvery is sampled where counting costs
	// more than coding: an eighth of every fast frame would cost the fast encoder (over 10 GB/s a core) a third
	// of its speed, and a GPU frame's sample crosses PCIe and is counted on the host while the kernels are idle.
	resampleEvery = 16
)

// firstSampled is the first block of a chunk (of layer l, starting at the save's block lo) that feeds the
// learner; every sampleEvery-th after it does too. It moves with the layer and the chunk, so that over handoffs
// every block position is sampled. Host and GPU caches sample the same blocks.
func firstSampled(l, lo int) int { return (l + lo) % sampleEvery }

// tableLearner holds the learned tables of one registered cache.
type tableLearner struct {
	dt     codec.DType
	pinned *codec.CodeTable
	tables bool // learn high-ratio tables
	books  bool // learn fast-mode codebooks

	mu     sync.Mutex
	slots  []learnSlot       // 2 per layer: K, V
	book   []*codec.Codebook // per layer
	frames []uint32          // per layer: resampled frames coded since its K and V tables were first built
}

type learnSlot struct {
	hist    codec.Histogram
	table   *codec.CodeTable
	pending uint64 // exponents sampled since the last build
	built   bool   // a build happened
}

// newTableLearner learns the tables of the modes l's dtype is coded in, except where pinned: pinned is the
// WithCodeTable table (nil: learn), pinnedBook whether WithCodebook pinned the fast mode's codebook.
func newTableLearner(l *Layout, pinned *codec.CodeTable, pinnedBook bool) *tableLearner {
	t := &tableLearner{
		dt: l.DType, pinned: pinned,
		tables: pinned == nil && l.DType.CodedIn(codec.ModeHighRatio),
		books:  !pinnedBook && l.DType.CodedIn(codec.ModeFast),
	}
	if t.tables || t.books {
		t.slots = make([]learnSlot, 2*l.Layers)
		for i := range t.slots {
			t.slots[i].hist.DType = l.DType
		}
		t.book = make([]*codec.Codebook, l.Layers)
		t.frames = make([]uint32, l.Layers)
	}
	return t
}

// table returns the table for layer l's K (kv 0) or V (kv 1), or nil while none is learned.
func (t *tableLearner) table(l, kv int) *codec.CodeTable {
	if t.pinned != nil {
		return t.pinned
	}
	if !t.tables {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.slots[2*l+kv].table
}

// codebook returns the fast-mode codebook learned for layer l, or nil while none is (or one is pinned: the
// encoder holds it).
func (t *tableLearner) codebook(l int) *codec.Codebook {
	if !t.books {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.book[l]
}

// learning says whether samples are wanted.
func (t *tableLearner) learning() bool { return t.slots != nil }

// fastCodebook returns the codebook for a fast frame of layer l (nil: the encoder's own) and whether the
// frame's blocks should be sampled (resample).
func (t *tableLearner) fastCodebook(l int) (cb *codec.Codebook, sample bool) {
	if !t.learning() {
		return nil, false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.books {
		cb = t.book[l]
	}
	return cb, t.resampleLocked(l)
}

// resample says whether a frame of layer l whose sample costs more than its coding (fast frames, GPU frames)
// should feed the learner: every frame until the layer's K and V tables are first built, then one in
// resampleEvery.
func (t *tableLearner) resample(l int) bool {
	if !t.learning() {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.resampleLocked(l)
}

func (t *tableLearner) resampleLocked(l int) bool {
	if !t.slots[2*l].built || !t.slots[2*l+1].built {
		return true
	}
	t.frames[l]++
	return t.frames[l]%resampleEvery == 0
}

// add merges a histogram sampled from a frame of layer l's K or V (counted by the caller, outside the
// lock) and rebuilds the tables when enough new samples came in.
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
	if (!s.built && s.pending < learnFirst) || (s.built && s.pending < learnRebuild) {
		return
	}
	if t.tables {
		table, err := s.hist.CodeTable()
		if err != nil {
			return // cannot happen with samples; the frames keep their own tables
		}
		s.table = table
	}
	if t.books {
		// The layer's K and V share a fast frame: its codebook counts both (the other half as sampled so far).
		both := s.hist
		o := &t.slots[2*l+1-kv].hist
		for i, c := range o.Counts {
			both.Counts[i] += c
		}
		both.Total += o.Total
		if cb, err := both.Codebook(codec.DefaultBits); err == nil {
			t.book[l] = cb
		}
	}
	s.built, s.pending = true, 0
	s.hist.Total = 0
	for i := range s.hist.Counts {
		s.hist.Counts[i] /= 2
		s.hist.Total += s.hist.Counts[i]
	}
}
