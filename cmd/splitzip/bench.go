package main

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/splitzip/splitzip/codec"
)

func runBench(args []string) error {
	if len(args) > 0 {
		switch args[0] {
		case "transfer":
			return runBenchTransfer(args[1:])
		case "transfer-producer": // the producer process of 'bench transfer'
			return runTransferProducer(args[1:])
		}
	}
	fs := newFlags("bench", "")
	var size byteSize = 64 << 20
	fs.Var(&size, "size", "largest input, e.g. 256MiB (smaller sizes are measured too)")
	runs := fs.Int("runs", 9, "timed runs per figure (the median is reported)")
	data := fs.String("data", defaultEvaluation, "safetensors file of real KV to tile into the input (\"\" for synthetic normals)")
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
	src, origin, err := benchInput(*data, int(size))
	if err != nil {
		return err
	}
	procs := runtime.GOMAXPROCS(0)
	fmt.Printf("splitzip bench: CPU codec, %s, %d cores (GOMAXPROCS), input: %s; median of %d runs\n", cpuName(), procs, origin, *runs)
	fmt.Printf("copy = Go copy() of the same buffer, one goroutine; %% = codec throughput / copy throughput (raw bytes)\n\n")
	fmt.Printf("%10s %9s | %9s %6s %9s | %9s %6s %9s | %7s %9s\n", "size", "copy", "enc 1", "%copy", fmt.Sprintf("enc %d", procs), "dec 1", "%copy", fmt.Sprintf("dec %d", procs), "ratio", "escapes")
	for _, n := range []int{64 << 10, 1 << 20, 16 << 20, int(size)} {
		if n > int(size) || n > len(src) {
			continue
		}
		in := src[:n]
		if stderrIsTerminal {
			fmt.Fprintf(os.Stderr, "measuring %s…\r", formatBytes(float64(n)))
		}
		r, err := benchOne(in, *runs, procs)
		if err != nil {
			return err
		}
		fmt.Printf("%10s %8.2fG | %8.2fG %5.0f%% %8.2fG | %8.2fG %5.0f%% %8.2fG | %7.4f %9.2e\n", formatBytes(float64(n)), r.copy,
			r.enc1, 100*r.enc1/r.copy, r.encN, r.dec1, 100*r.dec1/r.copy, r.decN, r.ratio, r.escapeRate)
		if n == int(size) {
			break
		}
	}
	fmt.Println("\nfigures in GB/s of raw bf16 bytes")
	return nil
}

type benchResult struct{ copy, enc1, encN, dec1, decN, ratio, escapeRate float64 }

func benchOne(src []byte, runs, procs int) (benchResult, error) {
	var r benchResult
	dst := make([]byte, len(src))
	r.copy = gbps(len(src), runs, func() error { copy(dst, src); return nil })
	frame := make([]byte, 0, codec.MaxEncodedLen(len(src)))
	for _, c := range []struct {
		goroutines int
		enc, dec   *float64
	}{{1, &r.enc1, &r.dec1}, {procs, &r.encN, &r.decN}} {
		enc, err := codec.NewEncoder(codec.WithEncoderConcurrency(c.goroutines))
		if err != nil {
			return r, err
		}
		dec, err := codec.NewDecoder(codec.WithDecoderConcurrency(c.goroutines))
		if err != nil {
			return r, err
		}
		*c.enc = gbps(len(src), runs, func() error { frame, err = enc.Encode(frame[:0], src, codec.BF16); return err })
		*c.dec = gbps(len(src), runs, func() error { _, err := dec.DecodeInto(dst, frame); return err })
		if err != nil {
			return r, err
		}
		if string(dst) != string(src) {
			return r, fmt.Errorf("round trip is not bit-exact")
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
func gbps(n, runs int, f func() error) float64 {
	if err := f(); err != nil {
		return math.NaN()
	}
	ts := make([]float64, 0, runs)
	for range runs {
		t0 := time.Now()
		if err := f(); err != nil {
			return math.NaN()
		}
		ts = append(ts, time.Since(t0).Seconds())
	}
	slices.Sort(ts)
	return float64(n) / ts[len(ts)/2] / 1e9
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
	rng := rand.New(rand.NewPCG(1, 2))
	for len(out) < size {
		f := float32(rng.NormFloat64() * 0.7)
		bits := math.Float32bits(f) >> 16
		out = append(out, byte(bits), byte(bits>>8))
	}
	return out, "synthetic normals (σ = 0.7)", nil
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
