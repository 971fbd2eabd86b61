package codec

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"
)

// CodeTable is the exponent code of high-ratio (entropy) frames: a canonical Huffman code given by one code
// length per symbol. Symbols 0 .. 2^eb−1 are the exponent field values of the dtype (eb = ExponentBits), and
// symbol 2^eb is ESC: an exponent without a code of its own is written as ESC's code followed by the exponent
// in eb bits. Every frame carries its table (4 bits a symbol), so a decoder needs nothing else.
//
// By default an encoder builds a table from each frame's own exponent histogram. A CodeTable given to it
// (WithCodeTable, EncodeWithTable) is for pinned or adaptive use: learned from earlier frames
// (Histogram.CodeTable), saved as JSON and reused, which saves the histogram pass.
type CodeTable struct {
	DType DType
	// Lengths holds 2^eb + 1 code lengths, 0..MaxCodeLen; 0: the symbol has no code. Lengths[1<<eb] is ESC's.
	Lengths []uint8
	// Samples is the number of exponents the table was learned from (informational).
	Samples uint64
}

// escSymbol is ESC's symbol number for exponent width eb.
func escSymbol(eb int) int { return 1 << eb }

// NewCodeTable validates lengths for dt (see CodeTable) and returns a table holding a copy of them.
func NewCodeTable(dt DType, lengths []uint8) (*CodeTable, error) {
	t := &CodeTable{DType: dt, Lengths: slices.Clone(lengths)}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	return t, nil
}

// Validate checks that the table is a valid entropy-frame code for its dtype: the right number of lengths,
// each at most MaxCodeLen, at least one code, Kraft sum at most 1 (incomplete codes are allowed).
func (t *CodeTable) Validate() error {
	if t == nil {
		return fmt.Errorf("%w: nil code table", ErrCodebook)
	}
	if !t.DType.CodedIn(ModeHighRatio) {
		return fmt.Errorf("%w: dtype %s has no exponent to code", ErrCodebook, t.DType)
	}
	eb := t.DType.ExponentBits()
	if len(t.Lengths) != 1<<eb+1 {
		return fmt.Errorf("%w: %d code lengths for %s, need %d (2^%d exponents and ESC)", ErrCodebook, len(t.Lengths), t.DType, 1<<eb+1, eb)
	}
	if _, msg := checkLengths(t.Lengths); msg != "" {
		return fmt.Errorf("%w: %s", ErrCodebook, msg)
	}
	return nil
}

// checkLengths validates code lengths (ESC's last) and returns the longest, or a message saying what
// is wrong.
func checkLengths(lengths []uint8) (maxLen int, msg string) {
	var kraft uint32 // in units of 2^-MaxCodeLen
	coded := 0
	for s, l := range lengths {
		if l > MaxCodeLen {
			return 0, fmt.Sprintf("symbol %d has code length %d, longer than %d", s, l, MaxCodeLen)
		}
		if l > 0 {
			coded++
			kraft += 1 << (MaxCodeLen - l)
			maxLen = max(maxLen, int(l))
		}
	}
	if coded == 0 {
		return 0, "no symbol has a code"
	}
	if kraft > 1<<MaxCodeLen {
		return 0, fmt.Sprintf("code lengths oversubscribe the code space (Kraft sum %d/%d)", kraft, 1<<MaxCodeLen)
	}
	return maxLen, ""
}

// canonicalCodes assigns the canonical codes of lengths (DEFLATE's rule: by length, then symbol; each code is
// the previous plus one, shifted left by the length difference) into codes.
func canonicalCodes(lengths []uint8, codes []uint16) {
	var count [MaxCodeLen + 1]uint16
	for _, l := range lengths {
		count[l]++
	}
	count[0] = 0
	var next [MaxCodeLen + 2]uint16
	code := uint16(0)
	for l := 1; l <= MaxCodeLen; l++ {
		code = (code + count[l-1]) << 1
		next[l] = code
	}
	for s, l := range lengths {
		if l > 0 {
			codes[s] = next[l]
			next[l]++
		} else {
			codes[s] = 0
		}
	}
}

// span returns the first and last exponents with a code (0, 0 when only ESC has one): the range the frame's
// compact code table lists.
func (t *CodeTable) span() (lo, hi int) {
	lo, hi = -1, 0
	for x, l := range t.Lengths[:len(t.Lengths)-1] {
		if l > 0 {
			if lo < 0 {
				lo = x
			}
			hi = x
		}
	}
	return max(lo, 0), hi
}

// AppendBinary appends the table as a high-ratio frame carries it (FORMAT.md's compact code table): what a GPU
// encoder given a table in device memory copies into its frames.
func (t *CodeTable) AppendBinary(b []byte) ([]byte, error) {
	if err := t.Validate(); err != nil {
		return b, err
	}
	lo, hi := t.span()
	n := len(b)
	b = append(b, make([]byte, codeTableLen(lo, hi))...)
	putCodeTable(b[n:], t.Lengths, lo, hi)
	return b, nil
}

// MarshalBinary is AppendBinary to a new slice.
func (t *CodeTable) MarshalBinary() ([]byte, error) { return t.AppendBinary(nil) }

// MaxLen is the longest code length (L in FORMAT.md).
func (t *CodeTable) MaxLen() int {
	m := 0
	for _, l := range t.Lengths {
		m = max(m, int(l))
	}
	return m
}

// Escape is ESC's code length (0: ESC has no code).
func (t *CodeTable) Escape() int { return int(t.Lengths[len(t.Lengths)-1]) }

// CodesAll reports whether the table can code every exponent of its dtype: each has a code, or ESC has one.
// An encoder only takes tables that do.
func (t *CodeTable) CodesAll() bool {
	if t.Escape() > 0 {
		return true
	}
	return !slices.Contains(t.Lengths[:len(t.Lengths)-1], 0)
}

// Bits is the number of exponent-stream bits the table spends on the exponents h counted (lane padding
// excluded), and whether it can code them all. It compares tables: an adaptive encoder keeps a table while
// its Bits on recent data stay close to those of a table built from that data.
func (t *CodeTable) Bits(h *Histogram) (uint64, bool) {
	if h.DType != t.DType {
		return 0, false
	}
	eb := t.DType.ExponentBits()
	esc := uint64(t.Escape())
	var bits uint64
	for x, c := range h.Counts[:1<<eb] {
		if c == 0 {
			continue
		}
		switch l := uint64(t.Lengths[x]); {
		case l > 0:
			bits += c * l
		case esc > 0:
			bits += c * (esc + uint64(eb))
		default:
			return 0, false
		}
	}
	return bits, true
}

// Equal reports whether two tables code the same way.
func (t *CodeTable) Equal(o *CodeTable) bool {
	return t != nil && o != nil && t.DType == o.DType && slices.Equal(t.Lengths, o.Lengths)
}

// codeTableJSON is the file form: a format tag, so a stray JSON file is not mistaken for a table, and the
// lengths as numbers (a []uint8 would marshal as base64).
type codeTableJSON struct {
	Format  string `json:"format"`
	Version int    `json:"version"`
	DType   DType  `json:"dtype"`
	Lengths []int  `json:"lengths"`
	Samples uint64 `json:"samples,omitempty"`
}

// MarshalJSON writes the table's file form.
func (t *CodeTable) MarshalJSON() ([]byte, error) {
	v := codeTableJSON{Format: "splitzip-codetable", Version: 1, DType: t.DType, Samples: t.Samples, Lengths: make([]int, len(t.Lengths))}
	for i, l := range t.Lengths {
		v.Lengths[i] = int(l)
	}
	return json.Marshal(v)
}

// UnmarshalJSON reads and validates a table written by MarshalJSON.
func (t *CodeTable) UnmarshalJSON(b []byte) error {
	var v codeTableJSON
	if err := json.Unmarshal(b, &v); err != nil {
		return fmt.Errorf("%w: %v", ErrCodebook, err)
	}
	if v.Format != "splitzip-codetable" || v.Version != 1 {
		return fmt.Errorf("%w: not a splitzip code table v1 (format %q, version %d)", ErrCodebook, v.Format, v.Version)
	}
	n := CodeTable{DType: v.DType, Samples: v.Samples, Lengths: make([]uint8, len(v.Lengths))}
	for i, l := range v.Lengths {
		if l < 0 || l > MaxCodeLen {
			return fmt.Errorf("%w: code length %d of symbol %d out of range", ErrCodebook, l, i)
		}
		n.Lengths[i] = uint8(l)
	}
	if err := n.Validate(); err != nil {
		return err
	}
	*t = n
	return nil
}

// LoadCodeTable reads a code table JSON file.
func LoadCodeTable(path string) (*CodeTable, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	t := new(CodeTable)
	if err := json.Unmarshal(b, t); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// Save writes the table as JSON.
func (t *CodeTable) Save(path string) error {
	b, err := json.Marshal(t)
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// CodeTable learns a table for other data of the histogram's dtype: the length-limited Huffman code of the
// counted exponents, with ESC always given a code so that exponents never seen still encode (CodesAll).
// Rare exponents whose own code would cost more than ESC plus the raw exponent are left to ESC.
func (h *Histogram) CodeTable() (*CodeTable, error) {
	if !h.DType.CodedIn(ModeHighRatio) {
		return nil, fmt.Errorf("%w: dtype %s has no exponent to code", ErrCodebook, h.DType)
	}
	if h.Total == 0 {
		return nil, fmt.Errorf("%w: no samples", ErrCodebook)
	}
	eb := h.DType.ExponentBits()
	t := &CodeTable{DType: h.DType, Lengths: make([]uint8, 1<<eb+1), Samples: h.Total}
	var b tableBuilder
	b.build(&h.Counts, eb, true, t.Lengths)
	return t, nil
}

// Entropy is the Shannon entropy of the counted exponents in bits (the bound no exponent code beats).
func (h *Histogram) Entropy() float64 {
	if h.Total == 0 {
		return 0
	}
	var s float64
	for _, c := range h.Counts {
		if c > 0 {
			p := float64(c) / float64(h.Total)
			s -= p * math.Log2(p)
		}
	}
	return s
}

// tableBuilder builds length-limited Huffman codes; its scratch lives in the Encoder so that building a table
// for every frame allocates nothing.
type tableBuilder struct {
	order  [256]int // present exponents, most frequent first (ties: smaller exponent first)
	leaves [257]pmItem
	levels [MaxCodeLen][2 * 257]pmItem
	counts [MaxCodeLen]int
	lens   [257]uint8
}

// pmItem is a package-merge list item: a leaf (sym ≥ 0) or a package of two items of the level below.
type pmItem struct {
	w   uint64
	sym int16
}

// build writes into lengths (2^eb + 1 entries, ESC last) the code for the exponent counts: exponents with a
// count get codes, except that a tail of the rarest may go through ESC when that costs fewer bits in all; with
// forceESC, ESC always gets a code. The choice is deterministic: the cheapest of the candidate splits (the k
// most frequent exponents coded, the rest escaped), the one with more coded exponents on a tie. It returns the
// exponent bits the code spends on counts and how many elements escape.
func (b *tableBuilder) build(counts *[256]uint64, eb int, forceESC bool, lengths []uint8) (bits, escapes uint64) {
	nsym := 1 << eb
	p := 0
	var total uint64
	for x := range nsym {
		if counts[x] > 0 {
			b.order[p] = x
			p++
			total += counts[x]
		}
	}
	ord := b.order[:p]
	slices.SortStableFunc(ord, func(a, c int) int {
		switch {
		case counts[a] > counts[c]:
			return -1
		case counts[a] < counts[c]:
			return 1
		}
		return 0
	})
	clear(lengths)
	if p == 0 { // nothing counted: any valid table; ESC codes everything
		lengths[nsym] = 1
		return 0, 0
	}
	bestBits := uint64(math.MaxUint64)
	var best [257]uint8
	var bestEsc uint64
	worse := 0
	var tail uint64 // counts of ord[k:]
	for k := p; k >= 1; k-- {
		if k < p {
			tail += counts[ord[k]]
			// Escape only rare exponents: at most 1/128 of the elements, and stop once three splits in a
			// row did not improve.
			if tail > total>>7 || worse >= 3 {
				break
			}
		}
		escW := tail
		if forceESC && escW == 0 {
			escW = 1
		}
		n := k
		if escW > 0 {
			n++
		}
		if n > 1<<MaxCodeLen {
			continue
		}
		for i := range k { // the rarest first: limited sorts them ascending
			b.leaves[k-1-i] = pmItem{w: counts[ord[i]], sym: int16(i)}
		}
		if escW > 0 {
			b.leaves[k] = pmItem{w: escW, sym: int16(k)}
		}
		b.limited(n)
		var cost uint64
		for i := range k {
			cost += counts[ord[i]] * uint64(b.lens[i])
		}
		if tail > 0 {
			cost += tail * (uint64(b.lens[k]) + uint64(eb))
		}
		if cost < bestBits {
			bestBits, bestEsc, worse = cost, tail, 0
			clear(best[:])
			for i := range k {
				best[ord[i]] = b.lens[i]
			}
			if escW > 0 {
				best[nsym] = b.lens[k]
			}
		} else {
			worse++
		}
	}
	copy(lengths, best[:nsym+1])
	return bestBits, bestEsc
}

// sortLeaves sorts leaves by weight, then symbol (the symbols are distinct, so the order is unique). An
// insertion sort: build lists the leaves in ascending order but for ties and the ESC leaf, which is nearly
// linear, where the generic stable sort's comparisons through a function cost a tenth of a small frame's
// encode.
func sortLeaves(leaves []pmItem) {
	for i := 1; i < len(leaves); i++ {
		x := leaves[i]
		j := i
		for ; j > 0 && (leaves[j-1].w > x.w || leaves[j-1].w == x.w && leaves[j-1].sym > x.sym); j-- {
			leaves[j] = leaves[j-1]
		}
		leaves[j] = x
	}
}

// limited computes optimal code lengths of at most MaxCodeLen bits for the weights b.leaves[:n] (n ≤ 256,
// weights > 0) into b.lens[:n], by package-merge: the deepest level lists the leaves by weight; each level
// above lists the leaves merged with the pairs (packages) of the level below; the 2n−2 cheapest items of the
// top level are chosen, and a leaf's length is how many chosen lists it appears in, following packages down.
func (b *tableBuilder) limited(n int) {
	lens := b.lens[:n]
	clear(lens)
	if n == 1 {
		lens[0] = 1
		return
	}
	leaves := b.leaves[:n]
	sortLeaves(leaves)
	deep := MaxCodeLen - 1
	copy(b.levels[deep][:], leaves)
	b.counts[deep] = n
	for j := deep - 1; j >= 0; j-- {
		below := b.levels[j+1][:b.counts[j+1]]
		out := b.levels[j][:0]
		li, pi := 0, 0
		np := len(below) / 2
		for li < n || pi < np {
			if pi >= np || (li < n && leaves[li].w <= below[2*pi].w+below[2*pi+1].w) {
				out = append(out, leaves[li])
				li++
			} else {
				out = append(out, pmItem{w: below[2*pi].w + below[2*pi+1].w, sym: -1})
				pi++
			}
		}
		b.counts[j] = len(out)
	}
	take := 2*n - 2
	for j := 0; j <= deep && take > 0; j++ {
		pk := 0
		for _, it := range b.levels[j][:take] {
			if it.sym >= 0 {
				lens[it.sym]++
			} else {
				pk++
			}
		}
		take = 2 * pk
	}
}
