package main

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/internal/safetensors"
	"github.com/stretchr/testify/require"
)

// dirNames lists dir, so a test can see that no temporary file was left beside an output.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	require.NoError(t, err)
	names := make([]string, len(es))
	for i, e := range es {
		names[i] = e.Name()
	}
	return names
}

func writeFile(t *testing.T, path string, b []byte, perm fs.FileMode) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, b, perm))
	require.NoError(t, os.Chmod(path, perm)) // whatever the umask
}

// A write that fails part-way, after more than the buffer's worth reached the temporary file, leaves no file
// where there was none and an existing output byte for byte and mode for mode as it was.
func TestWriteOutputFailureLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	failing := func(w io.Writer) error {
		if _, err := w.Write(make([]byte, 3<<20)); err != nil {
			return err
		}
		return errors.New("disk full")
	}
	fresh := filepath.Join(dir, "fresh.bin")
	require.ErrorContains(t, writeOutput(fresh, failing), "disk full")
	require.NoFileExists(t, fresh)
	require.Empty(t, dirNames(t, dir), "no temporary file left")

	old := filepath.Join(dir, "old.bin")
	writeFile(t, old, []byte("the previous output"), 0o600)
	require.ErrorContains(t, writeOutput(old, failing), "disk full")
	b, err := os.ReadFile(old)
	require.NoError(t, err)
	require.Equal(t, "the previous output", string(b))
	require.Equal(t, []string{"old.bin"}, dirNames(t, dir))

	// A successful write replaces the file and keeps its mode; a new file gets 0644 at most.
	require.NoError(t, writeOutput(old, writeBytes([]byte("new"))))
	b, err = os.ReadFile(old)
	require.NoError(t, err)
	require.Equal(t, "new", string(b))
	fi, err := os.Stat(old)
	require.NoError(t, err)
	if runtime.GOOS != "windows" {
		require.Equal(t, fs.FileMode(0o600), fi.Mode().Perm(), "a replaced file keeps its mode")
	}
	require.NoError(t, writeOutput(fresh, writeBytes([]byte("x"))))
	fi, err = os.Stat(fresh)
	require.NoError(t, err)
	require.Zero(t, fi.Mode().Perm()&^0o644, "a new file is 0644 less the umask")
	require.Equal(t, []string{"fresh.bin", "old.bin"}, dirNames(t, dir))
}

func TestWriteOutputPaths(t *testing.T) {
	dir := t.TempDir()
	err := writeOutput(filepath.Join(dir, "no", "such", "out.bin"), writeBytes([]byte("x")))
	require.ErrorContains(t, err, "does not exist")
	require.NoDirExists(t, filepath.Join(dir, "no"))

	require.ErrorContains(t, writeOutput(dir, writeBytes([]byte("x"))), "is a directory")

	// Through a symbolic link the file it points to is replaced, and the link stays a link.
	target := filepath.Join(dir, "target.bin")
	link := filepath.Join(dir, "link.bin")
	writeFile(t, target, []byte("before"), 0o644)
	if err := os.Symlink(target, link); err != nil {
		t.Skipf("no symbolic links here: %v", err)
	}
	require.NoError(t, writeOutput(link, writeBytes([]byte("after"))))
	b, err := os.ReadFile(target)
	require.NoError(t, err)
	require.Equal(t, "after", string(b))
	li, err := os.Lstat(link)
	require.NoError(t, err)
	require.NotZero(t, li.Mode()&fs.ModeSymlink)

	// A device is written directly: there is no file to replace, and renaming over it would remove it.
	if _, err := os.Stat(os.DevNull); err == nil && runtime.GOOS != "windows" {
		require.NoError(t, writeOutput(os.DevNull, writeBytes([]byte("discarded"))))
		fi, err := os.Stat(os.DevNull)
		require.NoError(t, err)
		require.NotZero(t, fi.Mode()&fs.ModeDevice)
	}
}

// Interrupting a write removes its temporary file before the process exits.
func TestRemoveOnSignal(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("a process cannot send itself an interrupt on Windows")
	}
	codes := make(chan int, 1)
	exit = func(code int) { codes <- code }
	defer func() { exit = os.Exit }()
	tmp := filepath.Join(t.TempDir(), ".out.splitzip-x.tmp")
	writeFile(t, tmp, []byte("partial"), 0o644)
	stop := removeOnSignal(tmp)
	p, err := os.FindProcess(os.Getpid())
	require.NoError(t, err)
	require.NoError(t, p.Signal(os.Interrupt))
	select {
	case code := <-codes:
		require.Equal(t, 130, code, "128 + SIGINT")
	case <-time.After(10 * time.Second):
		require.Fail(t, "the interrupt was not handled")
	}
	require.NoFileExists(t, tmp)
	stop()
}

func TestOutputIsInputRefused(t *testing.T) {
	dir := t.TempDir()
	orig, err := os.ReadFile(fixture("kv_evaluation.safetensors"))
	require.NoError(t, err)
	in := filepath.Join(dir, "x.safetensors")
	writeFile(t, in, orig, 0o644)
	unchanged := func() {
		t.Helper()
		b, err := os.ReadFile(in)
		require.NoError(t, err)
		require.True(t, bytes.Equal(orig, b), "input untouched")
	}

	for _, out := range []string{in, filepath.Join(dir, ".", "sub", "..", "x.safetensors")} {
		require.ErrorIs(t, runCompress([]string{in, out}), errSameFile, out)
		require.ErrorIs(t, runDecompress([]string{in, out}), errSameFile, out)
		unchanged()
	}
	hard := filepath.Join(dir, "hard.safetensors")
	require.NoError(t, os.Link(in, hard))
	err = runCompress([]string{in, hard})
	require.ErrorIs(t, err, errSameFile, "a hard link is the same file")
	require.ErrorContains(t, err, "hard.safetensors is the input")
	unchanged()
	soft := filepath.Join(dir, "soft.safetensors")
	if os.Symlink(in, soft) == nil {
		require.ErrorIs(t, runCompress([]string{in, soft}), errSameFile, "a symbolic link to the input")
		unchanged()
	}
	require.ErrorIs(t, runCalibrate([]string{"-o", hard, fixture("kv_calibration.safetensors"), in}), errSameFile)
	unchanged()

	var stderr bytes.Buffer
	require.Equal(t, 1, mainStatus([]string{"compress", in, in}, &stderr))
	require.Contains(t, stderr.String(), "splitzip compress: output "+in+" is the input "+in)
	unchanged()
	require.Equal(t, []string{"hard.safetensors", "soft.safetensors", "x.safetensors"}, dirNames(t, dir))
}

func TestMissingInput(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.bin")
	out := filepath.Join(dir, "out.sz")
	for _, args := range [][]string{
		{"compress", missing, out},
		{"compress", "-dtype", "bf16", missing, out},
		{"decompress", missing, out},
		{"inspect", missing},
		{"calibrate", "-o", out, missing},
	} {
		err := commands[args[0]].run(args[1:])
		require.ErrorIs(t, err, fs.ErrNotExist, args)
		require.EqualError(t, err, "input "+missing+": file does not exist", args)
		require.NoFileExists(t, out)
	}
}

func TestFormatByContent(t *testing.T) {
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	st, err := os.ReadFile(fixture("kv_evaluation.safetensors"))
	require.NoError(t, err)
	writeFile(t, p("kv.bin"), st, 0o644) // safetensors under another name
	raw := make([]byte, 4096)
	for i := range raw {
		raw[i] = byte(i*37 + i>>7)
	}
	writeFile(t, p("raw.safetensors"), raw, 0o644) // raw under a safetensors name

	// A safetensors file is one by its header, whatever its name, and compresses to *.safetensors only.
	err = runCompress([]string{p("kv.bin"), p("kv.sz")})
	require.ErrorIs(t, err, errOutputName)
	require.ErrorContains(t, err, "a safetensors input compresses to a safetensors file")
	require.ErrorContains(t, runCompress([]string{"-dtype", "bf16", p("kv.bin"), p("kv.safetensors")}), "-dtype is for raw input only")
	require.NoError(t, runCompress([]string{p("kv.bin"), p("kv.safetensors")}))
	require.NoError(t, os.Rename(p("kv.safetensors"), p("kv.packed")))
	require.NoError(t, runInspect([]string{p("kv.packed")}))
	require.NoError(t, runDecompress([]string{p("kv.packed"), p("kv.back")}))
	requireSameTensors(t, p("kv.bin"), p("kv.back"))

	// Anything else is raw, needs -dtype, and compresses to a bare frame not named *.safetensors.
	err = runCompress([]string{p("raw.safetensors"), p("raw.sz")})
	require.ErrorIs(t, err, errRawNeedsType)
	require.EqualError(t, err, p("raw.safetensors")+": neither a safetensors file nor a SplitZip frame by its contents, so it is read as a raw tensor, and raw input needs -dtype ("+rawDTypes+")")
	require.ErrorIs(t, runCompress([]string{"-dtype", "bf16", p("raw.safetensors"), p("raw2.safetensors")}), errOutputName)
	require.NoError(t, runCompress([]string{"-dtype", "bf16", p("raw.safetensors"), p("raw.sz")}))
	require.NoError(t, os.Rename(p("raw.sz"), p("frame.safetensors"))) // a frame under a safetensors name
	require.NoError(t, runInspect([]string{p("frame.safetensors")}))
	require.NoError(t, runDecompress([]string{p("frame.safetensors"), p("raw.back")}))
	back, err := os.ReadFile(p("raw.back"))
	require.NoError(t, err)
	require.Equal(t, raw, back)

	// A raw input must hold whole elements.
	writeFile(t, p("odd.bin"), raw[:4095], 0o644)
	require.ErrorContains(t, runCompress([]string{"-dtype", "bf16", p("odd.bin"), p("odd.sz")}), "4095 bytes are not a whole number of 2-byte bf16 elements")

	// What the tool wrote is not compressed again, nor read as tensors.
	err = runCompress([]string{"-dtype", "bf16", p("frame.safetensors"), p("twice.sz")})
	require.ErrorIs(t, err, errNotTensor)
	require.ErrorContains(t, err, "starts with the SplitZip frame magic")
	err = runCompress([]string{p("kv.packed"), p("twice.safetensors")})
	require.ErrorIs(t, err, errNotTensor)
	require.ErrorContains(t, err, `it has "splitzip" metadata`)
	require.ErrorIs(t, runCalibrate([]string{"-o", p("book.json"), p("kv.packed")}), errNotTensor)

	// decompress and inspect refuse what compress did not write, saying what the file is.
	for _, run := range []func([]string) error{
		func(a []string) error { return runDecompress(append(a, p("never.bin"))) },
		runInspect,
	} {
		err = run([]string{p("kv.bin")})
		require.ErrorIs(t, err, errNotSplitZip)
		require.ErrorContains(t, err, `a safetensors file without the "splitzip" metadata`)
		err = run([]string{p("odd.bin")})
		require.ErrorIs(t, err, errNotSplitZip)
		require.ErrorContains(t, err, "neither a SplitZip frame nor a safetensors file by its contents")
	}
	require.NoFileExists(t, p("never.bin"))
	for _, name := range []string{"kv.sz", "raw2.safetensors", "odd.sz", "twice.sz", "twice.safetensors", "book.json"} {
		require.NoFileExists(t, p(name))
	}
}

func requireSameTensors(t *testing.T, a, b string) {
	t.Helper()
	fa, err := safetensors.ReadFile(a)
	require.NoError(t, err)
	fb, err := safetensors.ReadFile(b)
	require.NoError(t, err)
	require.Equal(t, fa.Metadata, fb.Metadata)
	require.Len(t, fb.Tensors, len(fa.Tensors))
	for i, x := range fa.Tensors {
		y := fb.Tensors[i]
		require.Equal(t, x.Name, y.Name)
		require.Equal(t, x.DType, y.DType)
		require.Equal(t, x.Shape, y.Shape)
		require.True(t, bytes.Equal(x.Data, y.Data), x.Name)
	}
}

// damage rewrites a compressed safetensors file with tensor i's frame changed by f.
func damage(t *testing.T, packed, out string, i int, f func(frame []byte) []byte) string {
	t.Helper()
	file, err := safetensors.ReadFile(packed)
	require.NoError(t, err)
	ts := slices.Clone(file.Tensors)
	frame := f(slices.Clone(ts[i].Data))
	ts[i] = safetensors.Tensor{Name: ts[i].Name, DType: "U8", Shape: []int64{int64(len(frame))}, Data: frame}
	var b bytes.Buffer
	require.NoError(t, safetensors.Encode(&b, ts, file.Metadata))
	require.NoError(t, os.WriteFile(out, b.Bytes(), 0o644))
	return ts[i].Name
}

// A frame the decoder rejects fails the command with the file and tensor named, exit status 1, and no output:
// neither a new file nor a change to an existing one, although the tensors before it were already written.
func TestDecodeErrorLeavesNoOutput(t *testing.T) {
	dir := t.TempDir()
	packed := filepath.Join(dir, "packed.safetensors")
	require.NoError(t, runCompress([]string{fixture("kv_evaluation.safetensors"), packed}))
	file, err := safetensors.ReadFile(packed)
	require.NoError(t, err)
	late := len(file.Tensors) - 5 // the tensors before it decode to more than the output's buffer

	truncated := filepath.Join(dir, "truncated.safetensors")
	name := damage(t, packed, truncated, late, func(f []byte) []byte { return f[:len(f)-1] })
	badHeader := filepath.Join(dir, "badheader.safetensors")
	name2 := damage(t, packed, badHeader, 3, func(f []byte) []byte { f[10] ^= 1; return f })
	// A flipped payload bit leaves a well-formed frame: only its payload checksum tells.
	flipped := filepath.Join(dir, "flipped.safetensors")
	name3 := damage(t, packed, flipped, late, func(f []byte) []byte { f[len(f)-100] ^= 0x10; return f })

	out := filepath.Join(dir, "out.safetensors")
	for _, c := range []struct {
		in, tensor string
		want       error
	}{{truncated, name, codec.ErrTruncated}, {badHeader, name2, codec.ErrHeaderCRC}, {flipped, name3, codec.ErrChecksum}} {
		err := runDecompress([]string{c.in, out})
		require.ErrorIs(t, err, c.want)
		require.ErrorContains(t, err, c.in+": tensor "+c.tensor+": ")
		require.NoFileExists(t, out)

		writeFile(t, out, []byte("an earlier output"), 0o644)
		var stderr bytes.Buffer
		require.Equal(t, 1, mainStatus([]string{"decompress", c.in, out}, &stderr))
		require.Contains(t, stderr.String(), "splitzip decompress: "+c.in+": tensor "+c.tensor+": ")
		b, err := os.ReadFile(out)
		require.NoError(t, err)
		require.Equal(t, "an earlier output", string(b))
		require.NoError(t, os.Remove(out))
		require.Equal(t, []string{"badheader.safetensors", "flipped.safetensors", "packed.safetensors", "truncated.safetensors"}, dirNames(t, dir))
	}

	// A bare frame's decode error names the file and leaves no output either.
	raw := filepath.Join(dir, "raw.bin")
	writeFile(t, raw, make([]byte, 1000), 0o644)
	frame := filepath.Join(dir, "raw.sz")
	require.NoError(t, runCompress([]string{"-dtype", "bf16", raw, frame}))
	b, err := os.ReadFile(frame)
	require.NoError(t, err)
	writeFile(t, frame, b[:len(b)-1], 0o644)
	var stderr bytes.Buffer
	require.Equal(t, 1, mainStatus([]string{"decompress", frame, out}, &stderr))
	require.Contains(t, stderr.String(), "splitzip decompress: "+frame+": splitzip: truncated frame")
	require.NoFileExists(t, out)
}

func TestMainStatus(t *testing.T) {
	var stderr bytes.Buffer
	require.Equal(t, 0, mainStatus([]string{"help"}, &stderr))
	require.Contains(t, stderr.String(), "An input is recognised by its bytes, never by its name")
	require.Equal(t, 2, mainStatus(nil, io.Discard))
	require.Equal(t, 2, mainStatus([]string{"squash"}, io.Discard))
	require.Equal(t, 0, mainStatus([]string{"compress", "-h"}, io.Discard))
	require.Equal(t, 1, mainStatus([]string{"compress", "only-one"}, io.Discard))
}

// Every frame compress writes comes from an encoder built with fileEncoderOptions: the frames in its output
// are byte for byte those of such an encoder.
func TestCompressUsesFileEncoderOptions(t *testing.T) {
	dir := t.TempDir()
	packed := filepath.Join(dir, "packed.safetensors")
	require.NoError(t, runCompress([]string{fixture("kv_evaluation.safetensors"), packed}))
	orig, err := safetensors.ReadFile(fixture("kv_evaluation.safetensors"))
	require.NoError(t, err)
	got, err := safetensors.ReadFile(packed)
	require.NoError(t, err)
	enc, err := codec.NewEncoder(fileEncoderOptions()...)
	require.NoError(t, err)
	for i, x := range orig.Tensors[:4] {
		dt, err := codec.ParseDType(x.DType)
		require.NoError(t, err)
		want, err := enc.Encode(nil, x.Data, dt)
		require.NoError(t, err)
		require.True(t, bytes.Equal(want, got.Tensors[i].Data), x.Name)
	}
}

// Both modes round-trip the fixture bit for bit through files; the high-ratio mode's frames are smaller, and
// each mode refuses the other mode's table flag.
func TestCompressModes(t *testing.T) {
	dir := t.TempDir()
	in := fixture("kv_evaluation.safetensors")
	sizes := map[string]int64{}
	for _, mode := range []string{"fast", "high-ratio"} {
		packed := filepath.Join(dir, mode+".safetensors")
		require.NoError(t, runCompress([]string{"-mode", mode, in, packed}))
		back := filepath.Join(dir, mode+"-back.safetensors")
		require.NoError(t, runDecompress([]string{packed, back}))
		requireSameTensors(t, in, back)
		st, err := os.Stat(packed)
		require.NoError(t, err)
		sizes[mode] = st.Size()
	}
	require.Less(t, float64(sizes["high-ratio"]), float64(sizes["fast"])/1.08, "high-ratio output against fast")

	table := filepath.Join(dir, "table.json")
	require.NoError(t, os.WriteFile(table, []byte(`{"dtype":"bf16","lengths":[1]}`), 0o644))
	require.ErrorContains(t, runCompress([]string{"-mode", "fast", "-table", table, in, filepath.Join(dir, "x.safetensors")}), "-table is the high-ratio mode's")
	require.ErrorContains(t, runCompress([]string{"-mode", "high-ratio", "-codebook", table, in, filepath.Join(dir, "y.safetensors")}), "-codebook is the fast mode's")
	require.ErrorIs(t, runCompress([]string{"-mode", "fastest", in, filepath.Join(dir, "z.safetensors")}), codec.ErrOption)
}
