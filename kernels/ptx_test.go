package kernels

import (
	"bytes"
	"debug/elf"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/internal/ptxcheck"
)

// TestPTXUpToDate fails when the committed PTX is stale against its CUDA sources (or was edited by hand), and
// checks that both builds hold exactly the product's entry points.
func TestPTXUpToDate(t *testing.T) {
	images := map[string][]byte{"splitzip.ptx": ptx, "splitzip_sm90.ptx": ptxSM90}
	ptxcheck.UpToDate(t, ptxHashes, "make -C kernels ptx", images)
	for name, image := range images {
		assert.ElementsMatch(t, entryPoints, ptxEntries(image), name)
	}
	assert.Contains(t, string(ptx), ".target sm_80")
	assert.NotContains(t, string(ptx), "griddepcontrol")
	assert.Contains(t, string(ptxSM90), ".target sm_90")
	assert.Contains(t, string(ptxSM90), "griddepcontrol.wait")

	// The cubin is recorded in the hashes with the PTX it was compiled from, so the check above also finds it
	// stale; here: it is sm_90 machine code holding exactly the entry points.
	f, err := elf.NewFile(bytes.NewReader(cubinSM90))
	require.NoError(t, err, "splitzip_sm90.cubin")
	assert.Equal(t, elf.EM_CUDA, f.Machine)
	// CUDA's ELF ABI version 8 keeps the SM in bits 8–15 of e_flags (offset 48 of the 64-bit header).
	assert.Equal(t, uint8(8), f.ABIVersion)
	assert.Equal(t, byte(90), cubinSM90[49], "the cubin's SM")
	syms, err := f.Symbols()
	require.NoError(t, err)
	var funcs []string
	for _, s := range syms {
		if elf.ST_TYPE(s.Info) == elf.STT_FUNC && elf.ST_BIND(s.Info) == elf.STB_GLOBAL {
			funcs = append(funcs, s.Name)
		}
	}
	assert.ElementsMatch(t, entryPoints, funcs, "splitzip_sm90.cubin")
}

// ptxEntries lists the kernel entry points of a PTX image.
func ptxEntries(image []byte) []string {
	var names []string
	for _, line := range strings.Split(string(image), "\n") {
		if rest, ok := strings.CutPrefix(line, ".visible .entry "); ok {
			name, _, _ := strings.Cut(rest, "(")
			names = append(names, name)
		}
	}
	return names
}

// WithPTX takes images that hold every entry point, and refuses others before anything is loaded.
func TestWithPTX(t *testing.T) {
	var o options
	require.NoError(t, WithPTX(ptx)(&o))
	assert.Equal(t, ptx, o.ptx)
	for _, image := range [][]byte{nil, []byte(".version 8.0\n.target sm_80\n"), bytes.ReplaceAll(ptx, []byte("sz_decode_t256c1_paged"), []byte("sz_decode_other"))} {
		assert.ErrorIs(t, WithPTX(image)(&options{}), codec.ErrOption)
	}
	_, err := NewCodec(nil, WithPTX([]byte("not PTX")))
	assert.ErrorIs(t, err, codec.ErrOption)
}
