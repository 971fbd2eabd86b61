package scale

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Config is one deployment: the cluster, the engines, and the handoffs between them.
type Config struct {
	Producers, Consumers int   // engine processes (default 4 and 4)
	Nodes, Replicas      int   // nats-server processes, and JetStream replicas of the buckets (default 3, 3)
	InFlight             int   // handoffs the router keeps in flight (default 64)
	Tokens               int   // tokens per handoff, a multiple of 16 (default 256)
	ProducerBlocks       int   // blocks per layer of each producer's cache (default: enough for 8 handoffs)
	StagingBytes         int64 // each producer's staging (default 1 GiB)

	HandoffTTL  time.Duration // producers' TTL of unclaimed handoffs, and the records' (default 60 s)
	LoadTimeout time.Duration // consumers' bound of one load (default 60 s)
	RecordWait  time.Duration // consumers' wait for a record (default 10 s)
	IOTimeout   time.Duration // the transport's I/O timeout (0: its default)
	HungAfter   time.Duration // a request without an answer this long after it started counts as hung (default LoadTimeout + HandoffTTL + 30 s)

	// FlipProducer, when ≥ 0, puts a proxy that flips a bit every FlipEvery bytes between that producer and
	// every consumer.
	FlipProducer int
	FlipEvery    int64

	NATSServer string                           // the nats-server binary
	Fixture    string                           // tests/data/kv_evaluation.safetensors
	Dir        string                           // scratch: stores and logs
	Worker     func(args []string) *exec.Cmd    // starts a worker process running RunWorker(args)
	Log        func(format string, args ...any) // progress lines; nil: quiet
	WorkerLog  string                           // workers' slog level (default warn)
}

func (c *Config) defaults() error {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.Producers, 4)
	def(&c.Consumers, 4)
	def(&c.Nodes, 3)
	def(&c.Replicas, min(3, c.Nodes))
	def(&c.InFlight, 64)
	def(&c.Tokens, 256)
	if c.Tokens%BlockTokens != 0 || c.Tokens <= 0 {
		return fmt.Errorf("splitzip/scale: %d tokens per handoff: want a positive multiple of %d", c.Tokens, BlockTokens)
	}
	def(&c.ProducerBlocks, 8*c.Tokens/BlockTokens)
	if c.HandoffTTL == 0 {
		c.HandoffTTL = time.Minute
	}
	if c.LoadTimeout == 0 {
		c.LoadTimeout = time.Minute
	}
	if c.RecordWait == 0 {
		c.RecordWait = 10 * time.Second
	}
	if c.HungAfter == 0 {
		c.HungAfter = c.LoadTimeout + c.HandoffTTL + 30*time.Second
	}
	if c.WorkerLog == "" {
		c.WorkerLog = "warn"
	}
	if c.Log == nil {
		c.Log = func(string, ...any) {}
	}
	if c.Worker == nil || c.NATSServer == "" || c.Fixture == "" || c.Dir == "" {
		return errors.New("splitzip/scale: Config needs Worker, NATSServer, Fixture and Dir")
	}
	if c.Replicas > c.Nodes {
		return fmt.Errorf("splitzip/scale: %d replicas on %d nodes", c.Replicas, c.Nodes)
	}
	return nil
}

// blocksPer is the blocks of one handoff.
func (c *Config) blocksPer() int { return c.Tokens / BlockTokens }

// RawBytes is the KV bytes of one handoff.
func (c *Config) RawBytes() int64 {
	l := Layout(1)
	return l.BlockBytes() * 2 * int64(l.Layers) * int64(c.blocksPer())
}

// Harness is a running deployment: the cluster and the engine processes.
type Harness struct {
	cfg       Config
	Cluster   *Cluster
	producers []*proc
	consumers []*proc
	slots     []chan int // per consumer: free destination slots
	slotMu    sync.Mutex
	slotFreed chan struct{} // closed and replaced when a slot is freed or a consumer dies
	proxy     *flipProxy
	seq       atomic.Int64
}

// Start starts the cluster and the workers and waits until every worker is ready.
func Start(ctx context.Context, cfg Config) (*Harness, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	h := &Harness{cfg: cfg, slotFreed: make(chan struct{})}
	var err error
	if h.Cluster, err = StartCluster(ctx, cfg.NATSServer, filepath.Join(cfg.Dir, "nats"), cfg.Nodes); err != nil {
		return nil, err
	}
	cfg.Log("cluster: %d nats-server nodes (%s), JetStream R%d", cfg.Nodes, h.Cluster.URL(), cfg.Replicas)
	base := WorkerConfig{NATS: h.Cluster.URL(), Replicas: cfg.Replicas, Fixture: cfg.Fixture, HandoffTTL: cfg.HandoffTTL,
		LoadTimeout: cfg.LoadTimeout, RecordWait: cfg.RecordWait, IOTimeout: cfg.IOTimeout, LogLevel: cfg.WorkerLog,
		StagingBytes: cfg.StagingBytes}
	// The first worker creates the buckets (with the replicas asked for); the others find them.
	start := func(wc WorkerConfig) (*proc, error) {
		p, err := startProc(ctx, cfg, wc)
		if err != nil {
			return nil, fmt.Errorf("%w\n%s", err, h.Cluster.Logs(20))
		}
		return p, nil
	}
	slotsPer := 2 * ((cfg.InFlight + cfg.Consumers - 1) / cfg.Consumers)
	for i := range cfg.Consumers {
		wc := base
		wc.Role, wc.Index, wc.Blocks = "consumer", i, slotsPer*cfg.blocksPer()
		p, err := start(wc)
		if err != nil {
			h.Close()
			return nil, err
		}
		h.consumers = append(h.consumers, p)
		go func() { <-p.dead; h.slotNotify() }()
		ch := make(chan int, slotsPer)
		for s := range slotsPer {
			ch <- s
		}
		h.slots = append(h.slots, ch)
	}
	for i := range cfg.Producers {
		wc := base
		wc.Role, wc.Index, wc.Blocks = "producer", i, cfg.ProducerBlocks
		if i == cfg.FlipProducer && cfg.FlipEvery > 0 {
			ports, err := freePorts(1)
			if err != nil {
				h.Close()
				return nil, err
			}
			wc.Listen = "127.0.0.1:" + strconv.Itoa(ports[0])
			if h.proxy, err = startFlipProxy(wc.Listen, cfg.FlipEvery); err != nil {
				h.Close()
				return nil, err
			}
			wc.Advertise = h.proxy.addr()
		}
		p, err := start(wc)
		if err != nil {
			h.Close()
			return nil, err
		}
		h.producers = append(h.producers, p)
	}
	cfg.Log("engines: %d producer and %d consumer processes, %d-token handoffs (%.1f MiB of KV each)",
		cfg.Producers, cfg.Consumers, cfg.Tokens, float64(cfg.RawBytes())/(1<<20))
	return h, nil
}

// Config is the configuration the harness runs, defaults filled in.
func (h *Harness) Config() Config { return h.cfg }

// Close ends the workers (closing their input, then killing what is left) and the cluster.
func (h *Harness) Close() {
	for _, p := range append(append([]*proc(nil), h.producers...), h.consumers...) {
		p.stop()
	}
	if h.proxy != nil {
		h.proxy.close()
	}
	if h.Cluster != nil {
		h.Cluster.Stop()
	}
}

// Flipped is the number of bits the proxy flipped.
func (h *Harness) Flipped() int64 {
	if h.proxy == nil {
		return 0
	}
	return h.proxy.flipped.Load()
}

// KillProducer and KillConsumer end worker i at once (SIGKILL): an engine crash.
func (h *Harness) KillProducer(i int) { h.producers[i].kill() }

// KillConsumer: see KillProducer.
func (h *Harness) KillConsumer(i int) { h.consumers[i].kill() }

// SetMode sets every live producer's mode: raw, fast, high-ratio or auto.
func (h *Harness) SetMode(ctx context.Context, mode string) error {
	for _, p := range h.producers {
		if p.alive() {
			a, err := p.call(ctx, command{Op: "mode", Mode: mode})
			if err == nil && a.Err != "" {
				err = errors.New(a.Err)
			}
			if err != nil {
				return fmt.Errorf("%s: %w", p.name, err)
			}
		}
	}
	return nil
}

// ProducerStats and ConsumerStats ask every live worker of the role for its stats (nil for a dead one).
func (h *Harness) ProducerStats(ctx context.Context) []*WorkerStats { return statsOf(ctx, h.producers) }

// ConsumerStats: see ProducerStats.
func (h *Harness) ConsumerStats(ctx context.Context) []*WorkerStats { return statsOf(ctx, h.consumers) }

func statsOf(ctx context.Context, ps []*proc) []*WorkerStats {
	out := make([]*WorkerStats, len(ps))
	for i, p := range ps {
		if a, err := p.call(ctx, command{Op: "stats"}); err == nil {
			out[i] = a.Stats
		}
	}
	return out
}

// Pids are the live workers' process ids by role, and the cluster's.
func (h *Harness) Pids() (producers, consumers, nats []int) {
	for _, p := range h.producers {
		if p.alive() {
			producers = append(producers, p.pid)
		}
	}
	for _, p := range h.consumers {
		if p.alive() {
			consumers = append(consumers, p.pid)
		}
	}
	return producers, consumers, h.Cluster.Pids()
}

// WorkerLogs returns the tail of every worker's log.
func (h *Harness) WorkerLogs(lines int) string {
	var b strings.Builder
	for _, p := range append(append([]*proc(nil), h.producers...), h.consumers...) {
		data, err := os.ReadFile(p.logFile)
		if err != nil || len(data) == 0 {
			continue
		}
		ls := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		fmt.Fprintf(&b, "--- %s (last %d lines)\n%s\n", p.name, lines, strings.Join(ls[max(0, len(ls)-lines):], "\n"))
	}
	return b.String()
}

// proc is the coordinator's side of a worker process.
type proc struct {
	name    string
	index   int
	pid     int
	addr    string
	logFile string
	cmd     *exec.Cmd
	stdin   io.WriteCloser

	encMu sync.Mutex
	enc   *json.Encoder

	mu      sync.Mutex
	pending map[int64]chan answer
	nextID  int64
	dead    chan struct{} // closed when the process's output ends
	exited  chan struct{} // closed once the process was waited for
}

func startProc(ctx context.Context, cfg Config, wc WorkerConfig) (*proc, error) {
	name := workerName(wc.Role, wc.Index)
	p := &proc{name: name, index: wc.Index, logFile: filepath.Join(cfg.Dir, name+".log"), pending: map[int64]chan answer{},
		dead: make(chan struct{}), exited: make(chan struct{})}
	logf, err := os.Create(p.logFile)
	if err != nil {
		return nil, err
	}
	p.cmd = cfg.Worker(wc.args())
	p.cmd.Stderr = logf
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		logf.Close()
		return nil, err
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("splitzip/scale: starting %s: %w", name, err)
	}
	p.pid = p.cmd.Process.Pid
	p.enc = json.NewEncoder(p.stdin)
	ready := make(chan answer, 1)
	go p.read(stdout, ready)
	go func() { _ = p.cmd.Wait(); logf.Close(); close(p.exited) }()
	select {
	case a := <-ready:
		p.addr = a.Addr
		return p, nil
	case <-p.dead:
		<-p.exited
		tail, _ := os.ReadFile(p.logFile)
		return nil, fmt.Errorf("splitzip/scale: %s exited before it was ready: %s", name, strings.TrimSpace(string(tail)))
	case <-ctx.Done():
		p.kill()
		return nil, fmt.Errorf("splitzip/scale: %s not ready: %w", name, ctx.Err())
	}
}

// read dispatches the worker's answers to their callers; the first line is the ready line.
func (p *proc) read(r io.Reader, ready chan<- answer) {
	defer close(p.dead)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	first := true
	for sc.Scan() {
		var a answer
		if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
			continue // not ours (a stray line); the worker's log is stderr
		}
		if first {
			first = false
			ready <- a
			continue
		}
		p.mu.Lock()
		ch := p.pending[a.ID]
		delete(p.pending, a.ID)
		p.mu.Unlock()
		if ch != nil {
			ch <- a
		}
	}
}

func (p *proc) alive() bool {
	select {
	case <-p.dead:
		return false
	default:
		return true
	}
}

// call sends cmd and waits for its answer; errWorkerGone when the process ends first.
func (p *proc) call(ctx context.Context, cmd command) (answer, error) {
	ch := make(chan answer, 1)
	p.mu.Lock()
	p.nextID++
	cmd.ID = p.nextID
	p.pending[cmd.ID] = ch
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.pending, cmd.ID)
		p.mu.Unlock()
	}()
	p.encMu.Lock()
	err := p.enc.Encode(cmd)
	p.encMu.Unlock()
	if err != nil {
		return answer{}, fmt.Errorf("%w: %s: %v", errWorkerGone, p.name, err)
	}
	select {
	case a := <-ch:
		return a, nil
	case <-p.dead:
		return answer{}, fmt.Errorf("%w: %s", errWorkerGone, p.name)
	case <-ctx.Done():
		return answer{}, ctx.Err()
	}
}

func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// stop closes the worker's input (it closes its engine and exits) and kills it if it has not exited in 20 s.
func (p *proc) stop() {
	p.stdin.Close()
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		p.kill()
	}
}

// Outcome is how one request ended.
type Outcome int

const (
	Done       Outcome = iota // loaded and verified bit-exact
	Failed                    // the consumer reported the load failed (the engine recomputes)
	Wrong                     // the consumer reported it done, but a block differs: must never happen
	Hung                      // no answer within HungAfter: must never happen
	SaveFailed                // the producer refused the save (no handoff began)
	Lost                      // the producer or consumer process was killed before answering
)

func (o Outcome) String() string {
	return [...]string{"done", "failed", "wrong", "hung", "save-failed", "lost"}[o]
}

// Record is one request of a phase.
type Record struct {
	Start, End         time.Time
	Took               time.Duration // save sent to load verdict, the consumer's poisoning and checking left out
	Producer, Consumer int
	Delayed            bool // its load was held back (Phase.Delay)
	Outcome            Outcome
	Kind               string // a failed load's kind (connector.FailureKind), or why it was lost or refused
	Err                string
}

// Phase is one stretch of load: requests of one mode, InFlight at a time, until Count were started or
// Duration passed (whichever is set; both: the first reached).
type Phase struct {
	Name     string
	Mode     string // raw, fast, high-ratio or auto
	Count    int64
	Duration time.Duration
	// Fault, when set, runs once FaultAfter requests have ended, concurrently with the load; the load goes on
	// until Fault returns and then until at least AfterFault requests begun since are done.
	Fault      func()
	FaultAfter int64
	AfterFault int64
	// Delay, when set, gives the time a request's load is held back after its save (0: none).
	Delay func(i int64) time.Duration
}

// Result is a phase's requests and what the processes spent.
type Result struct {
	Phase             Phase
	Records           []Record
	Wall              time.Duration
	FaultAt, FaultEnd time.Time // when the fault began and ended (zero without one)
	CPU               CPU
	WireRatio         float64  // wire bytes over KV bytes of the consumers' loads (1 for raw frames)
	Paths             [3]int64 // the producers' handoffs by path during the phase: raw, fast, high-ratio
	MaxInFlight       int      // the most requests under way at once
}

// CPU is the processor time the processes of each kind used during a phase.
type CPU struct{ Producers, Consumers, NATS time.Duration }

// Run runs a phase and returns its records.
func (h *Harness) Run(ctx context.Context, ph Phase) (*Result, error) {
	if err := h.SetMode(ctx, ph.Mode); err != nil {
		return nil, err
	}
	res := &Result{Phase: ph}
	var mu sync.Mutex
	var started, ended, maxInFlight atomic.Int64
	var faultDone atomic.Bool
	faultDone.Store(ph.Fault == nil)
	var afterFault atomic.Int64
	faultCh := make(chan struct{})
	stopAt := time.Time{}
	if ph.Duration > 0 {
		stopAt = time.Now().Add(ph.Duration)
	}
	more := func() bool {
		if ctx.Err() != nil {
			return false
		}
		if !faultDone.Load() || afterFault.Load() < ph.AfterFault {
			return true
		}
		n := started.Load()
		if ph.Count > 0 && n >= ph.Count {
			return false
		}
		return stopAt.IsZero() || time.Now().Before(stopAt)
	}
	st0, ps0 := h.ConsumerStats(ctx), h.ProducerStats(ctx)
	p0, c0, n0 := h.Pids()
	cpu0 := struct{ p, c, n map[int]time.Duration }{cpuOf(p0), cpuOf(c0), cpuOf(n0)}
	t0 := time.Now()
	progress := time.NewTicker(time.Second)
	defer progress.Stop()
	stopProgress := make(chan struct{})
	var progWG sync.WaitGroup
	progWG.Add(1)
	go func() {
		defer progWG.Done()
		for {
			select {
			case <-stopProgress:
				return
			case <-progress.C:
				mu.Lock()
				var done, failed int
				for _, r := range res.Records {
					switch r.Outcome {
					case Done:
						done++
					default:
						failed++
					}
				}
				mu.Unlock()
				el := time.Since(t0).Seconds()
				h.cfg.Log("  %s: %.0f s, %d done (%.1f/s), %d not done, %d in flight", ph.Name, el, done, float64(done)/el, failed,
					started.Load()-ended.Load())
			}
		}
	}()
	var wg sync.WaitGroup
	for g := range h.cfg.InFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), uint64(time.Now().UnixNano())))
			for more() {
				i := started.Add(1)
				if now := int(i - ended.Load()); now > int(maxInFlight.Load()) {
					maxInFlight.Store(int64(now)) // a close estimate: enough to show the load reached InFlight
				}
				rec := h.one(ctx, i, rng, ph)
				n := ended.Add(1)
				if faultDone.Load() && !rec.Start.Before(res.FaultEnd) && rec.Outcome == Done {
					afterFault.Add(1)
				}
				mu.Lock()
				res.Records = append(res.Records, rec)
				mu.Unlock()
				if ph.Fault != nil && n == ph.FaultAfter {
					go func() {
						mu.Lock()
						res.FaultAt = time.Now()
						mu.Unlock()
						ph.Fault()
						mu.Lock()
						res.FaultEnd = time.Now()
						mu.Unlock()
						faultDone.Store(true)
						close(faultCh)
					}()
				}
			}
		}()
	}
	wg.Wait()
	if ph.Fault != nil && !faultDone.Load() {
		<-faultCh
	}
	close(stopProgress)
	progWG.Wait()
	res.Wall = time.Since(t0)
	res.MaxInFlight = int(maxInFlight.Load())
	p1, c1, n1 := h.Pids()
	// Processes killed during the phase are left out (their time is gone with them).
	res.CPU = CPU{Producers: cpuDelta(cpu0.p, p1), Consumers: cpuDelta(cpu0.c, c1), NATS: cpuDelta(cpu0.n, n1)}
	var raw, wire int64
	for i, s1 := range h.ConsumerStats(ctx) {
		if s0 := st0[i]; s0 != nil && s1 != nil {
			raw += s1.RawBytes - s0.RawBytes
			wire += s1.WireBytes - s0.WireBytes
		}
	}
	if raw > 0 {
		res.WireRatio = float64(wire) / float64(raw)
	}
	for i, s1 := range h.ProducerStats(ctx) {
		if s0 := ps0[i]; s0 != nil && s1 != nil {
			res.Paths[0] += s1.Raw - s0.Raw
			res.Paths[1] += s1.Fast - s0.Fast
			res.Paths[2] += s1.HighRatio - s0.HighRatio
		}
	}
	return res, ctx.Err()
}

// one runs request i: save on a producer, load on a consumer, verdict.
func (h *Harness) one(ctx context.Context, i int64, rng *rand.Rand, ph Phase) (rec Record) {
	rec.Start = time.Now()
	defer func() { rec.End = time.Now() }()
	prod := h.pick(h.producers, int(i))
	if prod == nil {
		rec.Outcome, rec.Kind = Lost, "no producer left"
		return rec
	}
	rec.Producer = prod.index
	nb := h.cfg.blocksPer()
	src := make([]int, nb)
	first := rng.IntN(h.cfg.ProducerBlocks)
	for k := range src {
		src[k] = (first + 7*k) % h.cfg.ProducerBlocks // scattered, as a paged cache's blocks are
	}
	req := fmt.Sprintf("%s-%d", ph.Name, h.seq.Add(1))
	hctx, cancel := context.WithTimeout(ctx, h.cfg.HungAfter)
	defer cancel()
	a, err := prod.call(hctx, command{Op: "save", Req: req, Src: src})
	switch {
	case errors.Is(err, errWorkerGone):
		rec.Outcome, rec.Kind, rec.Err = Lost, "producer gone", err.Error()
		return rec
	case err != nil:
		rec.Outcome, rec.Err = Hung, "save: "+err.Error()
		return rec
	case a.Err != "":
		rec.Outcome, rec.Err = SaveFailed, a.Err
		return rec
	}
	if ph.Delay != nil {
		if d := ph.Delay(i); d > 0 {
			rec.Delayed = true
			select {
			case <-time.After(d):
			case <-hctx.Done():
			}
		}
	}
	cons, slot := h.pickConsumer(hctx, int(i))
	if cons == nil {
		rec.Outcome, rec.Kind = Lost, "no consumer left"
		if hctx.Err() != nil && ctx.Err() == nil {
			rec.Outcome = Hung
		}
		return rec
	}
	defer func() { h.slots[cons.index] <- slot; h.slotNotify() }()
	rec.Consumer = cons.index
	dst := make([]int, nb)
	for k := range dst {
		dst[k] = slot*nb + k
	}
	a, err = cons.call(hctx, command{Op: "load", Req: req, Handoff: a.Handoff, Secret: a.Secret, Producer: prod.index, Src: src, Dst: dst})
	switch {
	case errors.Is(err, errWorkerGone):
		rec.Outcome, rec.Kind, rec.Err = Lost, "consumer gone", err.Error()
	case err != nil:
		rec.Outcome, rec.Err = Hung, "load: "+err.Error()
	case a.Wrong != "":
		rec.Outcome, rec.Err = Wrong, a.Wrong
	case a.Err != "":
		rec.Outcome, rec.Kind, rec.Err = Failed, a.Kind, a.Err
	default:
		rec.Outcome = Done
		rec.Took = time.Since(rec.Start) - time.Duration(a.BusyNs)
	}
	return rec
}

// pick returns a live worker, starting the round at i.
func (h *Harness) pick(ps []*proc, i int) *proc {
	for k := range ps {
		if p := ps[(i+k)%len(ps)]; p.alive() {
			return p
		}
	}
	return nil
}

func (h *Harness) slotNotify() {
	h.slotMu.Lock()
	close(h.slotFreed)
	h.slotFreed = make(chan struct{})
	h.slotMu.Unlock()
}

// pickConsumer takes a free destination slot of a live consumer, waiting for one.
func (h *Harness) pickConsumer(ctx context.Context, i int) (*proc, int) {
	for {
		h.slotMu.Lock()
		freed := h.slotFreed
		h.slotMu.Unlock()
		for k := range h.consumers {
			j := (i + k) % len(h.consumers)
			if !h.consumers[j].alive() {
				continue
			}
			select {
			case s := <-h.slots[j]:
				return h.consumers[j], s
			default:
			}
		}
		live := false
		for _, c := range h.consumers {
			live = live || c.alive()
		}
		if !live {
			return nil, 0
		}
		select {
		case <-ctx.Done():
			return nil, 0
		case <-freed: // every slot was taken: a load ended or a consumer died since
		}
	}
}
