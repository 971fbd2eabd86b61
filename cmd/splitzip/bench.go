package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/splitzip/splitzip/codec"
	"golang.org/x/sys/cpu"
)

func runBench(args []string) error { return bench(os.Stdout, args) }

// bench runs 'splitzip bench' with the CPU table written to w.
func bench(w io.Writer, args []string) error {
	if len(args) > 0 {
		switch args[0] {
		case "transfer":
			return runBenchTransfer(args[1:])
		case "transfer-producer": // the producer process of 'bench transfer'
			return runTransferProducer(args[1:])
		case "wire":
			return runBenchWire(args[1:])
		case "wire-producer": // the producer process of 'bench wire'
			return runWireProducer(args[1:])
		case "scale":
			return runBenchScale(args[1:])
		case "scale-worker": // a producer or consumer process of 'bench scale'
			return runScaleWorker(args[1:])
		}
	}
	fs := newFlags("bench", "")
	var size byteSize = 64 << 20
	fs.Var(&size, "size", "largest input, e.g. 256MiB (smaller sizes are measured too)")
	runs := fs.Int("runs", 9, "timed runs per figure (the median is reported)")
	data := fs.String("data", defaultEvaluation, "safetensors file of real KV to tile into the input (\"\" for synthetic normals)")
	calPath := fs.String("calibration", "", "safetensors file of KV to learn the high-ratio mode's given table from (default: "+defaultCalibration+
		" when -data is the default, else the input itself; synthetic input: other normals)")
	gpu := fs.Bool("gpu", false, "benchmark the CUDA kernels instead (needs a GPU and its driver)")
	device := fs.Int("device", 0, "GPU ordinal for -gpu")
	ptxFile := fs.String("ptx", "", "with -gpu: also time the kernels of this PTX file (make -C kernels ptx of another revision)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *ptxFile != "" && !*gpu {
		return errors.New("-ptx needs -gpu")
	}
	if *gpu {
		var sizes []int
		if size != 64<<20 { // explicitly chosen; the GPU default is 256 MiB and 1 GiB
			sizes = []int{int(size)}
		}
		return runBenchGPU(*data, *device, sizes, 0, *ptxFile)
	}
	if *runs < 1 {
		return fmt.Errorf("-runs %d: want at least 1", *runs)
	}
	src, origin, err := benchInput(*data, int(size))
	if err != nil {
		return err
	}
	if *calPath == "" && *data == defaultEvaluation {
		*calPath = defaultCalibration
	}
	given, givenBook, givenOrigin, err := benchTable(*data, *calPath, src)
	if err != nil {
		return err
	}
	modes := []benchMode{
		{name: "fast"},
		{name: "fast, given codebook", opts: []codec.EOption{codec.WithCodebook(givenBook)}},
		{name: "high-ratio, own table", opts: []codec.EOption{codec.WithMode(codec.ModeHighRatio)}},
		{name: "high-ratio, given table", opts: []codec.EOption{codec.WithMode(codec.ModeHighRatio), codec.WithCodeTable(given)}},
	}
	procs := runtime.GOMAXPROCS(0)
	fmt.Fprintf(w, "splitzip bench: CPU codec, %s, %d cores (GOMAXPROCS), input: %s; median of %d runs\n", cpuName(), procs, origin, *runs)
	fmt.Fprintf(w, "code paths: %s\n", codePaths())
	fmt.Fprintf(w, "fast = v1 frames, 4-bit codes, the built-in codebook (given codebook: learned as the given table below,\n")
	fmt.Fprintf(w, "  passed with codec.WithCodebook: the connector's codebooks learned per layer); high-ratio = v2 entropy frames with\n")
	fmt.Fprintf(w, "  own table:   built from each frame's exponents (a histogram pass first: an eighth of the input from 128 KiB, at most a million elements)\n")
	fmt.Fprintf(w, "  given table: %s, passed with codec.WithCodeTable\n", givenOrigin)
	fmt.Fprintf(w, "               (one pass: the adaptive path, a table learned from earlier frames)\n")
	fmt.Fprintf(w, "copy = Go copy() of the same buffer in the same run, one goroutine; %% = codec throughput / copy throughput\n\n")
	encN, decN := fmt.Sprintf("enc %d", procs), fmt.Sprintf("dec %d", procs)
	fmt.Fprintf(w, "%10s  %-23s %7s | %7s %5s %7s | %7s %5s %7s | %6s %8s\n", "size", "mode", "copy", "enc 1", "%copy", encN, "dec 1", "%copy", decN, "ratio", "escapes")
	progress := func(format string, a ...any) {
		if stderrIsTerminal {
			fmt.Fprintf(os.Stderr, "\r\033[K"+format, a...)
		}
	}
	for _, n := range []int{64 << 10, 1 << 20, 16 << 20, int(size)} {
		if n > int(size) || n > len(src) {
			continue
		}
		in := src[:n]
		progress("measuring %s: copy…", formatBytes(float64(n)))
		cp, err := copySpeed(in, *runs)
		if err != nil {
			return err
		}
		for i, m := range modes {
			progress("measuring %s: %s…", formatBytes(float64(n)), m.name)
			r, err := benchOne(in, *runs, procs, m.opts)
			if err != nil {
				return fmt.Errorf("%s, %s: %w", formatBytes(float64(n)), m.name, err)
			}
			sizeText, copyText := "", ""
			if i == 0 {
				sizeText, copyText = formatBytes(float64(n)), fmt.Sprintf("%6.2fG", cp)
			}
			fmt.Fprintf(w, "%10s  %-23s %7s | %6.2fG %4.0f%% %6.2fG | %6.2fG %4.0f%% %6.2fG | %6.4f %8.2e\n", sizeText, m.name, copyText,
				r.enc1, 100*r.enc1/cp, r.encN, r.dec1, 100*r.dec1/cp, r.decN, r.ratio, r.escapeRate)
		}
		if n == int(size) {
			break
		}
	}
	progress("")
	fmt.Fprintln(w, "\nfigures in GB/s of raw bf16 bytes")
	return nil
}

// benchMode is one row of the CPU table: an encoder configuration.
type benchMode struct {
	name string
	opts []codec.EOption
}

type benchResult struct{ enc1, encN, dec1, decN, ratio, escapeRate float64 }

// copySpeed is the median GB/s of Go's copy() of src into another buffer.
func copySpeed(src []byte, runs int) (float64, error) {
	dst := make([]byte, len(src))
	return gbps(len(src), runs, func() error { copy(dst, src); return nil })
}

// benchOne times encoding src with the options and decoding the frame, on one goroutine and on procs, and
// checks that every decode gives src back exactly.
func benchOne(src []byte, runs, procs int, opts []codec.EOption) (benchResult, error) {
	var r benchResult
	dst := make([]byte, len(src))
	frame := make([]byte, 0, codec.MaxEncodedLen(len(src)))
	for _, c := range []struct {
		goroutines int
		enc, dec   *float64
	}{{1, &r.enc1, &r.dec1}, {procs, &r.encN, &r.decN}} {
		enc, err := codec.NewEncoder(append([]codec.EOption{codec.WithEncoderConcurrency(c.goroutines)}, opts...)...)
		if err != nil {
			return r, err
		}
		dec, err := codec.NewDecoder(codec.WithDecoderConcurrency(c.goroutines))
		if err != nil {
			return r, err
		}
		if *c.enc, err = gbps(len(src), runs, func() (err error) { frame, err = enc.Encode(frame[:0], src, codec.BF16); return err }); err != nil {
			return r, fmt.Errorf("encode: %w", err)
		}
		clear(dst)
		if *c.dec, err = gbps(len(src), runs, func() error { _, err := dec.DecodeInto(dst, frame); return err }); err != nil {
			return r, fmt.Errorf("decode: %w", err)
		}
		if !bytes.Equal(dst, src) {
			return r, errors.New("round trip is not bit-exact")
		}
	}
	h, err := codec.ParseHeader(frame)
	if err != nil {
		return r, err
	}
	r.ratio, r.escapeRate = h.Ratio(), float64(h.Escapes)/float64(max(h.Elements, 1))
	return r, nil
}

// gbps runs f once to warm up, then runs times, and returns the median throughput.
func gbps(n, runs int, f func() error) (float64, error) {
	if err := f(); err != nil {
		return 0, err
	}
	ts := make([]float64, 0, runs)
	for range runs {
		t0 := time.Now()
		if err := f(); err != nil {
			return 0, err
		}
		ts = append(ts, time.Since(t0).Seconds())
	}
	slices.Sort(ts)
	return float64(n) / ts[len(ts)/2] / 1e9, nil
}

// benchTable is the high-ratio mode's given table, the fast mode's given codebook and where they were learned:
// for real KV, from the calibration file (other tokens than the input), or from the input itself when calPath
// is ""; for synthetic input, from normals of another seed.
func benchTable(data, calPath string, src []byte) (*codec.CodeTable, *codec.Codebook, string, error) {
	h, _ := codec.NewHistogram(codec.BF16)
	var origin string
	switch {
	case data == "":
		if err := h.Add(syntheticNormals(1<<20, 3)); err != nil {
			return nil, nil, "", err
		}
		origin = "learned from other synthetic normals"
	case calPath == "":
		if err := h.Add(src); err != nil {
			return nil, nil, "", err
		}
		origin = "learned from the input itself"
	default:
		tensors, _, err := loadTensors(calPath, "")
		if err != nil {
			return nil, nil, "", fmt.Errorf("given table: %w", err)
		}
		for _, t := range bf16Only(tensors) {
			if err := h.Add(t.data); err != nil {
				return nil, nil, "", fmt.Errorf("%s: %s: %w", calPath, t.name, err)
			}
		}
		if h.Total == 0 {
			return nil, nil, "", fmt.Errorf("%s: no bf16 tensors to learn a table from", calPath)
		}
		origin = "learned from " + calPath
	}
	t, err := h.CodeTable()
	if err != nil {
		return nil, nil, "", err
	}
	cb, err := h.Codebook(codec.DefaultBits)
	return t, cb, origin, err
}

// codePaths says which kernels the codec runs on this machine: the fast mode's bf16 kernels (AVX2 assembly)
// and the high-ratio mode's entropy coder (AVX-512 assembly). It checks the CPU flags the codec checks
// (codec/bf16_amd64.go, codec/entropy_amd64.go) and its build constraint (amd64 && gc && !noasm).
func codePaths() string {
	arch := runtime.GOOS + "/" + runtime.GOARCH
	asm := runtime.GOARCH == "amd64" && runtime.Compiler == "gc" && !builtWithTag("noasm")
	if !asm {
		why := "no assembly for " + runtime.GOARCH
		switch {
		case runtime.GOARCH != "amd64":
		case runtime.Compiler != "gc":
			why = "built with " + runtime.Compiler + ", not gc"
		default:
			why = "built with -tags noasm"
		}
		return fmt.Sprintf("%s, pure Go in both modes (%s)", arch, why)
	}
	fast := "AVX2 assembly"
	if !cpu.X86.HasAVX2 {
		fast = "pure Go (the CPU lacks avx2)"
	}
	flags := []struct {
		name string
		ok   bool
	}{{"avx512f", cpu.X86.HasAVX512F}, {"avx512bw", cpu.X86.HasAVX512BW}, {"avx512vl", cpu.X86.HasAVX512VL},
		{"avx512vbmi", cpu.X86.HasAVX512VBMI}, {"avx512vbmi2", cpu.X86.HasAVX512VBMI2}, {"popcnt", cpu.X86.HasPOPCNT}}
	var have, lack []string
	for _, f := range flags {
		if f.ok {
			have = append(have, f.name)
		} else {
			lack = append(lack, f.name)
		}
	}
	var entropy string
	switch codec.HighRatioAsm() {
	case "avx512":
		entropy = "AVX-512 assembly (" + strings.Join(have, " ") + ")"
	case "avx2":
		entropy = "AVX2 assembly (the CPU lacks " + strings.Join(lack, " ") + ")"
	default:
		entropy = "pure Go (the CPU lacks " + strings.Join(lack, " ") + "; and avx2, popcnt, bmi1 or bmi2)"
	}
	return fmt.Sprintf("%s; fast mode bf16 kernels: %s; high-ratio entropy coder: %s", arch, fast, entropy)
}

// builtWithTag reports whether the binary was built with the build tag.
func builtWithTag(tag string) bool {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range info.Settings {
		if s.Key == "-tags" && slices.Contains(strings.Split(s.Value, ","), tag) {
			return true
		}
	}
	return false
}

// benchInput tiles the bf16 tensors of a real KV file to size bytes, or makes scaled normals when path is "".
func benchInput(path string, size int) ([]byte, string, error) {
	size &^= 1
	out := make([]byte, 0, size)
	if path != "" {
		tensors, _, err := loadTensors(path, "")
		if err != nil {
			return nil, "", fmt.Errorf("%w (pass -data \"\" for synthetic data)", err)
		}
		for len(out) < size {
			before := len(out)
			for _, t := range tensors {
				if t.dtype == codec.BF16 && len(out) < size {
					out = append(out, t.data[:min(len(t.data), size-len(out))]...)
				}
			}
			if len(out) == before {
				return nil, "", fmt.Errorf("%s: no bf16 tensors", path)
			}
		}
		return out, "real KV from " + path + " tiled", nil
	}
	return syntheticNormals(size, 1), "synthetic normals (σ = 0.7)", nil
}

// syntheticNormals is size bytes of bf16 normals of σ = 0.7 (truncated from float32), from the seed.
func syntheticNormals(size int, seed uint64) []byte {
	size &^= 1
	out := make([]byte, 0, size)
	rng := rand.New(rand.NewPCG(seed, seed+1))
	for len(out) < size {
		f := float32(rng.NormFloat64() * 0.7)
		bits := math.Float32bits(f) >> 16
		out = append(out, byte(bits), byte(bits>>8))
	}
	return out
}

func cpuName() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for line := range strings.Lines(string(b)) {
		if name, ok := strings.CutPrefix(line, "model name"); ok {
			if _, v, ok := strings.Cut(name, ":"); ok {
				return strings.TrimSpace(v)
			}
		}
	}
	return runtime.GOARCH
}

// byteSize is a flag value that accepts 4096, 64KiB, 16MiB, 1GiB (and KB/MB/GB as powers of 1000).
type byteSize int

func (b *byteSize) String() string { return formatBytes(float64(*b)) }

func (b *byteSize) Set(s string) error {
	units := []struct {
		suffix string
		mult   float64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	mult := 1.0
	for _, u := range units {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = v, u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || v <= 0 {
		return fmt.Errorf("size %q: want a positive number with an optional KiB/MiB/GiB suffix", s)
	}
	*b = byteSize(v * mult)
	return nil
}
