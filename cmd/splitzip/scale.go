package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/splitzip/splitzip/internal/scale"
)

// runBenchScale is 'splitzip bench scale': many producer and consumer processes (this binary, as hidden
// 'bench scale-worker' processes) on a NATS cluster of nats-server processes, handoffs in flight at once;
// throughput, handoff time and CPU per GB of KV for each mode.
func runBenchScale(args []string) error {
	fs := newFlags("bench scale", "")
	producers := fs.Int("producers", 4, "prefill (producer) processes")
	consumers := fs.Int("consumers", 4, "decode (consumer) processes")
	nodes := fs.Int("nodes", 3, "nats-server processes in the cluster")
	replicas := fs.Int("replicas", 3, "JetStream replicas of the control plane's buckets")
	inFlight := fs.Int("inflight", 64, "handoffs in flight at once")
	tokens := fs.Int("tokens", 256, "tokens per handoff (a multiple of 16); every handoff has this size")
	duration := fs.Duration("duration", 20*time.Second, "time per mode (after a warm-up of -inflight handoffs)")
	modes := fs.String("modes", "raw,fast", "modes to measure: raw, fast, high-ratio, auto")
	natsServer := fs.String("nats-server", os.Getenv("SPLITZIP_NATS_SERVER"), "the nats-server binary (default $SPLITZIP_NATS_SERVER, else build/bin/nats-server, else on PATH; make deps builds it)")
	data := fs.String("data", defaultEvaluation, "real KV (safetensors) to fill the producers' caches with")
	dir := fs.String("dir", "", "directory for the cluster's stores and every process's log (default: a temporary one, removed at the end)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	bin, err := findNATSServer(*natsServer)
	if err != nil {
		return err
	}
	fixture, err := filepath.Abs(*data)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	scratch := *dir
	if scratch == "" {
		if scratch, err = os.MkdirTemp("", "splitzip-scale-"); err != nil {
			return err
		}
		defer os.RemoveAll(scratch)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
	cfg := scale.Config{Producers: *producers, Consumers: *consumers, Nodes: *nodes, Replicas: *replicas, InFlight: *inFlight,
		Tokens: *tokens, NATSServer: bin, Fixture: fixture, Dir: scratch, FlipProducer: -1, Log: logf,
		Worker: func(a []string) *exec.Cmd {
			return exec.Command(self, append([]string{"bench", "scale-worker"}, a...)...)
		}}
	startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	h, err := scale.Start(startCtx, cfg)
	cancel()
	if err != nil {
		return err
	}
	defer h.Close()
	cfg = h.Config()
	fmt.Printf("splitzip bench scale: %d producer and %d consumer processes, a %d-node NATS cluster (JetStream R%d), %d handoffs in flight,\n",
		cfg.Producers, cfg.Consumers, cfg.Nodes, cfg.Replicas, cfg.InFlight)
	fmt.Printf("%d-token handoffs of SmolLM2-135M KV (%.2f MiB each, real KV); %s, %d cores, all on this machine over loopback.\n",
		cfg.Tokens, float64(cfg.RawBytes())/(1<<20), cpuName(), runtime.NumCPU())
	fmt.Printf("Handoff time: the router's save request to the consumer's last block decoded; CPU: user + system time of the processes.\n\n")
	var figs []scale.Figures
	for _, mode := range strings.Split(*modes, ",") {
		mode = strings.TrimSpace(mode)
		logf("%s: warm-up", mode)
		if _, err := h.Run(ctx, scale.Phase{Name: mode + " warm-up", Mode: mode, Count: int64(cfg.InFlight)}); err != nil {
			return err
		}
		res, err := h.Run(ctx, scale.Phase{Name: mode, Mode: mode, Duration: *duration})
		if err != nil {
			return err
		}
		f := scale.Summarize(res, cfg)
		logf("%s: %v", mode, f.Counts)
		figs = append(figs, f)
	}
	fmt.Print(scale.Table(figs))
	for _, f := range figs {
		if n := f.Counts.Failed + f.Counts.Wrong + f.Counts.Hung + f.Counts.SaveFailed + f.Counts.Lost; n > 0 {
			return fmt.Errorf("%s: %d requests not done: %v", f.Mode, n, f.Counts)
		}
	}
	return nil
}

// runScaleWorker is a worker process of 'bench scale' (not listed: the benchmark starts it).
func runScaleWorker(args []string) error { return scale.RunWorker(args, os.Stdin, os.Stdout) }

// findNATSServer resolves the nats-server binary: the flag's path, else build/bin/nats-server, else PATH.
func findNATSServer(flagPath string) (string, error) {
	if flagPath != "" {
		if fi, err := os.Stat(flagPath); err != nil || fi.IsDir() {
			return "", fmt.Errorf("nats-server %s: not a file (make deps builds it)", flagPath)
		}
		return flagPath, nil
	}
	if fi, err := os.Stat(filepath.Join("build", "bin", "nats-server")); err == nil && !fi.IsDir() {
		return filepath.Abs(filepath.Join("build", "bin", "nats-server"))
	}
	if p, err := exec.LookPath("nats-server"); err == nil {
		return p, nil
	}
	return "", errors.New("no nats-server binary: run make deps (it builds build/bin/nats-server) or pass -nats-server")
}
