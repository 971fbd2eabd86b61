package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/connector"
	"github.com/splitzip/splitzip/connector/transport"
	szn "github.com/splitzip/splitzip/nats"
)

// The transfer benchmark runs a real handoff: an embedded NATS server, a producer process (a child of this
// one) holding a paged KV cache filled with the real KV fixture, and a consumer here that loads each request
// into different block ids. Each figure is the time from asking the producer to save a request until the
// consumer has every block decoded and verified: encode, wire and decode pipelined, as in serving.

// benchLayout is SmolLM2-135M's KV shape (the fixture's model) with 16-token blocks.
func benchLayout(numBlocks int) connector.Layout {
	bb := int64(16 * 3 * 64 * 2)
	return connector.Layout{Model: "SmolLM2-135M-Instruct", Layers: 30, BlockSize: 16, KVHeads: 3, HeadSize: 64,
		DType: codec.BF16, TPSize: 1, NumBlocks: numBlocks, BlockStride: bb, KVOffset: int64(numBlocks) * bb}
}

// benchKV is what the bench fills a cache with: each layer's K and V from the tensors named layer.{i}.k and
// layer.{i}.v (the fixture's names), tiled over that layer's blocks, so that each layer holds KV with its own
// statistics as a real cache does; or, for other inputs, one stream tiled over every layer.
type benchKV struct {
	k, v  [][]byte // per layer, when the input names them
	tiled []byte
}

// loadBenchKV reads path (empty: synthetic normals) for benchCache.
func loadBenchKV(path string) (*benchKV, error) {
	if path != "" {
		tensors, _, err := loadTensors(path, "")
		if err != nil {
			return nil, fmt.Errorf("%w (pass -data \"\" for synthetic data)", err)
		}
		byName := map[string][]byte{}
		for _, t := range tensors {
			if t.dtype == codec.BF16 && len(t.data) > 0 {
				byName[t.name] = t.data
			}
		}
		var kv benchKV
		for i := 0; ; i++ {
			k, v := byName[fmt.Sprintf("layer.%d.k", i)], byName[fmt.Sprintf("layer.%d.v", i)]
			if k == nil || v == nil {
				break
			}
			kv.k, kv.v = append(kv.k, k), append(kv.v, v)
		}
		if len(kv.k) > 0 {
			return &kv, nil
		}
	}
	tiled, _, err := benchInput(path, 4<<20)
	if err != nil {
		return nil, err
	}
	return &benchKV{tiled: tiled}, nil
}

// tile fills m with src repeated from offset.
func tile(m, src []byte, offset int) {
	for j := 0; j < len(m); { // no gaps: each copy ends where src or m does
		j += copy(m[j:], src[(offset+j)%len(src):])
	}
}

// benchCache allocates a layout's memory (in huge pages with huge, see cacheMemory) and fills it from kv (nil:
// poison), deterministically.
func benchCache(l connector.Layout, kv *benchKV, huge bool) ([][]byte, []uintptr, error) {
	layer := int(l.KVOffset + int64(l.NumBlocks)*l.BlockStride)
	all, err := cacheMemory(l.Layers*layer, huge)
	if err != nil {
		return nil, nil, err
	}
	mem := make([][]byte, l.Layers)
	bases := make([]uintptr, l.Layers)
	offset := 0
	for i := range mem {
		m := all[i*layer : (i+1)*layer : (i+1)*layer]
		switch {
		case kv == nil:
			for j := range m {
				m[j] = 0xA5
			}
		case kv.k != nil:
			tile(m[:l.KVOffset], kv.k[i%len(kv.k)], 0)
			tile(m[l.KVOffset:], kv.v[i%len(kv.v)], 0)
		default:
			tile(m, kv.tiled, offset)
			offset += len(m) / 3
		}
		mem[i], bases[i] = m, uintptr(unsafe.Pointer(&m[0]))
	}
	return mem, bases, nil
}

type saveCmd struct {
	Req    string  `json:"req"`
	Blocks []int   `json:"blocks"`
	Mode   string  `json:"mode"`            // raw, fast, high-ratio, auto
	Force  string  `json:"force,omitempty"` // auto warm-up: this save raw, fast or high-ratio, measured by the policy
	Rate   float64 `json:"rate"`            // link bytes per second, 0 unshaped
}

// benchModes are the ways bench transfer can send a handoff: raw frames, one codec mode, or the auto choice.
var benchModes = []string{"raw", "fast", "high-ratio", "auto"}

// parseModes reads -mode (codec modes, measured against raw) and -modes (the whole list, raw included;
// "compressed" is fast) into the list to run, in benchModes' order.
func parseModes(mode, modes string) ([]string, error) {
	list, withRaw := mode, true
	if modes != "" {
		list, withRaw = modes, false
	}
	want := map[string]bool{"raw": withRaw}
	for _, m := range strings.Split(list, ",") {
		m = strings.TrimSpace(m)
		switch m {
		case "compressed":
			m = "fast"
		case "high_ratio", "highratio":
			m = "high-ratio"
		}
		if !slices.Contains(benchModes, m) || (modes == "" && m == "raw") {
			return nil, fmt.Errorf("bad mode %q (want fast, high-ratio or auto; -modes also takes raw)", m)
		}
		want[m] = true
	}
	var out []string
	for _, m := range benchModes {
		if want[m] {
			out = append(out, m)
		}
	}
	return out, nil
}

type saveReply struct {
	Handoff string `json:"handoff,omitempty"`
	Secret  string `json:"secret,omitempty"` // the handoff's secret, over the pipe between the two processes
	Err     string `json:"err,omitempty"`
}

func parseList(s string) ([]float64, error) {
	var out []float64
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || v < 0 {
			return nil, fmt.Errorf("bad list element %q", f)
		}
		out = append(out, v)
	}
	return out, nil
}

func runBenchTransfer(args []string) error {
	fs := newFlags("bench transfer", "")
	tokensFlag := fs.String("tokens", "4096,8192,16384,32768", "request sizes in tokens")
	ratesFlag := fs.String("rates", "1,2.5,5,10,0", "link rates in Gbit/s (0: unshaped loopback)")
	repeat := fs.Int("repeat", 3, "transfers per figure (the median is reported)")
	data := fs.String("data", defaultEvaluation, "real KV (safetensors) to fill the cache with")
	conns := fs.Int("conns", 4, "TCP connections per transfer")
	natsURL := fs.String("nats", "", "external NATS URL (default: an embedded server in this process)")
	prefix := fs.String("producer-prefix", "", "command prefix that starts the producer process elsewhere, e.g. \"ip netns exec prefill\"")
	listen := fs.String("producer-listen", "127.0.0.1:0", "payload listen address of the producer process")
	linkLabel := fs.String("link", "", "name of an externally shaped link (e.g. \"tc 10Gbit/s\") for the table; with -rates 0")
	linkRate := fs.Float64("link-rate", 0, "the externally shaped link's rate in Gbit/s, told to the auto policy")
	var frameBytes byteSize
	fs.Var(&frameBytes, "frame-bytes", "raw bytes per frame, e.g. 1MiB (default: the connector's)")
	modeFlag := fs.String("mode", "fast,high-ratio,auto", "codec modes to measure against raw: any of fast, high-ratio, auto")
	modesFlag := fs.String("modes", "", "the whole list to measure, raw included (overrides -mode; \"compressed\" is fast)")
	cpuFlag := fs.Bool("cpu", false, "also report the CPU time of both processes per transfer (median; read from /proc)")
	huge := fs.Bool("hugepages", true, "both KV caches in transparent huge pages: allocated for them, and advised by the connector")
	payload := fs.String("transport", connector.TransportTCP, "payload transport: tcp, or nixl (NIXL/UCX; UCX_TLS picks the wire, -rates 0 only)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := checkBenchTransport(*payload, *ratesFlag); err != nil {
		return err
	}
	modes, err := parseModes(*modeFlag, *modesFlag)
	if err != nil {
		return err
	}
	stop, err := startProfile("consumer")
	if err != nil {
		return err
	}
	defer stop()
	tokens, err := parseList(*tokensFlag)
	if err != nil {
		return err
	}
	rates, err := parseList(*ratesFlag)
	if err != nil {
		return err
	}
	kv, err := loadBenchKV(*data)
	if err != nil {
		return err
	}
	maxBlocks := int(slices.Max(tokens)) / 16
	layout := benchLayout(2 * maxBlocks)

	popts := []szn.Option{szn.WithHandoffTTL(10 * time.Minute)}
	if *natsURL != "" {
		popts = append(popts, szn.WithURL(*natsURL))
	}
	plane, err := szn.Connect(popts...)
	if err != nil {
		return err
	}
	defer plane.Close()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	argv := append(strings.Fields(*prefix), self, "bench", "transfer-producer", "-nats", plane.ClientURL(), "-data", *data,
		"-blocks", fmt.Sprint(2*maxBlocks), "-listen", *listen, "-link-rate", fmt.Sprint(*linkRate), "-frame-bytes", fmt.Sprint(int64(frameBytes)),
		"-hugepages="+fmt.Sprint(*huge), "-transport", *payload)
	child := exec.Command(argv[0], argv[1:]...)
	child.Stderr = os.Stderr
	stdin, _ := child.StdinPipe()
	stdout, _ := child.StdoutPipe()
	if err := child.Start(); err != nil {
		return err
	}
	defer func() { stdin.Close(); _ = child.Wait() }()
	replies := bufio.NewScanner(stdout)
	replies.Buffer(make([]byte, 1<<20), 1<<20)
	enc := json.NewEncoder(stdin)

	cons, err := connector.NewConsumer(plane, connector.WithEngineID("bench-decode"),
		connector.WithTransport(transport.WithConns(*conns)), connector.WithLoadTimeout(10*time.Minute),
		connector.WithHugePages(*huge), connector.WithPayloadTransport(*payload))
	if err != nil {
		return err
	}
	defer cons.Close()
	dstMem, dstBases, err := benchCache(layout, nil, *huge)
	if err != nil {
		return err
	}
	if err := cons.RegisterHostCache(layout, dstBases); err != nil {
		return err
	}
	srcMem, _, err := benchCache(layout, kv, false) // what the producer holds: the same deterministic fill
	if err != nil {
		return err
	}

	// run does one handoff and returns its time and, with -cpu, the CPU time both processes spent meanwhile.
	run := func(req string, blocks []int, mode string, rate float64, force string) (took, cpu time.Duration, err error) {
		var cpu0 time.Duration
		if *cpuFlag {
			cpu0 = processCPU(os.Getpid()) + processCPU(child.Process.Pid)
		}
		t0 := time.Now()
		if err := enc.Encode(saveCmd{Req: req, Blocks: blocks, Mode: mode, Rate: rate, Force: force}); err != nil {
			return 0, 0, err
		}
		if !replies.Scan() {
			return 0, 0, fmt.Errorf("producer process ended: %v", replies.Err())
		}
		var r saveReply
		if err := json.Unmarshal(replies.Bytes(), &r); err != nil || r.Err != "" {
			return 0, 0, fmt.Errorf("producer: %s %v", r.Err, err)
		}
		dst := make([]int, len(blocks))
		for i, b := range blocks {
			dst[i] = b + maxBlocks // different block ids on the decode side
		}
		if err := cons.Load(req, connector.Handoff{ID: r.Handoff, Secret: r.Secret}, dst); err != nil {
			return 0, 0, err
		}
		for {
			done, failed := cons.Poll()
			if len(failed) > 0 {
				return 0, 0, failed[0].Err
			}
			if slices.Contains(done, req) {
				break
			}
			time.Sleep(200 * time.Microsecond)
		}
		took = time.Since(t0)
		if *cpuFlag {
			cpu = processCPU(os.Getpid()) + processCPU(child.Process.Pid) - cpu0
		}
		bb := int(layout.BlockBytes())
		for l := range layout.Layers {
			for kvi := range 2 {
				for i, b := range blocks {
					so := int(int64(kvi)*layout.KVOffset) + b*bb
					do := int(int64(kvi)*layout.KVOffset) + dst[i]*bb
					if string(srcMem[l][so:so+bb]) != string(dstMem[l][do:do+bb]) {
						return 0, 0, fmt.Errorf("%s: layer %d block %d arrived different (not bit-exact)", req, l, b)
					}
				}
			}
		}
		return took, cpu, nil
	}

	where, shaping := "embedded NATS", "links shaped by the transport's rate limit"
	if *natsURL != "" {
		where = "NATS at " + *natsURL
	}
	if *linkLabel != "" {
		shaping = "link shaped outside (" + *linkLabel + ")"
	}
	fmt.Printf("splitzip bench transfer: a producer process and this consumer (%s, %d cores), %s,\n", cpuName(), runtime.NumCPU(), where)
	fmt.Printf("KV of SmolLM2-135M (30 layers × K,V × 3 heads × 64, bf16, 16-token blocks) filled with %s;\n", *data)
	fmt.Printf("time from save to every block decoded and verified bit-exact on the consumer; median of %d after warm-up, modes taking turns; %s;\n", *repeat, shaping)
	fmt.Printf("payload transport %s\n", transportLabel(*payload))
	fmt.Printf("± is half the range of raw's own runs over their median: a ×raw within 1 ± that is noise\n\n")
	// One column group per mode: its median time and, for codec modes, its speedup over raw; auto also says
	// which paths it took in the timed transfers.
	fmt.Printf("%7s %9s %9s", "tokens", "KV", "link")
	for _, m := range modes {
		switch m {
		case "raw":
			fmt.Printf(" | %10s %5s", "raw", "±")
		case "auto":
			fmt.Printf(" | %10s %7s %-13s", "auto", "×raw", "auto took")
		default:
			fmt.Printf(" | %10s %7s", m, "×raw")
		}
	}
	if *cpuFlag {
		fmt.Print(" | cpu")
		for _, m := range modes {
			fmt.Printf(" %10s", m)
		}
		fmt.Print(" | cpu s/GB")
		for _, m := range modes {
			fmt.Printf(" %10s", m)
		}
	}
	fmt.Println()
	seq := 0
	for _, tok := range tokens {
		nb := int(tok) / 16
		blocks := make([]int, nb)
		for i := range blocks {
			blocks[i] = (i * 7) % maxBlocks // scattered source blocks
		}
		rawBytes := float64(layout.Layers) * 2 * float64(nb) * float64(layout.BlockBytes())
		for _, gbit := range rates {
			rate := gbit * 1e9 / 8
			// Untimed warm-up of every mode first: staging memory, connections and socket buffers, learned
			// code tables, and for auto four handoffs of each path (forced: a cold one, then the three after
			// which the policy lets a path's measured efficiency overrule its model), then one of its own
			// choosing, so that it has measured every path as serving would after a while (steady state is what
			// serving sees; it keeps probing while timed).
			for _, mode := range modes {
				warm := []string{"", ""}
				if mode == "auto" {
					warm = nil
					for _, p := range []string{"raw", "fast", "high-ratio"} {
						warm = append(warm, p, p, p, p)
					}
					warm = append(warm, "")
				}
				for w, force := range warm {
					seq++
					if _, _, err := run(fmt.Sprintf("warm-%d-%d", seq, w), blocks, mode, rate, force); err != nil {
						return fmt.Errorf("%d tokens at %s, %s (warm-up): %w", int(tok), linkName(gbit), mode, err)
					}
				}
			}
			// Timed transfers take turns (raw, fast, high-ratio, auto, raw, …), so that whatever else the
			// shared machine does during the figure falls on every mode alike instead of on the one measured
			// then.
			ts, cpus := map[string][]time.Duration{}, map[string][]time.Duration{}
			took := map[string]int{}
			for range *repeat {
				for _, mode := range modes {
					seq++
					if stderrIsTerminal {
						fmt.Fprintf(os.Stderr, "  %d tokens, %s, %s …\r", int(tok), linkName(gbit), mode)
					}
					before := cons.Stats()
					d, c, err := run(fmt.Sprintf("req-%d", seq), blocks, mode, rate, "")
					if err != nil {
						return fmt.Errorf("%d tokens at %s, %s: %w", int(tok), linkName(gbit), mode, err)
					}
					ts[mode] = append(ts[mode], d)
					cpus[mode] = append(cpus[mode], c)
					if mode == "auto" {
						after := cons.Stats()
						took["raw"] += int(after.RawLoads - before.RawLoads)
						took["fast"] += int(after.FastLoads - before.FastLoads)
						took["hr"] += int(after.HighRatioLoads - before.HighRatioLoads)
					}
				}
			}
			name := linkName(gbit)
			if *linkLabel != "" {
				name = *linkLabel
			}
			fmt.Printf("%7d %9s %9s", int(tok), formatBytes(rawBytes), name)
			raw := median(ts["raw"])
			for _, m := range modes {
				med := median(ts[m])
				switch m {
				case "raw":
					fmt.Printf(" | %8.1fms %4.0f%%", ms(med), 100*spread(ts[m]))
				case "auto":
					fmt.Printf(" | %8.1fms %6.2fx %-13s", ms(med), ratio(raw, med), tookString(took))
				default:
					fmt.Printf(" | %8.1fms %6.2fx", ms(med), ratio(raw, med))
				}
			}
			if *cpuFlag {
				fmt.Print(" |    ")
				for _, m := range modes {
					fmt.Printf(" %8.1fms", ms(median(cpus[m])))
				}
				// CPU seconds of both processes per GB of KV moved (raw bytes, whatever crossed the wire).
				fmt.Print(" |          ")
				for _, m := range modes {
					fmt.Printf(" %10.3f", median(cpus[m]).Seconds()/(rawBytes/1e9))
				}
			}
			fmt.Println()
		}
	}
	st := cons.Stats()
	fmt.Printf("\nconsumer totals: %d loads, %d failed, %s decoded\n", st.Loads, st.Failed, formatBytes(float64(st.RawBytes)))
	return nil
}

// checkBenchTransport refuses what bench transfer cannot run: an unknown transport, or NIXL over links the
// benchmark shapes itself (the rate limit is the TCP transport's; shape a NIXL link outside, e.g. with tc, or
// measure it unshaped).
func checkBenchTransport(name, rates string) error {
	switch name {
	case connector.TransportTCP:
		return nil
	case connector.TransportNIXL:
		rs, err := parseList(rates)
		if err != nil {
			return err
		}
		for _, r := range rs {
			if r != 0 {
				return fmt.Errorf("-transport nixl moves payloads outside the TCP transport's rate limit: use -rates 0 (and -link, -link-rate for a link shaped outside)")
			}
		}
		return nil
	}
	return fmt.Errorf("bad -transport %q (want tcp or nixl)", name)
}

// transportLabel names the payload transport for the table, with the UCX transports NIXL may use.
func transportLabel(name string) string {
	if name != connector.TransportNIXL {
		return name + " (SplitZip's protocol)"
	}
	tls := os.Getenv("UCX_TLS")
	if tls == "" {
		tls = "UCX's choice"
	}
	return "nixl (UCX_TLS=" + tls + ")"
}

// spread is half the range of ts over its median: how far raw's own repeats lie apart, the noise a codec
// mode's ×raw must beat to mean anything.
func spread(ts []time.Duration) float64 {
	med := median(ts)
	if med == 0 {
		return 0
	}
	return float64(slices.Max(ts)-slices.Min(ts)) / 2 / float64(med)
}

// tookString says which paths auto's timed transfers took, e.g. "hr 7" or "fast 5, raw 2".
func tookString(took map[string]int) string {
	var parts []string
	for _, k := range []string{"raw", "fast", "hr"} {
		if took[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, took[k]))
		}
	}
	return strings.Join(parts, ", ")
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// median sorts ts and returns its middle element (0 for none).
func median(ts []time.Duration) time.Duration {
	if len(ts) == 0 {
		return 0
	}
	slices.Sort(ts)
	return ts[len(ts)/2]
}

// processCPU is the CPU time, user and system, that every thread of process pid has spent so far (the
// scheduler's own account in /proc/<pid>/task/*/schedstat, in nanoseconds; softirq work done on a thread's
// behalf is included). It is 0 where /proc cannot tell, e.g. a producer started through ssh.
func processCPU(pid int) time.Duration {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0
	}
	var sum time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
		if err != nil {
			continue // the thread ended meanwhile
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			if ns, err := strconv.ParseInt(f[0], 10, 64); err == nil {
				sum += time.Duration(ns)
			}
		}
	}
	return sum
}

// ratio is a/b, 0 when either was not measured (-modes).
func ratio(a, b time.Duration) float64 {
	if a == 0 || b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// startProfile writes a CPU profile of this process to $SPLITZIP_BENCH_CPUPROFILE/<name>.pprof when that
// variable names a directory (both processes of bench transfer profile themselves).
func startProfile(name string) (stop func(), err error) {
	dir := os.Getenv("SPLITZIP_BENCH_CPUPROFILE")
	if dir == "" {
		return func() {}, nil
	}
	f, err := os.Create(filepath.Join(dir, name+".pprof"))
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

func linkName(gbit float64) string {
	if gbit == 0 {
		return "unshaped"
	}
	return strconv.FormatFloat(gbit, 'f', -1, 64) + "Gbit/s"
}

// benchPolicy is the producer's bypass and mode for a bench mode name.
func benchPolicy(name string) (connector.Bypass, connector.Mode, bool) {
	switch name {
	case "raw":
		return connector.BypassAlways, connector.ModeAuto, true
	case "fast":
		return connector.BypassNever, connector.ModeFast, true
	case "high-ratio":
		return connector.BypassNever, connector.ModeHighRatio, true
	case "auto":
		return connector.BypassAuto, connector.ModeAuto, true
	}
	return 0, 0, false
}

// runTransferProducer is the producer process of the transfer benchmark: it reads save commands on stdin and
// answers with handoff ids on stdout, one producer per (mode, link rate).
func runTransferProducer(args []string) error {
	fs := newFlags("bench transfer-producer", "")
	url := fs.String("nats", "", "NATS URL of the benchmark's plane")
	data := fs.String("data", defaultEvaluation, "real KV to fill the cache with")
	blocks := fs.Int("blocks", 0, "blocks per layer")
	listen := fs.String("listen", "127.0.0.1:0", "payload listen address")
	linkRate := fs.Float64("link-rate", 0, "rate of an externally shaped link in Gbit/s (for the auto policy)")
	frameBytes := fs.Int64("frame-bytes", 0, "raw bytes per frame (0: the connector's default)")
	huge := fs.Bool("hugepages", true, "the KV cache in transparent huge pages (allocated for them, advised by the connector)")
	payload := fs.String("transport", connector.TransportTCP, "payload transport: tcp or nixl")
	if err := fs.Parse(args); err != nil {
		return err
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	stop, err := startProfile("producer")
	if err != nil {
		return err
	}
	defer stop()
	plane, err := szn.Connect(szn.WithURL(*url), szn.WithHandoffTTL(10*time.Minute))
	if err != nil {
		return err
	}
	defer plane.Close()
	kv, err := loadBenchKV(*data)
	if err != nil {
		return err
	}
	layout := benchLayout(*blocks)
	mem, bases, err := benchCache(layout, kv, *huge)
	if err != nil {
		return err
	}
	defer runtime.KeepAlive(mem) // the producers read it through bare addresses
	producers := map[string]*connector.Producer{}
	closeAll := func() {
		for k, p := range producers {
			_ = p.Close()
			delete(producers, k)
		}
	}
	defer closeAll()
	lastRate := -1.0
	out := json.NewEncoder(os.Stdout)
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 16<<20), 16<<20)
	for in.Scan() {
		var cmd saveCmd
		if err := json.Unmarshal(in.Bytes(), &cmd); err != nil {
			return err
		}
		if cmd.Rate != lastRate {
			// The benchmark has moved on to another link: the producers of the last one (each holding the
			// staging memory of its largest handoff for reuse) would only crowd memory.
			closeAll()
			runtime.GC()
			debug.FreeOSMemory()
			lastRate = cmd.Rate
		}
		key := fmt.Sprintf("%s-%.0f", cmd.Mode, cmd.Rate)
		bypass, mode, ok := benchPolicy(cmd.Mode)
		if !ok {
			return fmt.Errorf("bad mode %q", cmd.Mode)
		}
		p := producers[key]
		if p == nil {
			opts := []connector.Option{connector.WithEngineID("bench-prefill-" + strings.ReplaceAll(key, ".", "_")), connector.WithListenAddr(*listen),
				connector.WithBypass(bypass), connector.WithMode(mode), connector.WithHandoffTTL(10 * time.Minute), connector.WithStagingBytes(4 << 30),
				connector.WithHugePages(*huge), connector.WithPayloadTransport(*payload)}
			if *frameBytes > 0 {
				opts = append(opts, connector.WithFrameBytes(*frameBytes))
			}
			if cmd.Rate > 0 {
				opts = append(opts, connector.WithTransport(transport.WithRateLimit(int64(cmd.Rate)), transport.WithHandoffTTL(10*time.Minute)),
					connector.WithLinkRate(cmd.Rate))
			} else {
				opts = append(opts, connector.WithTransport(transport.WithHandoffTTL(10*time.Minute)))
				if *linkRate > 0 {
					opts = append(opts, connector.WithLinkRate(*linkRate*1e9/8))
				}
			}
			if p, err = connector.NewProducer(plane, opts...); err != nil {
				return err
			}
			if err := p.RegisterHostCache(layout, bases); err != nil {
				return err
			}
			producers[key] = p
		}
		if cmd.Force != "" {
			fb, fm, ok := benchPolicy(cmd.Force)
			if !ok {
				return fmt.Errorf("bad forced mode %q", cmd.Force)
			}
			if err := errors.Join(p.SetBypass(fb), p.SetMode(fm)); err != nil {
				return err
			}
		}
		var r saveReply
		h, err := p.Save(cmd.Req, cmd.Blocks)
		if cmd.Force != "" {
			if err := errors.Join(p.SetBypass(bypass), p.SetMode(mode)); err != nil {
				return err
			}
		}
		if err != nil {
			r.Err = err.Error()
		}
		r.Handoff, r.Secret = h.ID, h.Secret
		if err := out.Encode(r); err != nil {
			return err
		}
		p.FinishedSending()
		if os.Getenv("SPLITZIP_BENCH_DEBUG") != "" { // shows the auto policy's choices as they happen
			st, est := p.Stats(), p.Estimates()
			fmt.Fprintf(os.Stderr, "producer %s: %d handoffs: %d raw, %d fast, %d high-ratio; link %.2f GB/s (configured %t)\n",
				key, st.Handoffs, st.RawHandoffs, st.FastHandoffs, st.HighRatioHandoffs, est.Link/1e9, est.LinkConfigured)
			for _, pe := range []struct {
				name string
				e    connector.PathEstimate
			}{{"raw", est.Raw}, {"fast", est.Fast}, {"high-ratio", est.HighRatio}} {
				fmt.Fprintf(os.Stderr, "  %-10s encode %5.2f GB/s decode %5.2f GB/s ratio %.3f efficiency %.2f\n",
					pe.name, pe.e.Encode/1e9, pe.e.Decode/1e9, pe.e.Ratio, pe.e.Efficiency)
			}
		}
	}
	return in.Err()
}
