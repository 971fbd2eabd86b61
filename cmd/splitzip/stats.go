package main

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/internal/fp8"
)

const (
	defaultCalibration = "tests/data/kv_calibration.safetensors"
	defaultEvaluation  = "tests/data/kv_evaluation.safetensors"
)

var kvName = regexp.MustCompile(`^layer\.(\d+)\.([kv])$`)

// kvStats accumulates the frames of one way of coding a set of tensors.
type kvStats struct {
	elements, escapes, raw, frame uint64
	frames, raws                  uint64 // frames, and how many of them are raw frames
	// boundBits is Σ elements × (H + residual bits) over the tensors, H each tensor's exponent entropy: the
	// size in bits below which no exponent code of a frame per tensor goes (stays 0 where not measured).
	boundBits float64
}

func (s *kvStats) add(h codec.Header) {
	s.elements += h.Elements
	s.escapes += h.Escapes
	s.raw += h.RawLen()
	s.frame += h.FrameLen()
	s.frames++
	if h.Raw {
		s.raws++
	}
}

func (s *kvStats) merge(o kvStats) {
	s.elements += o.elements
	s.escapes += o.escapes
	s.raw += o.raw
	s.frame += o.frame
	s.frames += o.frames
	s.raws += o.raws
	s.boundBits += o.boundBits
}

func (s kvStats) measured() bool      { return s.elements > 0 }
func (s kvStats) escapeRate() float64 { return float64(s.escapes) / float64(max(s.elements, 1)) }
func (s kvStats) coverage() float64   { return 1 - s.escapeRate() }
func (s kvStats) ratio() float64      { return float64(s.raw) / float64(max(s.frame, 1)) }

// bound is the entropy bound on the ratio: raw bits over boundBits (16/(H+8) for one bf16 tensor).
func (s kvStats) bound() float64 { return 8 * float64(s.raw) / s.boundBits }

// modeStats is one way of coding the evaluation tensors in both modes.
type modeStats struct{ fast, high kvStats }

// The rows of the overall table, in order.
const (
	rowOwn      = iota // each frame's own codebook or table
	rowPinned          // the calibration set's codebook or table, pinned
	rowPerName         // a codebook or table per tensor name (layer, K/V) from the calibration set, pinned
	rowThreeBit        // fast mode with 3-bit codes
	rowE4M3Own
	rowE4M3Pinned
	statsRows
)

// statsCalibration is what the calibration set gives each mode.
type statsCalibration struct {
	book, book3 *codec.Codebook            // fast: global 4-bit and 3-bit codebooks
	books       map[string]*codec.Codebook // fast: a 4-bit codebook per tensor name
	table       *codec.CodeTable           // high-ratio: global bf16 table
	tables      map[string]*codec.CodeTable
	tableE4M3   *codec.CodeTable // high-ratio: table of the set quantised to fp8 e4m3
}

func calibrateStats(tensors []namedTensor) (*statsCalibration, error) {
	c := &statsCalibration{books: map[string]*codec.Codebook{}, tables: map[string]*codec.CodeTable{}}
	hist, _ := codec.NewHistogram(codec.BF16)
	histE4M3, _ := codec.NewHistogram(codec.FP8E4M3)
	for _, t := range tensors {
		if err := hist.Add(t.data); err != nil {
			return nil, fmt.Errorf("%s: %w", t.name, err)
		}
		if err := histE4M3.Add(fp8.QuantizeBF16E4M3(t.data)); err != nil {
			return nil, fmt.Errorf("%s: %w", t.name, err)
		}
		h, _ := codec.NewHistogram(codec.BF16)
		if err := h.Add(t.data); err != nil {
			return nil, fmt.Errorf("%s: %w", t.name, err)
		}
		var err error
		if c.books[t.name], err = h.Codebook(codec.DefaultBits); err != nil {
			return nil, fmt.Errorf("%s: %w", t.name, err)
		}
		if c.tables[t.name], err = h.CodeTable(); err != nil {
			return nil, fmt.Errorf("%s: %w", t.name, err)
		}
	}
	var err error
	if c.book, err = hist.Codebook(codec.DefaultBits); err != nil {
		return nil, err
	}
	if c.book3, err = hist.Codebook(3); err != nil {
		return nil, err
	}
	if c.table, err = hist.CodeTable(); err != nil {
		return nil, err
	}
	if c.tableE4M3, err = histE4M3.CodeTable(); err != nil {
		return nil, err
	}
	return c, nil
}

// roundTripper encodes, decodes and compares, reusing its buffers.
type roundTripper struct {
	dec        *codec.Decoder
	frame, out []byte
	frames     int
	// encode and decode time of the timed coders: [0] fast with the pinned codebook, [1] high-ratio with each
	// frame's own table.
	encTime, decTime [2]time.Duration
}

// check encodes src with encode, decodes the frame, fails unless the bytes come back exactly, and returns the
// frame's header. timer ≥ 0 adds the times to that slot.
func (r *roundTripper) check(what string, src []byte, timer int, encode func(dst []byte) ([]byte, error)) (codec.Header, error) {
	t0 := time.Now()
	frame, err := encode(r.frame[:0])
	t1 := time.Now()
	if err != nil {
		return codec.Header{}, fmt.Errorf("%s: encode: %w", what, err)
	}
	r.frame = frame
	out, h, err := r.dec.Decode(r.out[:0], frame)
	t2 := time.Now()
	if err != nil {
		return h, fmt.Errorf("%s: decode: %w", what, err)
	}
	r.out = out
	if !bytes.Equal(out, src) {
		return h, fmt.Errorf("%s: round trip is NOT bit-exact", what)
	}
	if timer >= 0 {
		r.encTime[timer] += t1.Sub(t0)
		r.decTime[timer] += t2.Sub(t1)
	}
	r.frames++
	return h, nil
}

// entropyBits is n × (H + residual bits) of a tensor: its size at the entropy bound of its exponents.
func entropyBits(data []byte, dt codec.DType) (float64, error) {
	h, err := codec.NewHistogram(dt)
	if err != nil {
		return 0, err
	}
	if err := h.Add(data); err != nil {
		return 0, err
	}
	return float64(h.Total) * (h.Entropy() + float64(dt.ResidualBits())), nil
}

func runStats(args []string) error { return writeStats(os.Stdout, args) }

// writeStats runs 'splitzip stats' with its output to w.
func writeStats(w io.Writer, args []string) error {
	fs := newFlags("stats", "")
	calPath := fs.String("calibration", defaultCalibration, "KV tensors to calibrate codebooks and code tables on")
	evalPath := fs.String("evaluation", defaultEvaluation, "KV tensors to measure (never the calibration set)")
	bookPath := fs.String("o", "", "also write the global fast-mode codebook calibrated here to this JSON file")
	tablePath := fs.String("table", "", "also write the global high-ratio code table calibrated here to this JSON file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *calPath == *evalPath {
		return fmt.Errorf("calibration and evaluation are the same file: a codebook must not be measured on its own data")
	}
	cal, _, err := loadTensors(*calPath, "")
	if err != nil {
		return err
	}
	eval, evalMeta, err := loadTensors(*evalPath, "")
	if err != nil {
		return err
	}
	if cal = bf16Only(cal); len(cal) == 0 {
		return fmt.Errorf("%s: no bf16 tensors", *calPath)
	}
	if eval = bf16Only(eval); len(eval) == 0 {
		return fmt.Errorf("%s: no bf16 tensors", *evalPath)
	}
	c, err := calibrateStats(cal)
	if err != nil {
		return fmt.Errorf("%s: %w", *calPath, err)
	}
	if *bookPath != "" {
		if err := c.book.Save(*bookPath); err != nil {
			return err
		}
	}
	if *tablePath != "" {
		if err := c.table.Save(*tablePath); err != nil {
			return err
		}
	}
	fast, err := codec.NewEncoder()
	if err != nil {
		return err
	}
	adaptive, err := codec.NewEncoder(codec.WithAdaptiveCodebook(true))
	if err != nil {
		return err
	}
	high, err := codec.NewEncoder(codec.WithMode(codec.ModeHighRatio))
	if err != nil {
		return err
	}
	dec, err := codec.NewDecoder()
	if err != nil {
		return err
	}
	rt := &roundTripper{dec: dec}

	type layerRow struct{ k, v modeStats }
	layers := map[int]*layerRow{}
	var rows [statsRows]modeStats
	for _, t := range eval {
		bits, err := entropyBits(t.data, codec.BF16)
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		// Every way the rows code the tensor, each frame checked. Timed: the fast frames of the layer table
		// (slot 0) and the high-ratio ones (slot 1).
		q := fp8.QuantizeBF16E4M3(t.data)
		qbits, err := entropyBits(q, codec.FP8E4M3)
		if err != nil {
			return fmt.Errorf("%s as fp8 e4m3: %w", t.name, err)
		}
		type coding struct {
			row   int
			mode  codec.Mode
			timer int
			src   []byte
			enc   func(dst []byte) ([]byte, error)
		}
		codings := []coding{
			{rowPinned, codec.ModeFast, 0, t.data, func(d []byte) ([]byte, error) { return fast.EncodeWith(d, t.data, c.book) }},
			{rowOwn, codec.ModeHighRatio, 1, t.data, func(d []byte) ([]byte, error) { return high.Encode(d, t.data, codec.BF16) }},
			{rowOwn, codec.ModeFast, -1, t.data, func(d []byte) ([]byte, error) { return adaptive.Encode(d, t.data, codec.BF16) }},
			{rowPinned, codec.ModeHighRatio, -1, t.data, func(d []byte) ([]byte, error) { return high.EncodeWithTable(d, t.data, c.table) }},
			{rowThreeBit, codec.ModeFast, -1, t.data, func(d []byte) ([]byte, error) { return fast.EncodeWith(d, t.data, c.book3) }},
			{rowE4M3Own, codec.ModeFast, -1, q, func(d []byte) ([]byte, error) { return fast.Encode(d, q, codec.FP8E4M3) }},
			{rowE4M3Own, codec.ModeHighRatio, -1, q, func(d []byte) ([]byte, error) { return high.Encode(d, q, codec.FP8E4M3) }},
			{rowE4M3Pinned, codec.ModeHighRatio, -1, q, func(d []byte) ([]byte, error) { return high.EncodeWithTable(d, q, c.tableE4M3) }},
		}
		if book, table := c.books[t.name], c.tables[t.name]; book != nil && table != nil {
			codings = append(codings,
				coding{rowPerName, codec.ModeFast, -1, t.data, func(d []byte) ([]byte, error) { return fast.EncodeWith(d, t.data, book) }},
				coding{rowPerName, codec.ModeHighRatio, -1, t.data, func(d []byte) ([]byte, error) { return high.EncodeWithTable(d, t.data, table) }})
		}
		var cell modeStats
		for _, cd := range codings {
			what := t.name
			if cd.row >= rowE4M3Own {
				what += " as fp8 e4m3"
			}
			h, err := rt.check(what, cd.src, cd.timer, cd.enc)
			if err != nil {
				return err
			}
			switch {
			case cd.mode == codec.ModeHighRatio:
				rows[cd.row].high.add(h)
			case cd.row == rowE4M3Own: // fast mode carries e4m3 raw whatever the table: one row holds both
				rows[rowE4M3Own].fast.add(h)
				rows[rowE4M3Pinned].fast.add(h)
			default:
				rows[cd.row].fast.add(h)
			}
			switch cd.timer {
			case 0:
				cell.fast.add(h)
			case 1:
				cell.high.add(h)
			}
		}
		cell.high.boundBits = bits
		for _, r := range []int{rowOwn, rowPinned, rowPerName} {
			rows[r].high.boundBits += bits
		}
		rows[rowE4M3Own].high.boundBits += qbits
		rows[rowE4M3Pinned].high.boundBits += qbits

		if m := kvName.FindStringSubmatch(t.name); m != nil {
			layer, _ := strconv.Atoi(m[1])
			if layers[layer] == nil {
				layers[layer] = &layerRow{}
			}
			if m[2] == "k" {
				layers[layer].k = cell
			} else {
				layers[layer].v = cell
			}
		}
	}

	calName := strings.TrimSuffix(filepath.Base(*calPath), ".safetensors")
	fmt.Fprintf(w, "SplitZip on real KV, both modes: calibrated on %s, measured on %s, a frame per tensor\n", *calPath, *evalPath)
	if src := evalMeta["model"]; src != "" {
		fmt.Fprintf(w, "model: %s, evaluation tokens: %s\n", src, evalMeta["token_count"])
	}
	fmt.Fprintf(w, "fast:       v1 frames, 4-bit codes; in the layer table %s's global codebook (coverage there %.4f%%):\n", calName, 100*c.book.Coverage)
	fmt.Fprintf(w, "            exponents %v;\n", c.book.Exponents)
	fmt.Fprintf(w, "            top-16 = elements it codes, escape = the rest (sent aside)\n")
	fmt.Fprintf(w, "high-ratio: v2 entropy frames, canonical Huffman exponent codes of ≤ %d bits; in the layer table each frame's\n", codec.MaxCodeLen)
	fmt.Fprintf(w, "            own code table; bound = 16/(H+8), H = the tensor's exponent entropy in bits\n\n")

	cols := fmt.Sprintf("%9s %8s %6s %10s %6s", "top-16", "escape", "fast", "high-ratio", "bound")
	fmt.Fprintf(w, "%5s | %-*s | %s\n", "", len(cols), "K", "V")
	fmt.Fprintf(w, "%5s | %s | %s\n", "layer", cols, cols)
	cellText := func(s modeStats) string {
		if !s.fast.measured() {
			return fmt.Sprintf("%9s %8s %6s %10s %6s", "–", "–", "–", "–", "–")
		}
		return fmt.Sprintf("%8.4f%% %8.2e %6.4f %10.4f %6.4f", 100*s.fast.coverage(), s.fast.escapeRate(),
			s.fast.ratio(), s.high.ratio(), s.high.bound())
	}
	var allK, allV modeStats
	for layer := 0; len(layers) > 0 && layer <= maxKey(layers); layer++ {
		r, ok := layers[layer]
		if !ok {
			continue
		}
		fmt.Fprintf(w, "%5d | %s | %s\n", layer, cellText(r.k), cellText(r.v))
		allK.fast.merge(r.k.fast)
		allK.high.merge(r.k.high)
		allV.fast.merge(r.v.fast)
		allV.high.merge(r.v.high)
	}
	if len(layers) > 0 {
		fmt.Fprintf(w, "%5s | %s | %s\n", "all", cellText(allK), cellText(allV))
	}

	labels := [statsRows]string{
		rowOwn:        "bf16, (a) each frame's own table",
		rowPinned:     fmt.Sprintf("bf16, (b) %s's table, pinned", calName),
		rowPerName:    fmt.Sprintf("bf16, (c) %s's table per layer and K/V", calName),
		rowThreeBit:   "bf16, 3-bit codes (top 8)",
		rowE4M3Own:    "fp8 e4m3, (a) each frame's own table",
		rowE4M3Pinned: fmt.Sprintf("fp8 e4m3, (b) %s's table, pinned", calName),
	}
	width := len([]rune("overall (table: codebook or code table)"))
	for _, l := range labels {
		width = max(width, len([]rune(l)))
	}
	pad := func(s string) string { return s + strings.Repeat(" ", width-len([]rune(s))) }
	fmt.Fprintf(w, "\n%s %7s %8s | %10s %8s %7s %8s\n", pad("overall (table: codebook or code table)"), "fast", "escape", "high-ratio", "escape", "bound", "of bound")
	for i, r := range rows {
		if i == rowE4M3Own {
			fmt.Fprintf(w, "fp8 e4m3: the tensors quantised with a per-tensor scale amax/448, round to nearest even; bound 8/(H+4)\n")
		}
		fastText := fmt.Sprintf("%7s %8s", "–", "")
		switch {
		case r.fast.measured() && r.fast.raws == r.fast.frames:
			fastText = fmt.Sprintf("%7.4f %8s", r.fast.ratio(), "(raw)")
		case r.fast.measured():
			fastText = fmt.Sprintf("%7.4f %8.2e", r.fast.ratio(), r.fast.escapeRate())
		}
		highText := fmt.Sprintf("%10s %8s %7s %8s", "–", "", "", "")
		if r.high.measured() {
			highText = fmt.Sprintf("%10.4f %8.2e %7.4f %7.1f%%", r.high.ratio(), r.high.escapeRate(), r.high.bound(),
				100*r.high.ratio()/r.high.bound())
		}
		fmt.Fprintf(w, "%s %s | %s\n", pad(labels[i]), fastText, strings.TrimRight(highText, " "))
	}
	fmt.Fprintf(w, "\nsizes (bf16): %s raw → fast (b) %s, high-ratio (a) %s\n", formatBytes(float64(rows[rowPinned].fast.raw)),
		formatBytes(float64(rows[rowPinned].fast.frame)), formatBytes(float64(rows[rowOwn].high.frame)))
	gbs := func(d time.Duration) float64 { return float64(rows[rowPinned].fast.raw) / d.Seconds() / 1e9 }
	fmt.Fprintf(w, "round trip: all %d frames above decoded bit-exact; on this machine (small tensors; see 'splitzip bench'):\n", rt.frames)
	fmt.Fprintf(w, "  fast (b) encode %.2f GB/s, decode %.2f GB/s; high-ratio (a) encode %.2f GB/s, decode %.2f GB/s\n",
		gbs(rt.encTime[0]), gbs(rt.decTime[0]), gbs(rt.encTime[1]), gbs(rt.decTime[1]))
	return nil
}

func bf16Only(ts []namedTensor) []namedTensor {
	var out []namedTensor
	for _, t := range ts {
		if t.dtype == codec.BF16 {
			out = append(out, t)
		}
	}
	return out
}

func maxKey[V any](m map[int]V) int {
	k := math.MinInt
	for x := range m {
		k = max(k, x)
	}
	return k
}
