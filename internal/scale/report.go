package scale

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// Counts are a set of requests by outcome.
type Counts struct {
	Done, Failed, Wrong, Hung, SaveFailed, Lost int
	Kinds                                       map[string]int    // failed loads by kind, refused saves and lost requests by cause
	Examples                                    map[string]string // an error of each kind
}

// Count tallies the records keep selects (nil: all).
func Count(recs []Record, keep func(Record) bool) Counts {
	c := Counts{Kinds: map[string]int{}, Examples: map[string]string{}}
	for _, r := range recs {
		if keep != nil && !keep(r) {
			continue
		}
		switch r.Outcome {
		case Done:
			c.Done++
		case Failed:
			c.Failed++
			c.Kinds[r.Kind]++
			if c.Examples[r.Kind] == "" {
				c.Examples[r.Kind] = r.Err
			}
		case Wrong:
			c.Wrong++
		case Hung:
			c.Hung++
		case SaveFailed:
			c.SaveFailed++
			c.Kinds["save refused"]++
			if c.Examples["save refused"] == "" {
				c.Examples["save refused"] = r.Err
			}
		case Lost:
			c.Lost++
			c.Kinds[r.Kind]++
		}
	}
	return c
}

func (c Counts) String() string {
	kinds := make([]string, 0, len(c.Kinds))
	for k, n := range c.Kinds {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(kinds)
	s := fmt.Sprintf("handed off %d, failed and reported for recompute %d, wrong %d, hung %d, saves refused %d, lost with a killed engine %d",
		c.Done, c.Failed, c.Wrong, c.Hung, c.SaveFailed, c.Lost)
	if len(kinds) > 0 {
		s += " (" + strings.Join(kinds, ", ") + ")"
	}
	return s
}

// Figures are a phase's throughput, latency and cost.
type Figures struct {
	Mode             string
	Handoffs         int           // done
	PerSecond        float64       // done per second of the phase
	P50, P99         time.Duration // handoff time: save sent to every block decoded
	GB, WireGB       float64       // KV moved by the done handoffs (10^9 bytes), and its wire bytes
	CPU              CPU
	CPUPerGB         float64 // producers' and consumers' CPU seconds per GB of KV moved
	NATSCPUPerGB     float64
	Counts           Counts
	Wall             time.Duration
	InFlight, Tokens int
	Paths            [3]int64 // handoffs by path: raw, fast, high-ratio
}

// Summarize computes a phase's figures.
func Summarize(res *Result, cfg Config) Figures {
	f := Figures{Mode: res.Phase.Mode, Counts: Count(res.Records, nil), Wall: res.Wall, CPU: res.CPU,
		InFlight: cfg.InFlight, Tokens: cfg.Tokens, Paths: res.Paths}
	var took []time.Duration
	for _, r := range res.Records {
		if r.Outcome == Done {
			took = append(took, r.Took)
		}
	}
	f.Handoffs = len(took)
	slices.Sort(took)
	if n := len(took); n > 0 {
		f.P50 = took[n/2]
		f.P99 = took[min(n-1, n*99/100)]
	}
	f.PerSecond = float64(f.Handoffs) / res.Wall.Seconds()
	f.GB = float64(f.Handoffs) * float64(cfg.RawBytes()) / 1e9
	f.WireGB = f.GB * res.WireRatio
	if f.GB > 0 {
		f.CPUPerGB = (res.CPU.Producers + res.CPU.Consumers).Seconds() / f.GB
		f.NATSCPUPerGB = res.CPU.NATS.Seconds() / f.GB
	}
	return f
}

// Table writes the figures of several phases as a Markdown table.
func Table(fs []Figures) string {
	var b strings.Builder
	b.WriteString("| mode | handoffs | handoffs/s | p50 ms | p99 ms | KV GB | wire GB | CPU s producers + consumers | CPU s per GB | NATS CPU s per GB | not done | paths raw/fast/high-ratio |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, f := range fs {
		notDone := f.Counts.Failed + f.Counts.Wrong + f.Counts.Hung + f.Counts.SaveFailed + f.Counts.Lost
		fmt.Fprintf(&b, "| %s | %d | %.1f | %.1f | %.1f | %.2f | %.2f | %.1f + %.1f | %.2f | %.3f | %d | %d/%d/%d |\n", f.Mode, f.Handoffs, f.PerSecond,
			ms(f.P50), ms(f.P99), f.GB, f.WireGB, f.CPU.Producers.Seconds(), f.CPU.Consumers.Seconds(), f.CPUPerGB, f.NATSCPUPerGB, notDone,
			f.Paths[0], f.Paths[1], f.Paths[2])
	}
	return b.String()
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
