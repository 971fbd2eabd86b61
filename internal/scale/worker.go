package scale

import (
	"bufio"
	"cmp"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/splitzip/splitzip/connector"
	"github.com/splitzip/splitzip/connector/transport"
	szn "github.com/splitzip/splitzip/nats"
)

// WorkerConfig is one engine process: a producer (prefill) or a consumer (decode) with its own KV cache and its
// own connection to the cluster.
type WorkerConfig struct {
	Role         string        // "producer" or "consumer"
	Index        int           // its number among its role's processes
	NATS         string        // the cluster's client URLs
	Replicas     int           // JetStream replicas of the buckets
	Fixture      string        // real KV to fill caches from (producers) and check loads against (consumers)
	Blocks       int           // blocks per layer of its KV cache
	HandoffTTL   time.Duration // producers: how long an unclaimed handoff lives; the plane's record TTL too
	LoadTimeout  time.Duration // consumers: bound of one load
	RecordWait   time.Duration // consumers: wait for a handoff's record
	Listen       string        // producers: payload listen address
	Advertise    string        // producers: the address consumers dial (a proxy's, in the bit-flip test)
	IOTimeout    time.Duration // the transport's I/O timeout (how soon a dead peer is noticed)
	LogLevel     string        // slog level of the worker's log (stderr): debug, info, warn, error
	StagingBytes int64         // producers: staging memory (0: 1 GiB)
}

func (c WorkerConfig) args() []string {
	return []string{"-role", c.Role, "-index", fmt.Sprint(c.Index), "-nats", c.NATS, "-replicas", fmt.Sprint(c.Replicas),
		"-fixture", c.Fixture, "-blocks", fmt.Sprint(c.Blocks), "-handoff-ttl", c.HandoffTTL.String(),
		"-load-timeout", c.LoadTimeout.String(), "-record-wait", c.RecordWait.String(), "-listen", c.Listen,
		"-advertise", c.Advertise, "-io-timeout", c.IOTimeout.String(), "-log", c.LogLevel,
		"-staging", fmt.Sprint(c.StagingBytes)}
}

func parseWorkerConfig(args []string) (WorkerConfig, error) {
	var c WorkerConfig
	fs := flag.NewFlagSet("scale-worker", flag.ContinueOnError)
	fs.StringVar(&c.Role, "role", "", "producer or consumer")
	fs.IntVar(&c.Index, "index", 0, "index among its role's processes")
	fs.StringVar(&c.NATS, "nats", "", "NATS URLs")
	fs.IntVar(&c.Replicas, "replicas", 1, "JetStream replicas")
	fs.StringVar(&c.Fixture, "fixture", "", "real-KV safetensors file")
	fs.IntVar(&c.Blocks, "blocks", 0, "blocks per layer")
	fs.DurationVar(&c.HandoffTTL, "handoff-ttl", time.Minute, "handoff TTL")
	fs.DurationVar(&c.LoadTimeout, "load-timeout", time.Minute, "load timeout")
	fs.DurationVar(&c.RecordWait, "record-wait", 10*time.Second, "record wait")
	fs.StringVar(&c.Listen, "listen", "127.0.0.1:0", "payload listen address")
	fs.StringVar(&c.Advertise, "advertise", "", "advertised payload address")
	fs.DurationVar(&c.IOTimeout, "io-timeout", 0, "transport I/O timeout (0: the transport's)")
	fs.StringVar(&c.LogLevel, "log", "warn", "log level")
	fs.Int64Var(&c.StagingBytes, "staging", 0, "producers' staging bytes (0: 1 GiB)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if c.Role != "producer" && c.Role != "consumer" {
		return c, fmt.Errorf("splitzip/scale: worker role %q (want producer or consumer)", c.Role)
	}
	if c.Listen == "" {
		c.Listen = "127.0.0.1:0"
	}
	if c.Blocks < 1 || c.NATS == "" || c.Fixture == "" {
		return c, errors.New("splitzip/scale: a worker needs -nats, -fixture and -blocks")
	}
	return c, nil
}

// command is one line from the coordinator to a worker.
type command struct {
	ID       int64  `json:"id"`
	Op       string `json:"op"` // save, load, mode, stats
	Req      string `json:"req,omitempty"`
	Handoff  string `json:"handoff,omitempty"`
	Secret   string `json:"secret,omitempty"`   // load: the handoff's secret, which only the coordinator passes on
	Producer int    `json:"producer,omitempty"` // load: whose fill the blocks must hold
	Src      []int  `json:"src,omitempty"`      // save: the producer's blocks; load: the same, for the check
	Dst      []int  `json:"dst,omitempty"`      // load: the consumer's blocks
	Mode     string `json:"mode,omitempty"`     // mode: raw, fast, high-ratio or auto
}

// answer is one line from a worker to the coordinator: the reply to command ID (0: the ready line).
type answer struct {
	ID      int64        `json:"id"`
	Addr    string       `json:"addr,omitempty"` // ready line: a producer's payload address
	Pid     int          `json:"pid,omitempty"`  // ready line
	Handoff string       `json:"handoff,omitempty"`
	Secret  string       `json:"secret,omitempty"` // a save's secret, over the pipe (never NATS)
	Err     string       `json:"err,omitempty"`
	Kind    string       `json:"kind,omitempty"`    // a failed load's FailureKind
	Wrong   string       `json:"wrong,omitempty"`   // a load reported done whose blocks differ from the source
	BusyNs  int64        `json:"busy_ns,omitempty"` // a load: time spent poisoning and checking blocks, not loading
	Stats   *WorkerStats `json:"stats,omitempty"`
}

// WorkerStats is what a worker reports of itself.
type WorkerStats struct {
	Handoffs, Failed, Expired int64            // producer
	Raw, Fast, HighRatio      int64            // producer: handoffs by path
	StagingInUse              int64            // producer
	InFlight                  int              // handoffs (producer) or loads (consumer) not yet ended
	Loads                     int64            // consumer
	Failures                  map[string]int64 // consumer: failed loads by kind
	RawBytes, WireBytes       int64            // bytes of KV moved, and on the wire
	Goroutines                int
	HeapInuse                 uint64
}

// RunWorker is a worker process's main: it reads commands on in and writes answers to out until in ends.
func RunWorker(args []string, in io.Reader, out io.Writer) error {
	cfg, err := parseWorkerConfig(args)
	if err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return fmt.Errorf("splitzip/scale: log level %q: %w", cfg.LogLevel, err)
	}
	name := fmt.Sprintf("%s-%d", cfg.Role, cfg.Index)
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("worker", name))
	fix, err := LoadFixture(cfg.Fixture)
	if err != nil {
		return err
	}
	plane, err := szn.Connect(szn.WithURL(cfg.NATS), szn.WithReplicas(cfg.Replicas), szn.WithName("splitzip-scale-"+name),
		szn.WithHandoffTTL(max(cfg.HandoffTTL, time.Second)), szn.WithReconnect(-1, 100*time.Millisecond), szn.WithMaxInFlight(1<<14))
	if err != nil {
		return err
	}
	defer plane.Close()
	w := &worker{cfg: cfg, fix: fix, enc: json.NewEncoder(out), cache: newCache(Layout(cfg.Blocks))}
	var topts []transport.Option
	if cfg.IOTimeout > 0 {
		topts = append(topts, transport.WithIOTimeout(cfg.IOTimeout))
	}
	opts := []connector.Option{connector.WithEngineID("scale-" + name), connector.WithHugePages(false),
		connector.WithMaxInFlight(1024), connector.WithTransport(topts...)}
	ready := answer{Pid: os.Getpid()}
	if cfg.Role == "producer" {
		w.cache.fillAll(fix, cfg.Index)
		opts = append(opts, connector.WithHandoffTTL(cfg.HandoffTTL), connector.WithListenAddr(cfg.Listen),
			connector.WithStagingBytes(cmp.Or(cfg.StagingBytes, 1<<30)), connector.WithTransport(transport.WithMaxTransfers(1024)))
		if cfg.Advertise != "" {
			opts = append(opts, connector.WithAdvertiseAddr(cfg.Advertise))
		}
		if w.prod, err = connector.NewProducer(plane, opts...); err != nil {
			return err
		}
		defer w.prod.Close()
		if err := w.prod.RegisterHostCache(w.cache.layout, w.cache.bases); err != nil {
			return err
		}
		ready.Addr = w.prod.Addr()
		stop := make(chan struct{})
		defer close(stop)
		go func() { // the engine's step loop frees finished requests' blocks
			t := time.NewTicker(10 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
					w.prod.FinishedSending()
				}
			}
		}()
	} else {
		opts = append(opts, connector.WithLoadTimeout(cfg.LoadTimeout), connector.WithRecordWait(cfg.RecordWait))
		if w.cons, err = connector.NewConsumer(plane, opts...); err != nil {
			return err
		}
		defer w.cons.Close()
		if err := w.cons.RegisterHostCache(w.cache.layout, w.cache.bases); err != nil {
			return err
		}
		w.waits = map[string]chan error{}
		stop := make(chan struct{})
		done := make(chan struct{})
		go w.poll(stop, done)
		defer func() { close(stop); <-done }()
	}
	if err := w.send(ready); err != nil {
		return err
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	var wg sync.WaitGroup
	defer wg.Wait()
	for sc.Scan() {
		var cmd command
		if err := json.Unmarshal(sc.Bytes(), &cmd); err != nil {
			return fmt.Errorf("splitzip/scale: %s: bad command %q: %w", name, sc.Text(), err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = w.send(w.do(cmd))
		}()
	}
	return sc.Err()
}

type worker struct {
	cfg   WorkerConfig
	fix   *Fixture
	cache *cache
	prod  *connector.Producer
	cons  *connector.Consumer

	outMu sync.Mutex
	enc   *json.Encoder

	mu    sync.Mutex
	waits map[string]chan error // consumer: loads awaiting Poll's verdict
}

func (w *worker) send(a answer) error {
	w.outMu.Lock()
	defer w.outMu.Unlock()
	return w.enc.Encode(a)
}

func (w *worker) do(cmd command) answer {
	a := answer{ID: cmd.ID}
	fail := func(err error) answer { a.Err = err.Error(); return a }
	switch {
	case cmd.Op == "stats":
		a.Stats = w.stats()
	case cmd.Op == "mode" && w.prod != nil:
		if err := w.setMode(cmd.Mode); err != nil {
			return fail(err)
		}
	case cmd.Op == "save" && w.prod != nil:
		h, err := w.prod.Save(cmd.Req, cmd.Src)
		if err != nil {
			return fail(err)
		}
		a.Handoff, a.Secret = h.ID, h.Secret
	case cmd.Op == "load" && w.cons != nil:
		return w.load(cmd)
	default:
		return fail(fmt.Errorf("splitzip/scale: %s-%d cannot %q", w.cfg.Role, w.cfg.Index, cmd.Op))
	}
	return a
}

func (w *worker) setMode(m string) error {
	bypass, mode := connector.BypassAuto, connector.ModeAuto
	switch m {
	case "raw":
		bypass = connector.BypassAlways
	case "fast":
		bypass, mode = connector.BypassNever, connector.ModeFast
	case "high-ratio":
		bypass, mode = connector.BypassNever, connector.ModeHighRatio
	case "auto":
	default:
		return fmt.Errorf("splitzip/scale: mode %q (want raw, fast, high-ratio or auto)", m)
	}
	return errors.Join(w.prod.SetBypass(bypass), w.prod.SetMode(mode))
}

// load poisons the destination blocks, loads the handoff into them and, once the consumer says done, checks
// every block against the producer's fill.
func (w *worker) load(cmd command) (a answer) {
	a.ID = cmd.ID
	if len(cmd.Src) != len(cmd.Dst) {
		a.Err = fmt.Sprintf("%d source blocks for %d destination blocks", len(cmd.Src), len(cmd.Dst))
		return a
	}
	l := w.cache.layout
	t0 := time.Now()
	for li := range l.Layers {
		for kv := range 2 {
			for _, b := range cmd.Dst {
				blk := w.cache.block(li, kv, b)
				for i := range blk {
					blk[i] = 0xA5
				}
			}
		}
	}
	a.BusyNs = int64(time.Since(t0))
	res := make(chan error, 1)
	w.mu.Lock()
	w.waits[cmd.Req] = res
	w.mu.Unlock()
	if err := w.cons.Load(cmd.Req, connector.Handoff{ID: cmd.Handoff, Secret: cmd.Secret}, cmd.Dst); err != nil {
		w.mu.Lock()
		delete(w.waits, cmd.Req)
		w.mu.Unlock()
		a.Err, a.Kind = err.Error(), connector.KindOf(err).String()
		return a
	}
	if err := <-res; err != nil {
		a.Err, a.Kind = err.Error(), connector.KindOf(err).String()
		return a
	}
	t1 := time.Now()
	defer func() { a.BusyNs += int64(time.Since(t1)) }()
	want := make([]byte, l.BlockBytes())
	for li := range l.Layers {
		for kv := range 2 {
			for i, b := range cmd.Dst {
				w.fix.Fill(want, cmd.Producer, li, kv, cmd.Src[i])
				if string(w.cache.block(li, kv, b)) != string(want) {
					a.Wrong = fmt.Sprintf("layer %d %s block %d (from producer %d block %d) differs from the source",
						li, [2]string{"K", "V"}[kv], b, cmd.Producer, cmd.Src[i])
					return a
				}
			}
		}
	}
	return a
}

// poll hands the consumer's verdicts to the loads waiting for them, as an engine's step loop would.
func (w *worker) poll(stop, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for {
		ok, failed := w.cons.Poll()
		w.mu.Lock()
		for _, r := range ok {
			if ch := w.waits[r]; ch != nil {
				ch <- nil
				delete(w.waits, r)
			}
		}
		for _, f := range failed {
			if ch := w.waits[f.RequestID]; ch != nil {
				ch <- f.Err
				delete(w.waits, f.RequestID)
			}
		}
		w.mu.Unlock()
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

func (w *worker) stats() *WorkerStats {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s := &WorkerStats{Goroutines: runtime.NumGoroutine(), HeapInuse: ms.HeapInuse}
	if w.prod != nil {
		ps := w.prod.Stats()
		s.Handoffs, s.Failed, s.Expired = ps.Handoffs, ps.Failed, ps.Expired
		s.Raw, s.Fast, s.HighRatio = ps.RawHandoffs, ps.FastHandoffs, ps.HighRatioHandoffs
		s.StagingInUse, s.InFlight = w.prod.StagingInUse(), w.prod.InFlight()
		s.RawBytes, s.WireBytes = ps.RawBytes, ps.EncodedBytes
	}
	if w.cons != nil {
		cs := w.cons.Stats()
		s.Loads, s.Failed, s.Failures = cs.Loads, cs.Failed, cs.Failures.Map()
		s.InFlight = w.cons.InFlight()
		s.RawBytes, s.WireBytes = cs.RawBytes, cs.WireBytes
	}
	return s
}

// workerName is how logs and reports name a worker.
func workerName(role string, i int) string { return strings.ToLower(role) + "-" + fmt.Sprint(i) }
