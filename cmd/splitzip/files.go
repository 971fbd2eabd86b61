package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/internal/safetensors"
)

func runCalibrate(args []string) error {
	fs := newFlags("calibrate", "FILE...")
	out := fs.String("o", "codebook.json", "where to write the codebook JSON")
	dtype := fs.String("dtype", "bf16", "dtype to calibrate (tensors of other dtypes are skipped); also the dtype of raw input files")
	bits := fs.Int("bits", codec.DefaultBits, "code width in bits (the codebook has 2^bits exponents)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return fmt.Errorf("no sample files given")
	}
	if err := checkOutputNotInput(*out, fs.Args()...); err != nil {
		return err
	}
	dt, err := codec.ParseDType(*dtype)
	if err != nil {
		return err
	}
	h, err := codec.NewHistogram(dt)
	if err != nil {
		return err
	}
	for _, path := range fs.Args() {
		tensors, _, err := loadTensors(path, *dtype)
		if err != nil {
			return err
		}
		used := 0
		for _, t := range tensors {
			if t.dtype == dt {
				if err := h.Add(t.data); err != nil {
					return fmt.Errorf("%s: %s: %w", path, t.name, err)
				}
				used++
			}
		}
		fmt.Fprintf(os.Stderr, "%s: %d %s tensors\n", path, used, dt)
	}
	cb, err := h.Codebook(*bits)
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(cb, "", "  ") // as codec.Codebook.Save writes it
	if err != nil {
		return err
	}
	if err := writeOutput(*out, writeBytes(append(b, '\n'))); err != nil {
		return err
	}
	fmt.Printf("wrote %s: %d-bit %s codebook %v, coverage %.4f%% of %d samples\n", *out, cb.Bits, cb.DType, cb.Exponents, 100*cb.Coverage, cb.Samples)
	return nil
}

// fileEncoderOptions are the codec options of every frame the tool writes to a file, beside its codebook. A
// file outlives the process that wrote it and can be damaged on disk or in transit, so an option that makes a
// stored frame check its own payload when decoded belongs here: 'splitzip decompress' then fails on a damaged
// tensor instead of writing wrong values.
func fileEncoderOptions() []codec.EOption { return []codec.EOption{codec.WithChecksum(true)} }

// newEncoder builds the encoder of 'splitzip compress': the mode by name, a codebook (fast mode) or a code table
// (high-ratio mode) from their JSON files when given.
func newEncoder(mode, codebookPath, tablePath string) (*codec.Encoder, error) {
	m, err := codec.ParseMode(mode)
	if err != nil {
		return nil, err
	}
	opts := append(fileEncoderOptions(), codec.WithMode(m))
	if codebookPath != "" {
		if m != codec.ModeFast {
			return nil, fmt.Errorf("-codebook is the fast mode's table; the %s mode takes -table", m)
		}
		cb, err := codec.LoadCodebook(codebookPath)
		if err != nil {
			return nil, err
		}
		opts = append(opts, codec.WithCodebook(cb))
	}
	if tablePath != "" {
		if m != codec.ModeHighRatio {
			return nil, fmt.Errorf("-table is the high-ratio mode's code table; the %s mode takes -codebook", m)
		}
		t, err := codec.LoadCodeTable(tablePath)
		if err != nil {
			return nil, err
		}
		opts = append(opts, codec.WithCodeTable(t))
	}
	return codec.NewEncoder(opts...)
}

// writeBytes is a writeOutput body that writes b.
func writeBytes(b []byte) func(w io.Writer) error {
	return func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	}
}

func runCompress(args []string) error {
	fs := newFlags("compress", "IN OUT")
	mode := fs.String("mode", codec.ModeFast.String(), "fast (4-bit exponent codes, memory speed) or high-ratio (entropy-coded exponents, ~1.47x on real KV)")
	book := fs.String("codebook", "", "fast mode: codebook JSON from 'splitzip calibrate' (default: the built-in one)")
	table := fs.String("table", "", "high-ratio mode: code table JSON (default: each tensor's own, learned as it is compressed)")
	dtype := fs.String("dtype", "", "dtype of a raw input: one that is neither safetensors nor a SplitZip frame by its bytes")
	if err := parseArgs(fs, args, 2, "need IN and OUT"); err != nil {
		return err
	}
	in, out := fs.Arg(0), fs.Arg(1)
	if err := checkOutputNotInput(out, in); err != nil {
		return err
	}
	enc, err := newEncoder(*mode, *book, *table)
	if err != nil {
		return err
	}
	src, err := loadInput(in, *dtype)
	if err != nil {
		return err
	}
	if src.kind == kindSafetensors && *dtype != "" {
		return fmt.Errorf("%s: a safetensors file by its header, whose tensors carry their own dtypes; -dtype is for raw input only", in)
	}
	if err := checkCompressedName(out, src.kind == kindSafetensors); err != nil {
		return err
	}
	var rawBytes, frameBytes int
	if src.kind == kindRaw {
		t := src.tensors[0]
		frame, err := enc.Encode(nil, t.data, t.dtype)
		if err != nil {
			return fmt.Errorf("%s: %w", in, err)
		}
		rawBytes, frameBytes = len(t.data), len(frame)
		if err := writeOutput(out, writeBytes(frame)); err != nil {
			return err
		}
	} else {
		origins := map[string]origin{}
		frames := make([]safetensors.Tensor, 0, len(src.tensors))
		for i, t := range src.tensors {
			frame, err := enc.Encode(nil, t.data, t.dtype)
			if err != nil {
				return fmt.Errorf("%s: tensor %s: %w", in, t.name, err)
			}
			origins[t.name] = origin{DType: t.stDType, Shape: t.shape}
			frames = append(frames, safetensors.Tensor{Name: t.name, DType: "U8", Shape: []int64{int64(len(frame))}, Data: frame})
			rawBytes += len(t.data)
			frameBytes += len(frame)
			progress(i+1, len(src.tensors), t.name)
		}
		m := map[string]string{}
		for k, v := range src.metadata {
			m[k] = v
		}
		m[metaKey] = encodeOrigins(origins)
		err := writeOutput(out, func(w io.Writer) error { return safetensors.Encode(w, frames, m) })
		if err != nil {
			return err
		}
	}
	fmt.Printf("%s → %s: %s → %s (ratio %.4f)\n", in, out, formatBytes(float64(rawBytes)), formatBytes(float64(frameBytes)), float64(rawBytes)/float64(max(frameBytes, 1)))
	return nil
}

// checkCompressedName keeps a compressed file's name truthful: a safetensors input compresses to a safetensors
// file, which must be named *.safetensors, and a raw input to a bare SplitZip frame, which must not be. An
// output that is a device or a pipe has no name to keep.
func checkCompressedName(out string, safetensorsOut bool) error {
	if fi, err := os.Stat(out); err == nil && !fi.Mode().IsRegular() && !fi.IsDir() {
		return nil
	}
	named := strings.HasSuffix(out, ".safetensors")
	switch {
	case safetensorsOut && !named:
		return fmt.Errorf("%s: %w: a safetensors input compresses to a safetensors file; name it *.safetensors", out, errOutputName)
	case !safetensorsOut && named:
		return fmt.Errorf("%s: %w: a raw input compresses to a bare SplitZip frame, not a safetensors file; name it otherwise (e.g. *.sz)", out, errOutputName)
	}
	return nil
}

// progress reports work on many tensors: an updating line on a terminal, a line per tenth otherwise.
func progress(i, n int, what string) {
	if stderrIsTerminal {
		fmt.Fprintf(os.Stderr, "\r[%d/%d] %-40s", i, n, what)
		if i == n {
			fmt.Fprintln(os.Stderr)
		}
	} else if i == n || i%max(n/10, 1) == 0 {
		fmt.Fprintf(os.Stderr, "[%d/%d] %s\n", i, n, what)
	}
}

var stderrIsTerminal = func() bool {
	fi, err := os.Stderr.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}()

func runDecompress(args []string) error {
	fs := newFlags("decompress", "IN OUT")
	if err := parseArgs(fs, args, 2, "need IN and OUT"); err != nil {
		return err
	}
	in, out := fs.Arg(0), fs.Arg(1)
	if err := checkOutputNotInput(out, in); err != nil {
		return err
	}
	dec, err := codec.NewDecoder()
	if err != nil {
		return err
	}
	src, err := readCompressed(in)
	if err != nil {
		return err
	}
	if src.frame != nil {
		raw, _, err := dec.Decode(nil, src.frame)
		if err != nil {
			return fmt.Errorf("%s: %w", in, err)
		}
		return writeOutput(out, writeBytes(raw))
	}
	// Everything the header needs is checked before the output is created; the tensors are then decoded one
	// at a time straight into it, so a file needs memory for itself and its largest tensor only.
	frames := src.file.Tensors
	tensors := make([]safetensors.Tensor, len(frames))
	for i, t := range frames {
		o, ok := src.origins[t.Name]
		if !ok {
			return fmt.Errorf("%s: tensor %s has no recorded origin in the %q metadata", in, t.Name, metaKey)
		}
		size, err := safetensors.ByteSize(o.DType, o.Shape)
		if err != nil {
			return fmt.Errorf("%s: tensor %s: recorded origin: %w", in, t.Name, err)
		}
		h, err := codec.ParseHeader(t.Data)
		if err != nil {
			return fmt.Errorf("%s: tensor %s: %w", in, t.Name, err)
		}
		if h.RawLen() != uint64(size) {
			return fmt.Errorf("%s: tensor %s: %w: the frame holds %d bytes, its recorded origin (%s %v) %d", in, t.Name, codec.ErrCorrupt, h.RawLen(), o.DType, o.Shape, size)
		}
		tensors[i] = safetensors.Tensor{Name: t.Name, DType: o.DType, Shape: o.Shape}
	}
	meta := map[string]string{}
	for k, v := range src.file.Metadata {
		if k != metaKey {
			meta[k] = v
		}
	}
	header, err := safetensors.MarshalHeader(tensors, meta)
	if err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	return writeOutput(out, func(w io.Writer) error {
		if _, err := w.Write(header); err != nil {
			return err
		}
		var raw []byte
		for i, t := range frames {
			raw, _, err = dec.Decode(raw[:0], t.Data)
			if err != nil {
				return fmt.Errorf("%s: tensor %s: %w", in, t.Name, err)
			}
			if _, err := w.Write(raw); err != nil {
				return err
			}
			progress(i+1, len(frames), t.Name)
		}
		return nil
	})
}

func runInspect(args []string) error {
	fs := newFlags("inspect", "FILE")
	if err := parseArgs(fs, args, 1, "need one FILE"); err != nil {
		return err
	}
	path := fs.Arg(0)
	src, err := readCompressed(path)
	if err != nil {
		return err
	}
	frames := []safetensors.Tensor{{Name: filepath.Base(path), Data: src.frame}}
	if src.frame == nil {
		frames = src.file.Tensors
	}
	fmt.Printf("%-14s %-9s %10s %10s %7s %5s %9s %10s  %s\n", "tensor", "dtype", "elements", "frame", "ratio", "bits", "escapes", "esc/chunk", "codebook")
	for _, t := range frames {
		fi, err := codec.Inspect(t.Data)
		if err != nil {
			return fmt.Errorf("%s: tensor %s: %w", path, t.Name, err)
		}
		h := fi.Header
		book := "raw"
		if !h.Raw {
			parts := make([]string, len(fi.Codebook))
			for i, x := range fi.Codebook {
				parts[i] = fmt.Sprint(x)
			}
			book = strings.Join(parts, " ")
		}
		fmt.Printf("%-14s %-9s %10d %10d %7.4f %5d %9d %4d..%-5d  %s\n", t.Name, h.DType, h.Elements, h.FrameLen(), h.Ratio(), h.CodeBits, h.Escapes, fi.ChunkEscapesMin, fi.ChunkEscapesMax, book)
	}
	return nil
}

// parseArgs parses flags and checks that exactly n arguments follow, printing the usage when they don't.
func parseArgs(fs *flag.FlagSet, args []string, n int, want string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != n {
		fs.Usage()
		return errors.New(want)
	}
	return nil
}
