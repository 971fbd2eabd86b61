package main

import (
	"errors"
	"flag"
	"fmt"
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
	if err := cb.Save(*out); err != nil {
		return err
	}
	fmt.Printf("wrote %s: %d-bit %s codebook %v, coverage %.4f%% of %d samples\n", *out, cb.Bits, cb.DType, cb.Exponents, 100*cb.Coverage, cb.Samples)
	return nil
}

func newEncoder(codebookPath string) (*codec.Encoder, error) {
	var opts []codec.EOption
	if codebookPath != "" {
		cb, err := codec.LoadCodebook(codebookPath)
		if err != nil {
			return nil, err
		}
		opts = append(opts, codec.WithCodebook(cb))
	}
	return codec.NewEncoder(opts...)
}

func runCompress(args []string) error {
	fs := newFlags("compress", "IN OUT")
	book := fs.String("codebook", "", "codebook JSON from 'splitzip calibrate' (default: the built-in one)")
	dtype := fs.String("dtype", "", "dtype of a raw (non-safetensors) input file")
	if err := parseArgs(fs, args, 2, "need IN and OUT"); err != nil {
		return err
	}
	in, out := fs.Arg(0), fs.Arg(1)
	enc, err := newEncoder(*book)
	if err != nil {
		return err
	}
	tensors, meta, err := loadTensors(in, *dtype)
	if err != nil {
		return err
	}
	var rawBytes, frameBytes int
	if !isSafetensors(in) {
		frame, err := enc.Encode(nil, tensors[0].data, tensors[0].dtype)
		if err != nil {
			return err
		}
		rawBytes, frameBytes = len(tensors[0].data), len(frame)
		if err := os.WriteFile(out, frame, 0o644); err != nil {
			return err
		}
	} else {
		if !isSafetensors(out) {
			return fmt.Errorf("%s: a safetensors input compresses to a .safetensors output", out)
		}
		origins := map[string]origin{}
		frames := make([]safetensors.Tensor, 0, len(tensors))
		for i, t := range tensors {
			frame, err := enc.Encode(nil, t.data, t.dtype)
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			origins[t.name] = origin{DType: t.stDType, Shape: t.shape}
			frames = append(frames, safetensors.Tensor{Name: t.name, DType: "U8", Shape: []int64{int64(len(frame))}, Data: frame})
			rawBytes += len(t.data)
			frameBytes += len(frame)
			progress(i+1, len(tensors), t.name)
		}
		m := map[string]string{}
		for k, v := range meta {
			m[k] = v
		}
		m[metaKey] = encodeOrigins(origins)
		if err := safetensors.Write(out, frames, m); err != nil {
			return err
		}
	}
	fmt.Printf("%s → %s: %s → %s (ratio %.4f)\n", in, out, formatBytes(float64(rawBytes)), formatBytes(float64(frameBytes)), float64(rawBytes)/float64(max(frameBytes, 1)))
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
	dec, err := codec.NewDecoder()
	if err != nil {
		return err
	}
	if !isSafetensors(in) {
		frame, err := os.ReadFile(in)
		if err != nil {
			return err
		}
		raw, _, err := dec.Decode(nil, frame)
		if err != nil {
			return fmt.Errorf("%s: %w", in, err)
		}
		return os.WriteFile(out, raw, 0o644)
	}
	f, err := safetensors.ReadFile(in)
	if err != nil {
		return err
	}
	origins, err := decodeOrigins(f.Metadata)
	if err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	tensors := make([]safetensors.Tensor, 0, len(f.Tensors))
	for i, t := range f.Tensors {
		o, ok := origins[t.Name]
		if !ok {
			return fmt.Errorf("%s: tensor %q has no recorded origin", in, t.Name)
		}
		raw, _, err := dec.Decode(nil, t.Data)
		if err != nil {
			return fmt.Errorf("%s: %s: %w", in, t.Name, err)
		}
		tensors = append(tensors, safetensors.Tensor{Name: t.Name, DType: o.DType, Shape: o.Shape, Data: raw})
		progress(i+1, len(f.Tensors), t.Name)
	}
	meta := map[string]string{}
	for k, v := range f.Metadata {
		if k != metaKey {
			meta[k] = v
		}
	}
	return safetensors.Write(out, tensors, meta)
}

func runInspect(args []string) error {
	fs := newFlags("inspect", "FILE")
	if err := parseArgs(fs, args, 1, "need one FILE"); err != nil {
		return err
	}
	path := fs.Arg(0)
	var frames []safetensors.Tensor
	if isSafetensors(path) {
		f, err := safetensors.ReadFile(path)
		if err != nil {
			return err
		}
		if _, err := decodeOrigins(f.Metadata); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		frames = f.Tensors
	} else {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		frames = []safetensors.Tensor{{Name: filepath.Base(path), Data: b}}
	}
	fmt.Printf("%-14s %-9s %10s %10s %7s %5s %9s %10s  %s\n", "tensor", "dtype", "elements", "frame", "ratio", "bits", "escapes", "esc/chunk", "codebook")
	for _, t := range frames {
		fi, err := codec.Inspect(t.Data)
		if err != nil {
			return fmt.Errorf("%s: %w", t.Name, err)
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
