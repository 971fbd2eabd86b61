package kernels

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/splitzip/splitzip/codec"
)

// The kernels' CUDA sources (the high-ratio mode's entropy.cuh, the fast mode's encoders and decoder, the CRC
// and block-copy kernels), compiled for the host against kernels/emu (a CUDA shim and a host device.cuh) and checked against the
// CPU codec, so that their logic is tested on machines without a GPU. See kernels/emu/README.md for what this
// does and does not catch.

// emuPatch is a textual edit that a kernel source needs to compile on the host, where it has inline PTX or
// CUDA-only syntax. Each must match exactly once: a source that changed under it fails the test instead of
// testing stale code.
type emuPatch struct{ file, name, old, new string }

var emuPatches = []emuPatch{
	{"entropy.cuh", "lanemask_lt (inline PTX)", `asm("mov.u32 %0, %%lanemask_lt;" : "=r"(m));`, `m = (1u << emu_lane) - 1;`},
	{"encode_stream.cuh", "ctaid (inline PTX)", `asm volatile("mov.u32 %0, %%ctaid.x;" : "=r"(b));`, `b = blockIdx.x;`},
}

// emuMutateEnv names an extra edit of a kernel source, "OLD=>NEW" for entropy.cuh or "FILE:OLD=>NEW" for another
// (OLD must match once), for checking that a broken kernel fails these tests; see kernels/emu/README.md.
const emuMutateEnv = "SPLITZIP_EMU_MUTATE"

// emuCard is the card the emulated launches are planned for: 132 SMs, an H100's or H200's.
var emuCard = card{sms: 132}

// emuHarness is the built kernels/emu/harness.cpp.
type emuHarness struct{ bin string }

// emuCompiler returns a C++20 compiler: $CXX, else g++ or clang++ from PATH; "" when none is there.
func emuCompiler(t *testing.T, dir string) string {
	t.Helper()
	probe := filepath.Join(dir, "probe.cc")
	require.NoError(t, os.WriteFile(probe, []byte("#if __cplusplus < 202002L\n#error C++20 needed\n#endif\nint main() {}\n"), 0o644))
	if cxx := os.Getenv("CXX"); cxx != "" {
		out, err := exec.Command(cxx, "-std=c++20", "-fsyntax-only", probe).CombinedOutput()
		require.NoError(t, err, "CXX=%s does not compile C++20: %s", cxx, out)
		return cxx
	}
	for _, name := range []string{"g++", "clang++"} {
		path, err := exec.LookPath(name)
		if err != nil {
			continue
		}
		if out, err := exec.Command(path, "-std=c++20", "-fsyntax-only", probe).CombinedOutput(); err != nil {
			t.Logf("%s does not compile C++20: %v %s", path, err, out)
			continue
		}
		return path
	}
	return ""
}

// emuSanitizers returns the sanitizer flags cxx builds and runs a program with here: AddressSanitizer and
// UndefinedBehaviorSanitizer (which reports misaligned vector accesses) where it can, else what it can.
func emuSanitizers(t *testing.T, cxx, dir string) []string {
	t.Helper()
	src := filepath.Join(dir, "san.cc")
	require.NoError(t, os.WriteFile(src, []byte("#include <vector>\nint main() { std::vector<int> v(3); return v[1]; }\n"), 0o644))
	for _, flags := range [][]string{
		{"-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"},
		{"-fsanitize=address"},
	} {
		bin := filepath.Join(dir, "san")
		if out, err := exec.Command(cxx, append(append([]string{"-std=c++20"}, flags...), src, "-o", bin)...).CombinedOutput(); err != nil {
			t.Logf("%s %v: %v %s", cxx, flags, err, out)
			continue
		}
		c := exec.Command(bin)
		c.Env = emuEnv()
		if out, err := c.CombinedOutput(); err != nil {
			t.Logf("%s %v builds a program that does not run here: %v %s", cxx, flags, err, out)
			continue
		}
		return flags
	}
	t.Logf("%s: no sanitizer runs here; the harness is built without", cxx)
	return nil
}

func emuEnv() []string {
	return append(os.Environ(), "ASAN_OPTIONS=detect_leaks=0", "UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1")
}

// emuSources writes the kernel sources the harness compiles into dir: kernels/*.cuh as they are in the tree, but
// device.cuh replaced by kernels/emu/device.cuh and the sources patched (emuPatches, then emuMutateEnv's edit).
func emuSources(t *testing.T, dir string) {
	t.Helper()
	cuh, err := filepath.Glob("*.cuh")
	require.NoError(t, err)
	require.Contains(t, cuh, "entropy.cuh")
	patches := slices.Clone(emuPatches)
	if m := os.Getenv(emuMutateEnv); m != "" {
		file, edit := "entropy.cuh", m
		if f, rest, ok := strings.Cut(m, ":"); ok && strings.HasSuffix(f, ".cuh") {
			file, edit = f, rest
		}
		old, repl, ok := strings.Cut(edit, "=>")
		require.True(t, ok, "%s=%q: want OLD=>NEW or FILE:OLD=>NEW", emuMutateEnv, m)
		patches = append(patches, emuPatch{file, emuMutateEnv, old, repl})
		t.Logf("%s: %s with %q replaced by %q", emuMutateEnv, file, old, repl)
	}
	for _, name := range cuh {
		src := name
		if name == "device.cuh" {
			src = filepath.Join("emu", "device.cuh")
		}
		b, err := os.ReadFile(src)
		require.NoError(t, err)
		for _, p := range patches {
			if p.file != name {
				continue
			}
			n := bytes.Count(b, []byte(p.old))
			require.Equal(t, 1, n, "kernels/emu: patch %q no longer applies to kernels/%s (%d matches of %q, want 1): "+
				"the source changed under it; update emuPatches in kernels/emu_test.go", p.name, name, n, p.old)
			b = bytes.Replace(b, []byte(p.old), []byte(p.new), 1)
		}
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), b, 0o644))
	}
}

// buildEmuHarness compiles kernels/emu/harness.cpp with the current kernel sources into a temporary folder. It
// skips the test when no C++20 compiler is on PATH.
func buildEmuHarness(t *testing.T) *emuHarness {
	t.Helper()
	dir := t.TempDir()
	cxx := emuCompiler(t, dir)
	if cxx == "" {
		t.Skip("no C++20 compiler (g++ or clang++) on PATH: the host emulation of the high-ratio kernels needs one")
	}
	san := emuSanitizers(t, cxx, dir)
	src := filepath.Join(dir, "src")
	require.NoError(t, os.Mkdir(src, 0o755))
	emuSources(t, src)
	shim, err := filepath.Abs(filepath.Join("emu", "shim.h"))
	require.NoError(t, err)
	harness, err := filepath.Abs(filepath.Join("emu", "harness.cpp"))
	require.NoError(t, err)
	bin := filepath.Join(dir, "harness")
	args := append([]string{"-std=c++20", "-O1", "-g"}, san...)
	args = append(args, "-include", shim, "-I", src, harness, "-o", bin, "-ldl")
	out, err := exec.Command(cxx, args...).CombinedOutput()
	require.NoError(t, err, "building the emulation harness: %s %s\n%s", cxx, strings.Join(args, " "), out)
	t.Logf("harness built: %s %s", cxx, strings.Join(san, " "))
	return &emuHarness{bin: bin}
}

// emuRunTimeout bounds one harness run (the largest take about 10 s under the sanitizers): a kernel that polls
// a word no thread will write spins until the shim's livelock check, which under AddressSanitizer can take
// longer than a CI job has, so the run is killed and the test fails instead.
const emuRunTimeout = 3 * time.Minute

// run runs the harness and returns what it printed.
func (h *emuHarness) run(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), emuRunTimeout)
	defer cancel()
	c := exec.CommandContext(ctx, h.bin, args...)
	c.Env = emuEnv()
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	err := c.Run()
	if ctx.Err() != nil {
		require.Failf(t, "harness timed out", "harness %s ran past %v: a kernel waiting on a word no thread writes, or "+
			"on lanes it assumes run in step?\n%s", strings.Join(args, " "), emuRunTimeout, stderr.String())
	}
	require.NoError(t, err, "harness %s:\n%s", strings.Join(args, " "), stderr.String())
	return strings.TrimSpace(stdout.String())
}

func emuDTypeName(dt codec.DType) string {
	switch dt {
	case codec.FP8E4M3:
		return "e4m3"
	case codec.FP8E5M2:
		return "e5m2"
	}
	return "bf16"
}

// emuCase is one dtype's inputs and files.
type emuCase struct {
	h   *emuHarness
	dt  codec.DType
	dir string
	cd  card // the card whose launches are planned
}

func (c *emuCase) file(t *testing.T, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(c.dir, name)
	require.NoError(t, os.WriteFile(p, b, 0o644))
	return p
}

func (c *emuCase) read(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.dir, name))
	require.NoError(t, err)
	return b
}

// encode runs the emulated encoder (hr_encode, then hr_raw) over src with the code table tab.
func (c *emuCase) encode(t *testing.T, src, tab []byte) []byte {
	t.Helper()
	n := uint64(len(src) / c.dt.Size())
	c.h.run(t, "enc", emuDTypeName(c.dt), c.file(t, "in", src), c.file(t, "table", tab), fmt.Sprint(c.cd.hrRawGrid(n)), filepath.Join(c.dir, "frame"))
	return c.read(t, "frame")
}

// decode runs the emulated decoder over frame (frameCap bytes of it readable) into outLen bytes.
func (c *emuCase) decode(t *testing.T, frame []byte, frameCap, outLen int) ([]byte, uint32) {
	t.Helper()
	out := c.h.run(t, "dec", emuDTypeName(c.dt), c.file(t, "frame", frame), strconv.Itoa(frameCap), strconv.Itoa(outLen), filepath.Join(c.dir, "out"))
	st, err := strconv.ParseUint(out, 10, 32)
	require.NoError(t, err, "harness status %q", out)
	return c.read(t, "out"), uint32(st)
}

func emuFirstDiff(a, b []byte) int {
	i := 0
	for i < min(len(a), len(b)) && a[i] == b[i] {
		i++
	}
	return i
}

// The kind of frame a dense case must give, so that the cases keep covering both kinds.
const (
	emuAny = iota
	emuEntropy
	emuRaw
)

// dense checks one input: the emulated encoder's frame is the CPU encoder's byte for byte (same code table), the
// CPU decodes it bit-exactly, and the emulated decoder decodes the CPU's frame bit-exactly.
func (c *emuCase) dense(t *testing.T, src []byte, tab *codec.CodeTable, tabBytes []byte, kind int) {
	want := cpuEncodeHROf(t, c.dt, src, tab)
	hdr, err := codec.ParseHeader(want)
	require.NoError(t, err)
	switch kind {
	case emuEntropy:
		require.True(t, hdr.Entropy, "the CPU encoder made a raw frame: the case no longer covers the coded path")
	case emuRaw:
		require.True(t, hdr.Raw, "the CPU encoder made a coded frame: the case no longer covers the raw path")
	}
	got := c.encode(t, src, tabBytes)
	assert.True(t, bytes.Equal(want, got), "emulated frame differs from the CPU's: lengths %d/%d, first difference at byte %d",
		len(got), len(want), emuFirstDiff(want, got))
	dec, err := codec.NewDecoder()
	require.NoError(t, err)
	back, _, err := dec.Decode(nil, got)
	if assert.NoError(t, err, "CPU decode of the emulated frame") {
		assert.True(t, bytes.Equal(src, back), "CPU decode of the emulated frame: first difference at byte %d", emuFirstDiff(src, back))
	}
	out, st := c.decode(t, want, len(want), len(src))
	assert.Equal(t, uint32(StatusOK), st, "emulated decode of the CPU frame")
	assert.True(t, bytes.Equal(src, out), "emulated decode of the CPU frame: first difference at byte %d", emuFirstDiff(src, out))
}

// rejects damages an entropy frame of src in the ways TestHighRatioDecodeRejects does and checks the emulated
// decoder's status for each (and that the CPU decoder refuses those it can be given).
func (c *emuCase) rejects(t *testing.T, src []byte, tab *codec.CodeTable) {
	frame := cpuEncodeHROf(t, c.dt, src, tab)
	h, err := codec.ParseHeader(frame)
	require.NoError(t, err)
	require.True(t, h.Entropy, "rejects needs an entropy frame")
	lay := h.Layout()
	dt := c.dt
	try := func(name string, bad []byte, frameCap, outLen int, want uint32) {
		t.Run(name, func(t *testing.T) {
			_, st := c.decode(t, bad, frameCap, outLen)
			assert.Equal(t, want, st, "emulated decoder's status")
			if frameCap == len(bad) && outLen == len(src) {
				dec, err := codec.NewDecoder()
				require.NoError(t, err)
				_, _, err = dec.Decode(nil, bad)
				assert.Error(t, err, "the CPU decoder accepts it")
			}
		})
	}
	try("truncated", frame, len(frame)-1, len(src), StatusTruncated)
	bad := bytes.Clone(frame)
	bad[16] ^= 1 // a header word, its checksum left as it was
	try("header checksum", bad, len(bad), len(src), StatusBadCRC)
	try("short destination", frame, len(frame), len(src)-dt.Size(), StatusSizeMismatch)
	bad = bytes.Clone(frame)
	binary.LittleEndian.PutUint32(bad[lay.Table+4:], uint32(h.CodesLen+1))
	try("chunk entry past the streams", bad, len(bad), len(src), StatusCorrupt)
	bad = bytes.Clone(frame)
	binary.LittleEndian.PutUint32(bad[lay.Table+4:], binary.LittleEndian.Uint32(frame[lay.Table+4:])-1)
	try("chunk boundary moved", bad, len(bad), len(src), StatusCorrupt)
	bad = bytes.Clone(frame)
	bad[lay.Codebook+1] = byte(1 << dt.ExponentBits()) // hi past the exponents
	try("table hi past the exponents", bad, len(bad), len(src), StatusCorrupt)
	bad = bytes.Clone(frame)
	bad[lay.Codebook+2] |= 0x0F // ESC's code length 15
	try("table length 15", bad, len(bad), len(src), StatusCorrupt)
	bad = bytes.Clone(frame)
	bad[lay.Codebook+2] ^= 0x10 // exponent lo's code length
	try("table length changed", bad, len(bad), len(src), StatusCorrupt)
	// Every symbol's length set to l (ESC's and lo..hi's nibbles; the padding nibble stays zero).
	allLengths := func(l byte) []byte {
		bad := bytes.Clone(frame)
		nibbles := int(frame[lay.Codebook+1]-frame[lay.Codebook]) + 2
		for k := range nibbles {
			at := lay.Codebook + 2 + uint64(k/2)
			bad[at] = bad[at]&^(0x0F<<(4*(k&1))) | l<<(4*(k&1))
		}
		return bad
	}
	bad = allLengths(1)
	try("table oversubscribed", bad, len(bad), len(src), StatusCorrupt)
	bad = allLengths(0)
	try("table codes nothing", bad, len(bad), len(src), StatusCorrupt)
	// A flipped padding bit: near the end of chunk 0's stream (the lanes' last bits, and their padding), a bit
	// whose flip the CPU decoder rejects as padding and after which every element still decodes as before.
	t.Run("nonzero padding", func(t *testing.T) {
		chunk1 := uint64(binary.LittleEndian.Uint32(frame[lay.Table+4:]))
		for i := uint64(1); i <= 16; i++ {
			for b := 0; b < 8; b++ {
				bad := bytes.Clone(frame)
				bad[lay.Codes+chunk1-i] ^= 1 << b
				dec, err := codec.NewDecoder()
				require.NoError(t, err)
				if _, _, err = dec.Decode(nil, bad); err == nil || !strings.Contains(err.Error(), "padding") {
					continue
				}
				out, st := c.decode(t, bad, len(bad), len(src))
				if !bytes.Equal(out, src) {
					continue // a code bit: the padding error came later
				}
				assert.Equal(t, uint32(StatusCorrupt), st, "emulated decoder's status")
				return
			}
		}
		t.Fatal("no padding bit in the last 16 bytes of chunk 0's stream")
	})
	// A stream that reaches a prefix no code starts: the table with one code a bit longer leaves the all-ones
	// prefix unused (canonical codes fill the code space from 0), and chunk 0's first byte is lane 0's first.
	lengths := slices.Clone(tab.Lengths)
	longest := -1
	for s, l := range lengths {
		if l > 0 && l < 8 && (longest < 0 || l >= lengths[longest]) {
			longest = s
		}
	}
	require.GreaterOrEqual(t, longest, 0, "no code shorter than 8 bits to lengthen")
	lengths[longest]++
	slack, err := codec.NewCodeTable(dt, lengths)
	require.NoError(t, err)
	bad = cpuEncodeHROf(t, dt, src, slack)
	hs, err := codec.ParseHeader(bad)
	require.NoError(t, err)
	require.True(t, hs.Entropy, "the frame under the lengthened table went raw")
	bad[hs.Layout().Codes] = 0xFF
	try("unused prefix", bad, len(bad), len(src), StatusCorrupt)
	bad = bytes.Clone(frame)
	bad[7]++ // codeBits
	try("codeBits", reseal(bad), len(bad), len(src), StatusCorrupt)
	bad = bytes.Clone(frame)
	bad[25]++ // residualBits
	try("residualBits", reseal(bad), len(bad), len(src), StatusCorrupt)
	bad = bytes.Clone(frame)
	bad[5] = byte(codec.BF16)
	if dt == codec.BF16 {
		bad[5] = byte(codec.FP8E4M3)
	}
	try("other dtype", reseal(bad), len(bad), len(src), StatusUnsupported)
}

// kv checks the paged kernels: src scattered as blocks of blockElems elements into one layer's V cache (K and V
// interleaved per block, ids shuffled) is encoded straight from there into the CPU's frame for src, and that
// frame decoded into a cache laid out the other way (K, then V) gives src back, nothing else of it written.
func (c *emuCase) kv(t *testing.T, src []byte, blockElems int) {
	tab, tabBytes := hrTableOf(t, c.dt, src)
	want := cpuEncodeHROf(t, c.dt, src, tab)
	n := uint64(len(src) / c.dt.Size())
	st := c.h.run(t, "kv", emuDTypeName(c.dt), c.file(t, "in", src), c.file(t, "table", tabBytes), strconv.Itoa(blockElems),
		fmt.Sprint(c.cd.hrRawGrid(n)), filepath.Join(c.dir, "frame"), filepath.Join(c.dir, "rt"))
	got, rt := c.read(t, "frame"), c.read(t, "rt")
	assert.True(t, bytes.Equal(want, got), "emulated paged frame differs from the CPU's: lengths %d/%d, first difference at byte %d",
		len(got), len(want), emuFirstDiff(want, got))
	assert.Equal(t, "0", st, "emulated paged decode's status")
	assert.True(t, bytes.Equal(src, rt), "paged round trip: first difference at byte %d", emuFirstDiff(src, rt))
}

// TestEmuHighRatio runs the high-ratio kernels' source on the host (kernels/emu) for bf16, fp8_e4m3 and
// fp8_e5m2: frames byte-identical to the CPU encoder's given the same code table, bit-exact decodes both ways,
// paged K/V round trips, and the decoder's statuses for damaged frames. The harness runs under AddressSanitizer
// (and UndefinedBehaviorSanitizer) where the compiler has them, so that an access past any buffer fails it.
func TestEmuHighRatio(t *testing.T) {
	h := buildEmuHarness(t)
	f := realKV(t)
	for _, dt := range []codec.DType{codec.BF16, codec.FP8E4M3, codec.FP8E5M2} {
		t.Run(emuDTypeName(dt), func(t *testing.T) {
			t.Parallel()
			c := &emuCase{h: h, dt: dt, dir: t.TempDir(), cd: emuCard}
			q := concat(f)
			if dt != codec.BF16 {
				q = quantizeFP8(t, f, dt)
			}
			sz := dt.Size()
			elems := func(n int) []byte { // n elements of the fixture, repeated as needed
				b := make([]byte, n*sz)
				for i := 0; i < len(b); i += len(q) {
					copy(b[i:], q)
				}
				return b
			}
			r := rand.New(rand.NewPCG(1, 2))
			tab, tabBytes := hrTableOf(t, dt, q)
			partTab, partTabBytes := hrTableOf(t, dt, q[:4096*sz])

			for _, n := range []int{0, 1, 7, 31, 33, 100, 8191, 8192, 8193, 16383, 16384, 16385, 50001} {
				kind := emuEntropy
				if n <= 100 {
					kind = emuRaw // too small for the table and chunk offsets to pay
				}
				t.Run(fmt.Sprintf("fixture %d", n), func(t *testing.T) { c.dense(t, elems(n), tab, tabBytes, kind) })
			}
			t.Run("whole fixture", func(t *testing.T) { c.dense(t, q, tab, tabBytes, emuEntropy) })
			if dt == codec.BF16 {
				// A frame of 16,384-element chunks, the size encoders wrote before (the fixture's first 20,001
				// elements): the launch, planned for the chunks encoders write now, has warps past its end.
				t.Run("frame of 16,384-element chunks", func(t *testing.T) {
					frame, err := os.ReadFile(filepath.Join("..", "tests", "data", "hr_chunk14.sz"))
					require.NoError(t, err)
					h, err := codec.ParseHeader(frame)
					require.NoError(t, err)
					require.Equal(t, uint8(14), h.ChunkLog2)
					out, st := c.decode(t, frame, len(frame), 2*20001)
					assert.Equal(t, uint32(StatusOK), st)
					assert.True(t, bytes.Equal(elems(20001), out), "first difference at byte %d", emuFirstDiff(elems(20001), out))
				})
			}
			// Escape-heavy: every 16th element gets a random exponent; coded with a table of the first 4,096
			// elements (escapes) and with its own.
			esc := elems(70_001)
			for i := 0; i < len(esc)/sz; i += 16 {
				x := byte(r.Uint32())
				if dt == codec.BF16 {
					esc[2*i+1] = esc[2*i+1]&0x80 | x&0x7F
				} else {
					esc[i] = x
				}
			}
			t.Run("escapes", func(t *testing.T) {
				h, err := codec.ParseHeader(cpuEncodeHROf(t, dt, esc, partTab))
				require.NoError(t, err)
				require.True(t, h.Entropy && h.Escapes > 0, "the case no longer has escapes")
				c.dense(t, esc, partTab, partTabBytes, emuEntropy)
			})
			// An escape burst: 6,000 elements in a row with random exponents, mostly escapes under the
			// fixture's table, so that some of the decoder's 16-step groups take far more stream bytes than the
			// copies ahead of them bring (a compressible frame all the same).
			burst := elems(200_000)
			for i := 50_000; i < 56_000; i++ {
				x := byte(r.Uint32())
				if dt == codec.BF16 {
					burst[2*i+1] = burst[2*i+1]&0x80 | x&0x7F
				} else {
					burst[i] = x
				}
			}
			t.Run("escape burst", func(t *testing.T) { c.dense(t, burst, tab, tabBytes, emuEntropy) })
			escTab, escTabBytes := hrTableOf(t, dt, esc)
			t.Run("escapes, own table", func(t *testing.T) { c.dense(t, esc, escTab, escTabBytes, emuEntropy) })
			zero := make([]byte, 40_003*sz)
			zeroTab, zeroTabBytes := hrTableOf(t, dt, zero)
			t.Run("all zero", func(t *testing.T) { c.dense(t, zero, zeroTab, zeroTabBytes, emuEntropy) })
			t.Run("all zero, fixture table", func(t *testing.T) { c.dense(t, zero, tab, tabBytes, emuAny) })
			// A table in device memory is not checked by the host: one without ESC that codes only exponents 0
			// and 1, over zeros with one element whose exponent has no code. The CPU encoder refuses such a table;
			// the kernel's count finds the element (kHRNoCode) and writes a raw frame.
			t.Run("no ESC, an exponent without a code", func(t *testing.T) {
				lengths := make([]uint8, 1<<dt.ExponentBits()+1)
				lengths[0], lengths[1] = 1, 1
				noEsc, err := codec.NewCodeTable(dt, lengths)
				require.NoError(t, err)
				tab, err := noEsc.MarshalBinary()
				require.NoError(t, err)
				src := make([]byte, 30_000*sz)
				src[21_111*sz+sz-1] = 0x40 // exponent 0x80 (bf16), 8 (e4m3), 16 (e5m2)
				got := c.encode(t, src, tab)
				h, err := codec.ParseHeader(got)
				require.NoError(t, err)
				require.True(t, h.Raw, "a frame with an uncoded exponent")
				assert.True(t, bytes.Equal(src, got[headerSize:]), "the raw frame's payload")
				src[21_111*sz+sz-1] = 0 // every exponent coded: an entropy frame
				h, err = codec.ParseHeader(c.encode(t, src, tab))
				require.NoError(t, err)
				assert.True(t, h.Entropy, "a frame whose exponents all have codes")
			})
			rnd := make([]byte, 30_011*sz)
			for i := range rnd {
				rnd[i] = byte(r.Uint32())
			}
			rndTab, rndTabBytes := hrTableOf(t, dt, rnd)
			t.Run("random bytes", func(t *testing.T) { c.dense(t, rnd, rndTab, rndTabBytes, emuRaw) })
			t.Run("random bytes, fixture table", func(t *testing.T) { c.dense(t, rnd, tab, tabBytes, emuRaw) })
			// On a card of one SM the raw copy's single block strides over every unit.
			one := &emuCase{h: h, dt: dt, dir: t.TempDir(), cd: card{sms: 1}}
			t.Run("random bytes on one SM", func(t *testing.T) { one.dense(t, rnd, rndTab, rndTabBytes, emuRaw) })
			t.Run("rejects", func(t *testing.T) { c.rejects(t, elems(40_000), tab) })
			for _, k := range []struct {
				name       string
				src        []byte
				blockElems int
			}{
				{"7 blocks of 2048", elems(7 * 2048), 2048},
				{"3 blocks of 8200", elems(3 * 8200), 8200},
				{"5 blocks of 24", elems(5 * 24), 24},
				{"random, 4 blocks of 2048", rnd[:4*2048*sz], 2048},
			} {
				t.Run("paged "+k.name, func(t *testing.T) { c.kv(t, k.src, k.blockElems) })
			}
			t.Run("paged random, 4 blocks of 2048 on one SM", func(t *testing.T) { one.kv(t, rnd[:4*2048*sz], 2048) })
		})
	}
}

// TestEmuCRC32C runs crc.cuh's kernel on the host (kernels/emu) and compares its CRC-32C with hash/crc32's.
func TestEmuCRC32C(t *testing.T) {
	h := buildEmuHarness(t)
	dir := t.TempDir()
	for _, b := range crcInputs(rand.New(rand.NewPCG(5, 6))) {
		in := filepath.Join(dir, "in")
		require.NoError(t, os.WriteFile(in, b, 0o644))
		got, err := strconv.ParseUint(h.run(t, "crc", in), 10, 32)
		require.NoError(t, err)
		assert.Equal(t, crc32.Checksum(b, castagnoli), uint32(got), "%d bytes", len(b))
	}
}

// TestEmuBlockCopy runs blocks.cuh's gather and scatter on the host (kernels/emu): bf16 and fp8 block sizes,
// blocks packed and strided (FlashInfer's K and V interleaved), one block and more segments than the grid.
func TestEmuBlockCopy(t *testing.T) {
	h := buildEmuHarness(t)
	for _, c := range []struct{ layers, blocks, seg, stride int }{
		{1, 1, 16, 16},
		{2, 7, 32768, 32768},
		{3, 5, 16384, 32768},
		{1, 13, 4096 + 16, 3 * (4096 + 16)},
	} {
		out := h.run(t, "blocks", strconv.Itoa(c.layers), strconv.Itoa(c.blocks), strconv.Itoa(c.seg), strconv.Itoa(c.stride))
		assert.Equal(t, "ok", strings.TrimSpace(out), "%+v", c)
	}
}

// TestEmuFastMode runs the fast mode's kernels (format v1: the tile and streaming encoders, the raw fallback
// kernel, the tile decoder) on the host, launched as planEncode and DecodeAsync launch them: frames
// byte-identical to the CPU encoder's, twice on one workspace that each call leaves ready for the next, and
// bit-exact decodes; real KV, escape-heavy and incompressible inputs, sizes around chunk boundaries.
func TestEmuFastMode(t *testing.T) {
	h := buildEmuHarness(t)
	cb := defaultBook(t)
	words, err := codebookWords(cb)
	require.NoError(t, err)
	r := rand.New(rand.NewPCG(9, 9))
	kv := concat(realKV(t))
	data := []input{
		{"real KV", kv}, {"real KV, odd", kv[:2*12345]},
		{"escapes 15 %", withEscapes(r, 100003, 0.15, cb)}, {"escapes 0.1 %", withEscapes(r, 3*4096+5, 0.001, cb)},
		{"random bits", randomBits(r, 5000)}, {"escape-heavy chunks", heavyChunks(r, 100*4096+77, 5, 0.2, cb)},
		{"escape-dense units", denseUnits(r, 40*4096+3, 29, cb)},
		// More chunks than the raw fallback kernel has warps (emuCard.rawBlocks() × 8), a third of them past their
		// parked slots: warps that place a second chunk, slots or re-read, after the first.
		{"escape-heavy chunks, 5,000 chunks", heavyChunks(r, 5000*4096+11, 3, 0.2, cb)},
	}
	for _, n := range []int{0, 1, 9, 4095, 4096, 4097, 8192 + 3} {
		data = append(data, input{fmt.Sprintf("randn %d", n), randn(r, n, 1)})
	}
	// Each encoder on a card of an H100's or H200's 132 SMs, and the streaming one also on 20 (80 raw fallback
	// blocks after it, each following the decision count and placing deferred escapes).
	encoders := []struct {
		name  string
		small uint64 // inputs below it take the tile encoder (planEncode)
		card  card
	}{{"tile", math.MaxUint64, emuCard}, {"streaming", 0, emuCard}, {"streaming on 20 SMs", 0, card{sms: 20}}}
	// planArgs are the harness's CB STREAM GRID RAWGRID RAWMODE CHUNKS arguments for p as planEncode planned it.
	planArgs := func(p encParams, pl encodeLaunch) []string {
		stream := "0"
		if pl.stream {
			stream = "1"
		}
		return []string{fmt.Sprintf("%08x%08x%08x%08x", words[0], words[1], words[2], words[3]), stream,
			fmt.Sprint(pl.grid), fmt.Sprint(pl.rawGrid), fmt.Sprint(p.rawMode), fmt.Sprint(p.chunks)}
	}
	for _, enc := range encoders {
		for _, in := range data {
			t.Run(enc.name+"/"+in.name, func(t *testing.T) {
				t.Parallel()
				dir := t.TempDir()
				file := func(name string) string { return filepath.Join(dir, name) }
				require.NoError(t, os.WriteFile(file("in"), in.data, 0o644))
				n := uint64(len(in.data) / 2)
				p := encParams{n: uint32(n), frames: 1, chunks: uint32(chunksOf(n)), codebook: words}
				pl := planEncode(&p, enc.small, &tileShape, &streamShape, enc.card)
				h.run(t, slices.Concat([]string{"fenc", file("in")}, planArgs(p, pl),
					[]string{fmt.Sprint(EncodeWorkspaceSize(len(in.data))), "2", file("frame"), file("ws")})...)
				got, err := os.ReadFile(file("frame"))
				require.NoError(t, err)
				want := cpuEncode(t, in.data, cb)
				require.True(t, bytes.Equal(want, got), "emulated frame differs from the CPU's: lengths %d/%d, first difference at byte %d",
					len(got), len(want), emuFirstDiff(want, got))
				ws, err := os.ReadFile(file("ws"))
				require.NoError(t, err)
				decided := requireReadyWorkspaceBytes(t, ws, enc.card.rawBlocks())
				if pl.stream && pl.grid > 0 {
					// The decision word counts frames decided (low half) and those that needed the raw fallback
					// kernel (high half).
					late := 0
					if lateFrame(t, got) {
						late = 2
					}
					assert.EqualValues(t, 2, decided&0xFFFFFFFF, "the streaming encoder's frames decided: one a call")
					assert.EqualValues(t, late, decided>>32, "the streaming encoder's frames for the raw fallback kernel")
				}

				st := h.run(t, "fdec", file("frame"), fmt.Sprint(len(got)), fmt.Sprint(len(in.data)), file("out"))
				assert.Equal(t, "0", st, "the emulated decoder's status")
				out, err := os.ReadFile(file("out"))
				require.NoError(t, err)
				assert.True(t, bytes.Equal(in.data, out), "emulated decode differs at byte %d", emuFirstDiff(in.data, out))
			})
		}
	}
	// Straight from a paged cache: a frame per layer, gathered by the encoders and scattered by the decoder. Real
	// KV, and KV with as many escapes as a chunk has parked slots, whose groups leave their escapes to the raw
	// fallback kernel (about half the chunks past their slots). Blocks of the fixture's 16 tokens (3,072
	// elements) put every 4,096-element chunk across two; blocks of 6,144 put every other chunk inside one, and
	// of 8,192 every chunk, which the streaming encoder then reads from its base address (tile_base; with the
	// fixture's blocks only a frame's short last chunk can lie in one).
	const layers, fixtureBlock = 3, 16 * 3 * 64
	heavy := withEscapes(r, layers*2*40*fixtureBlock, float64(streamSlots)/4096, cb)
	for _, enc := range encoders {
		for _, pc := range []struct {
			kv         string
			nb         int
			blockElems int
			data       []byte
		}{{"real KV", 5, fixtureBlock, kv}, {"real KV", 40, fixtureBlock, kv}, {"escapes 12.5 %", 40, fixtureBlock, heavy},
			{"real KV", 6, 6144, kv}, {"real KV", 4, 8192, kv}} {
			blockElems := pc.blockElems
			t.Run(fmt.Sprintf("paged/%s/%s/%d-blocks-of-%d", enc.name, pc.kv, pc.nb, blockElems), func(t *testing.T) {
				t.Parallel()
				dir := t.TempDir()
				file := func(name string) string { return filepath.Join(dir, name) }
				n := 2 * pc.nb * blockElems // elements per layer's frame
				in := pc.data[:2*layers*n]
				require.NoError(t, os.WriteFile(file("in"), in, 0o644))
				p := encParams{n: uint32(n), frames: layers, chunks: uint32(chunksOf(uint64(n))), codebook: words}
				pl := planEncode(&p, enc.small, &tileShape, &streamShape, enc.card)
				stride := align16(uint64(MaxEncodedLen(2 * n)))
				st := h.run(t, slices.Concat([]string{"fkv", file("in")}, planArgs(p, pl),
					[]string{fmt.Sprint(workspaceSize(layers, uint64(p.chunks))), fmt.Sprint(stride), fmt.Sprint(layers),
						fmt.Sprint(blockElems), file("frame"), file("rt")})...)
				assert.Equal(t, "0", st, "the emulated decoder's status")
				for l := range layers {
					got, err := os.ReadFile(fmt.Sprintf("%s.%d", file("frame"), l))
					require.NoError(t, err)
					want := cpuEncode(t, in[2*l*n:2*(l+1)*n], cb)
					require.True(t, bytes.Equal(want, got), "layer %d: emulated frame differs from the CPU's at byte %d", l, emuFirstDiff(want, got))
				}
				rt, err := os.ReadFile(file("rt"))
				require.NoError(t, err)
				assert.True(t, bytes.Equal(in, rt), "decode-scatter differs at byte %d", emuFirstDiff(in, rt))
			})
		}
	}
	// A damaged frame: the decoder says so rather than writing garbage silently.
	t.Run("damaged", func(t *testing.T) {
		dir := t.TempDir()
		frame := cpuEncode(t, kv[:2*20000], cb)
		frame[len(frame)-3] ^= 0xFF // an escape's position past its chunk, or a residual: either way not the input
		bad := filepath.Join(dir, "frame")
		require.NoError(t, os.WriteFile(bad, frame[:len(frame)-100], 0o644))
		st := h.run(t, "fdec", bad, fmt.Sprint(len(frame)-100), fmt.Sprint(2*20000), filepath.Join(dir, "out"))
		assert.NotEqual(t, "0", st, "a truncated frame")
		// Escapes past their chunk's end or out of order, which the CPU decoder rejects too.
		in := withEscapes(rand.New(rand.NewPCG(3, 3)), 3*4096, 0.01, cb)
		good := cpuEncode(t, in, cb)
		hdr, err := codec.ParseHeader(good)
		require.NoError(t, err)
		require.Greater(t, hdr.Escapes, uint64(2))
		esc := escapesOffset(hdr.Elements)
		for name, damage := range map[string]func(f []byte){
			"position past the chunk": func(f []byte) { binary.LittleEndian.PutUint16(f[esc:], 4096) },
			"positions out of order":  func(f []byte) { copy(f[esc+3:esc+5], f[esc:esc+2]) },
		} {
			frame := bytes.Clone(good)
			damage(frame)
			dec, err := codec.NewDecoder()
			require.NoError(t, err)
			_, _, err = dec.Decode(nil, frame)
			require.ErrorIs(t, err, codec.ErrCorrupt, name)
			require.NoError(t, os.WriteFile(bad, frame, 0o644))
			st := h.run(t, "fdec", bad, fmt.Sprint(len(frame)), fmt.Sprint(len(in)), filepath.Join(dir, "out"))
			assert.Equal(t, fmt.Sprint(StatusCorrupt), st, name)
		}
		// A header word changed under its checksum (the frame's first tile checks it with a warp).
		frame = bytes.Clone(good)
		frame[16] ^= 1
		require.NoError(t, os.WriteFile(bad, frame, 0o644))
		st = h.run(t, "fdec", bad, fmt.Sprint(len(frame)), fmt.Sprint(len(in)), filepath.Join(dir, "out"))
		assert.Equal(t, fmt.Sprint(StatusBadCRC), st, "header checksum")
	})
}
