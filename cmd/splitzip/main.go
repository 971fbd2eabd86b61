// Command splitzip calibrates codebooks, compresses and decompresses tensors, inspects frames, prints the
// real-KV statistics table and benchmarks the codec.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
)

type command struct {
	summary string
	run     func(args []string) error
}

var commands = map[string]command{
	"demo":       {"the main job: real-KV statistics, then a producer→consumer handoff table, raw vs compressed", runDemo},
	"calibrate":  {"build a codebook from sample tensors: calibrate -o book.json FILE...", runCalibrate},
	"compress":   {"compress a tensor file: compress [-codebook book.json] [-dtype bf16] IN OUT", runCompress},
	"decompress": {"decompress a file written by compress: decompress IN OUT", runDecompress},
	"inspect":    {"print a compressed file's headers, codebooks and escape statistics: inspect FILE", runInspect},
	"stats":      {"per-layer K/V coverage, escapes and ratio on real KV, round trip checked: stats [-calibration F] [-evaluation F]", runStats},
	"bench":      {"codec throughput against copy() in the same run: bench [-size 64MiB]; handoffs raw vs compressed: bench transfer", runBench},
}

func usage() {
	fmt.Fprintf(os.Stderr, "splitzip: lossless BF16 KV-cache compression (SplitZip format v1)\n\nusage: splitzip COMMAND [flags] [args]\n\ncommands:\n")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-11s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(os.Stderr, "\nRun 'splitzip COMMAND -h' for a command's flags.\n")
}

func main() {
	if len(os.Args) < 2 || strings.HasPrefix(os.Args[1], "-") && os.Args[1] != "-h" && os.Args[1] != "--help" {
		usage()
		os.Exit(2)
	}
	name := os.Args[1]
	if name == "-h" || name == "--help" || name == "help" {
		usage()
		return
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "splitzip: unknown command %q\n\n", name)
		usage()
		os.Exit(2)
	}
	if err := cmd.run(os.Args[2:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintf(os.Stderr, "splitzip %s: %v\n", name, err)
		os.Exit(1)
	}
}

// newFlags returns a flag set whose usage line names the command.
func newFlags(name, args string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: splitzip %s [flags] %s\n\nflags:\n", name, args)
		fs.PrintDefaults()
	}
	return fs
}
