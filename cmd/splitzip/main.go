// Command splitzip calibrates codebooks, compresses and decompresses tensors, inspects frames, prints the
// real-KV statistics table and benchmarks the codec.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
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
	"compress":   {"compress a safetensors or raw tensor file: compress [-mode fast|high-ratio] [-codebook book.json | -table t.json] [-dtype bf16] IN OUT", runCompress},
	"decompress": {"decompress a file written by compress: decompress IN OUT", runDecompress},
	"inspect":    {"print a compressed file's headers, codebooks and escape statistics: inspect FILE", runInspect},
	"stats":      {"per-layer K/V ratio of the fast and high-ratio modes on real KV (bf16 and fp8), round trip checked: stats [-calibration F] [-evaluation F]", runStats},
	"bench":      {"codec throughput of both modes against copy() in the same run: bench [-size 64MiB] [-gpu]; handoffs raw vs compressed: bench transfer; the payload transport alone: bench wire; many engines on a NATS cluster: bench scale", runBench},
}

// filesHelp states the rules every file command follows.
const filesHelp = `files:
  An input is recognised by its bytes, never by its name: a SplitZip frame starts with the magic "SZIP", a
  safetensors file with its 8-byte header length and a JSON header; anything else is a raw little-endian
  tensor of the dtype -dtype names (compress has no default and refuses raw input without it; calibrate's
  default is bf16). compress writes a safetensors input as a safetensors file of frames, to be named
  *.safetensors, and a raw input as one bare frame, to be named otherwise; decompress and inspect read either,
  whatever its name, and refuse any other file.
  An output is written to a temporary file beside it, flushed to disk and renamed into place: a command that
  fails leaves no partial file and an existing output unchanged. A replaced file keeps its mode; a new one is
  0644 less the umask. An output that is an input (the same path, or the same file through a link) is refused.
  decompress stops at the first frame the decoder rejects and leaves no output. Errors name the file (and the
  tensor) and exit with status 1.
`

func usage(w io.Writer) {
	fmt.Fprintf(w, "splitzip: lossless KV-cache compression (SplitZip frame format v2)\n\nusage: splitzip COMMAND [flags] [args]\n\ncommands:\n")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-11s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(w, "\n%s\nRun 'splitzip COMMAND -h' for a command's flags.\n", filesHelp)
}

func main() { os.Exit(mainStatus(os.Args[1:], os.Stderr)) }

// mainStatus runs the command line args (without the program name) and returns the exit status: 0 on success
// or help, 1 when the command fails (its error printed to stderr), 2 for a missing or unknown command.
func mainStatus(args []string, stderr io.Writer) int {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") && args[0] != "-h" && args[0] != "--help" {
		usage(stderr)
		return 2
	}
	name := args[0]
	if name == "-h" || name == "--help" || name == "help" {
		usage(stderr)
		return 0
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "splitzip: unknown command %q\n\n", name)
		usage(stderr)
		return 2
	}
	if err := cmd.run(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "splitzip %s: %v\n", name, err)
		return 1
	}
	return 0
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
