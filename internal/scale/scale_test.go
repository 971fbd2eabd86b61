package scale

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/internal/natstest"
	"github.com/stretchr/testify/require"
)

// workerEnv carries a worker's arguments when the test binary is started as a worker process.
const workerEnv = "SPLITZIP_SCALE_WORKER_ARGS"

func TestMain(m *testing.M) {
	if args := os.Getenv(workerEnv); args != "" {
		var a []string
		if err := json.Unmarshal([]byte(args), &a); err != nil {
			fmt.Fprintln(os.Stderr, "scale worker:", err)
			os.Exit(2)
		}
		if err := RunWorker(a, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "scale worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// testConfig is a deployment of 4 producer and 4 consumer processes (this test binary, re-run as workers) on a
// 3-node cluster with R3 buckets, 64 handoffs in flight. Deadlines are generous: a loaded 2-core machine runs
// eleven processes here.
func testConfig(t *testing.T) Config {
	t.Helper()
	if raceEnabled {
		t.Skip("the scale tests run eleven processes; make scale runs them without the race detector (the connector's own tests run with it)")
	}
	if testing.Short() {
		t.Skip("the scale tests start a NATS cluster and eight engine processes (make scale)")
	}
	bin, err := natstest.Binary()
	if errors.Is(err, natstest.ErrNoBinary) {
		t.Skipf("skipping: %v", err)
	}
	require.NoError(t, err)
	fixture, err := DefaultFixture()
	require.NoError(t, err)
	self, err := os.Executable()
	require.NoError(t, err)
	return Config{
		Producers: 4, Consumers: 4, Nodes: 3, Replicas: 3, InFlight: 64, Tokens: 64,
		LoadTimeout: 60 * time.Second, HandoffTTL: 60 * time.Second, IOTimeout: 10 * time.Second, RecordWait: 20 * time.Second,
		NATSServer: bin, Fixture: fixture, Dir: t.TempDir(),
		Worker: func(args []string) *exec.Cmd {
			a, _ := json.Marshal(args)
			cmd := exec.Command(self, "-test.run=^$")
			cmd.Env = append(os.Environ(), workerEnv+"="+string(a))
			return cmd
		},
		Log: func(format string, args ...any) { fmt.Printf(format+"\n", args...) },
	}
}

func start(t *testing.T, cfg Config) (*Harness, context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	h, err := Start(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(h.Close)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("workers' logs:\n%s\ncluster's logs:\n%s", h.WorkerLogs(30), h.Cluster.Logs(30))
		}
	})
	return h, ctx
}

// report prints a phase's counts (all requests, before the fault and from its end on) and checks what must
// hold under any fault: nothing wrong, nothing hung.
func report(t *testing.T, res *Result) (before, after Counts) {
	t.Helper()
	all := Count(res.Records, nil)
	fmt.Printf("%s: %d requests, at most %d in flight, %.1f s: %v\n", res.Phase.Name, len(res.Records), res.MaxInFlight, res.Wall.Seconds(), all)
	if !res.FaultAt.IsZero() {
		before = Count(res.Records, func(r Record) bool { return r.End.Before(res.FaultAt) })
		after = Count(res.Records, func(r Record) bool { return !r.Start.Before(res.FaultEnd) })
		fmt.Printf("  ended before the fault: %v\n  begun after it (%.1f s later): %v\n", before, res.FaultEnd.Sub(res.FaultAt).Seconds(), after)
	}
	for k, e := range all.Examples {
		fmt.Printf("  e.g. %s: %s\n", k, e)
	}
	for _, r := range res.Records {
		if r.Outcome == Wrong || r.Outcome == Hung {
			t.Errorf("%s request (producer %d, consumer %d): %s", r.Outcome, r.Producer, r.Consumer, r.Err)
		}
	}
	require.Zero(t, all.Wrong, "loads reported done with wrong blocks")
	require.Zero(t, all.Hung, "requests without an answer past their deadline")
	return before, after
}

// The short scale run: raw and compressed handoffs between 4 producer and 4 consumer processes over a 3-node
// cluster, 64 in flight; every handoff must arrive bit-exact.
func TestScaleShort(t *testing.T) {
	cfg := testConfig(t)
	h, ctx := start(t, cfg)
	var figs []Figures
	for _, mode := range []string{"raw", "fast"} {
		res, err := h.Run(ctx, Phase{Name: mode, Mode: mode, Count: 320})
		require.NoError(t, err)
		report(t, res)
		c := Count(res.Records, nil)
		require.Equal(t, len(res.Records), c.Done, "every handoff done: %v", c)
		require.GreaterOrEqual(t, res.MaxInFlight, 64)
		figs = append(figs, Summarize(res, h.Config()))
	}
	fmt.Print(Table(figs))
	require.Greater(t, figs[1].WireGB*1.2, 0.0)
	require.Less(t, figs[1].WireGB, figs[1].GB/1.2, "compressed handoffs put less on the wire")
}

// Each producer has staging for two and a half handoffs while sixteen of its handoffs are in flight: handoffs
// wait for staging in turn, and every one arrives, none expiring (a per-frame wait for staging had handoffs
// each holding part of it and waiting for one another until their TTL).
func TestScaleStagingPressure(t *testing.T) {
	cfg := testConfig(t)
	cfg.HandoffTTL = 20 * time.Second
	l := Layout(cfg.Tokens / BlockTokens)
	handoff := int64(l.Layers) * (2*int64(cfg.Tokens/BlockTokens)*l.BlockBytes() + codec.HeaderSize)
	cfg.StagingBytes = handoff * 5 / 2
	h, ctx := start(t, cfg)
	res, err := h.Run(ctx, Phase{Name: "staging for 2.5 handoffs", Mode: "raw", Count: 320})
	require.NoError(t, err)
	report(t, res)
	c := Count(res.Records, nil)
	require.Equal(t, len(res.Records), c.Done, "every handoff done: %v", c)
	var expired int64
	for _, s := range h.ProducerStats(ctx) {
		require.NotNil(t, s)
		expired += s.Expired
	}
	fmt.Printf("  staging of %d bytes a producer (a handoff takes %d): %d handoffs expired\n", cfg.StagingBytes, handoff, expired)
	require.Zero(t, expired, "handoffs expired waiting for staging")
}

// A NATS node dies (SIGKILL) under load: handoffs go on through the other two (R3 buckets).
func TestFaultNATSNodeKilled(t *testing.T) {
	cfg := testConfig(t)
	h, ctx := start(t, cfg)
	res, err := h.Run(ctx, Phase{Name: "nats node killed", Mode: "fast", Count: 300, FaultAfter: 100, AfterFault: 100,
		Fault: func() {
			h.Cluster.Kill(0)
			// The fault ends when the buckets' streams answer again (a new leader where the dead node led).
			wctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			require.NoError(t, h.Cluster.WaitReady(wctx))
		}})
	require.NoError(t, err)
	_, after := report(t, res)
	require.GreaterOrEqual(t, after.Done, 100, "handoffs begun after the node died complete through the others")
}

// A producer process dies (SIGKILL) with handoffs in flight: the loads it was serving fail and are reported
// (the router's requests still waiting on its save are lost with it), the other producers' handoffs complete.
func TestFaultProducerKilled(t *testing.T) {
	cfg := testConfig(t)
	cfg.IOTimeout = 5 * time.Second
	h, ctx := start(t, cfg)
	const victim = 1
	res, err := h.Run(ctx, Phase{Name: "producer killed", Mode: "fast", Count: 300, FaultAfter: 100, AfterFault: 100,
		Fault: func() { h.KillProducer(victim) }})
	require.NoError(t, err)
	_, after := report(t, res)
	hit := Count(res.Records, func(r Record) bool { return r.Producer == victim && r.End.After(res.FaultAt) })
	fmt.Printf("  the killed producer's requests ending after the kill: %v\n", hit)
	// A load whose frames had all arrived before the kill may still end done (checked bit-exact like any).
	require.Positive(t, hit.Failed+hit.Lost, "the dead producer had requests in flight")
	require.GreaterOrEqual(t, after.Done, 100, "the other producers go on")
}

// A consumer process dies (SIGKILL) mid-fetch: its requests are lost with it, the others complete, and the
// producers free the staging of the handoffs it never finished once their TTL ends.
func TestFaultConsumerKilled(t *testing.T) {
	cfg := testConfig(t)
	cfg.HandoffTTL = 5 * time.Second
	h, ctx := start(t, cfg)
	res, err := h.Run(ctx, Phase{Name: "consumer killed", Mode: "fast", Count: 300, FaultAfter: 100, AfterFault: 100,
		Fault: func() { h.KillConsumer(1) }})
	require.NoError(t, err)
	_, after := report(t, res)
	require.GreaterOrEqual(t, after.Done, 100)
	t0 := time.Now()
	var stats []*WorkerStats
	require.Eventually(t, func() bool {
		stats = h.ProducerStats(ctx)
		for _, s := range stats {
			if s == nil || s.InFlight > 0 || s.StagingInUse > 0 {
				return false
			}
		}
		return true
	}, cfg.HandoffTTL+30*time.Second, 100*time.Millisecond, "producers' staging: %+v", stats)
	var expired int64
	for _, s := range stats {
		expired += s.Expired
	}
	fmt.Printf("  producers' staging free %.1f s after the load ended (handoff TTL %v); %d handoffs expired unclaimed\n",
		time.Since(t0).Seconds(), cfg.HandoffTTL, expired)
	require.Positive(t, expired, "the dead consumer's unfinished handoffs expire on their producers")
}

// One producer's stream to every consumer passes a proxy that flips a bit every MiB: each damaged load fails
// with an error the consumer reports; no block is ever delivered wrong.
func TestFaultFlippedBit(t *testing.T) {
	cfg := testConfig(t)
	cfg.FlipProducer, cfg.FlipEvery = 0, 1<<20
	cfg.IOTimeout = 5 * time.Second
	h, ctx := start(t, cfg)
	res, err := h.Run(ctx, Phase{Name: "bit flipped", Mode: "fast", Count: 240})
	require.NoError(t, err)
	report(t, res)
	flipped := Count(res.Records, func(r Record) bool { return r.Producer == 0 })
	clean := Count(res.Records, func(r Record) bool { return r.Producer != 0 })
	fmt.Printf("  %d bits flipped; through the proxy: %v\n  the others: %v\n", h.Flipped(), flipped, clean)
	require.Positive(t, h.Flipped())
	require.Positive(t, flipped.Failed, "damaged loads fail")
	require.Equal(t, clean.Done, clean.Done+clean.Failed+clean.SaveFailed+clean.Lost, "undamaged loads complete")
}

// The whole cluster restarts (graceful stop of every node, then start on the same stores) under load:
// handoffs resume once it is back; what was in flight either completes or fails and is reported.
func TestFaultClusterRestart(t *testing.T) {
	cfg := testConfig(t)
	h, ctx := start(t, cfg)
	res, err := h.Run(ctx, Phase{Name: "cluster restarted", Mode: "fast", Count: 300, FaultAfter: 100, AfterFault: 100,
		Fault: func() {
			for i := range h.Cluster.Nodes() {
				h.Cluster.Shutdown(i)
			}
			for i := range h.Cluster.Nodes() {
				require.NoError(t, h.Cluster.Start(i))
			}
			wctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			require.NoError(t, h.Cluster.WaitReady(wctx))
		}})
	require.NoError(t, err)
	_, after := report(t, res)
	require.GreaterOrEqual(t, after.Done, 100, "handoffs resume after the restart")
}

// Every tenth request's load comes after its handoff expired: those fail as expired (or unknown, once the
// record is gone), the producers free their staging, the rest complete.
func TestFaultExpiredHandoff(t *testing.T) {
	cfg := testConfig(t)
	cfg.HandoffTTL = 3 * time.Second
	h, ctx := start(t, cfg)
	late := cfg.HandoffTTL + 2*time.Second
	res, err := h.Run(ctx, Phase{Name: "expired handoffs", Mode: "fast", Count: 300,
		Delay: func(i int64) time.Duration {
			if i%10 == 0 {
				return late
			}
			return 0
		}})
	require.NoError(t, err)
	report(t, res)
	delayed := Count(res.Records, func(r Record) bool { return r.Delayed })
	prompt := Count(res.Records, func(r Record) bool { return !r.Delayed })
	fmt.Printf("  loaded %v after the save (TTL %v): %v\n  loaded at once: %v\n", late, cfg.HandoffTTL, delayed, prompt)
	require.Positive(t, delayed.Failed)
	require.Zero(t, delayed.Done, "an expired handoff never loads")
	for k := range delayed.Kinds {
		require.Contains(t, []string{"expired", "unknown"}, k)
	}
	require.Equal(t, prompt.Done, len(res.Records)-delayed.Failed-delayed.Lost-delayed.SaveFailed)
	var expired int64
	require.Eventually(t, func() bool {
		expired = 0
		for _, s := range h.ProducerStats(ctx) {
			expired += s.Expired
		}
		return expired >= int64(delayed.Failed)
	}, 30*time.Second, 100*time.Millisecond)
	fmt.Printf("  producers: %d handoffs expired unclaimed\n", expired)
}
