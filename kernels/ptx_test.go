package kernels

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/splitzip/splitzip/codec"
)

// TestPTXUpToDate fails when the committed PTX is stale against its CUDA sources (or was edited by hand):
// splitzip.sha256, written by `make -C kernels ptx`, records the hashes of the sources and of the PTX built
// from them.
func TestPTXUpToDate(t *testing.T) {
	files := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(ptxHashes), "\n") {
		sum, name, ok := strings.Cut(line, "  ")
		require.True(t, ok, "line %q of splitzip.sha256", line)
		b, err := os.ReadFile(name)
		require.NoError(t, err)
		got := sha256.Sum256(b)
		assert.Equal(t, sum, hex.EncodeToString(got[:]),
			"%s changed since the PTX was built: run `make -C kernels ptx` (nvcc 13.0) and commit splitzip.ptx and splitzip.sha256", name)
		files[name] = true
	}
	// Every CUDA source is covered, and the embedded PTX is the recorded one.
	entries, err := os.ReadDir(".")
	require.NoError(t, err)
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".cu") || strings.HasSuffix(e.Name(), ".cuh") {
			assert.True(t, files[e.Name()], "%s is not recorded in splitzip.sha256 (add it to SOURCES in the Makefile)", e.Name())
		}
	}
	for name, embedded := range map[string][]byte{"splitzip.ptx": ptx, "splitzip_sm90.ptx": ptxSM90} {
		require.True(t, files[name], name)
		disk, err := os.ReadFile(name)
		require.NoError(t, err)
		assert.Equal(t, disk, embedded, "embedded PTX differs from %s", name)
	}
	// Generated-code marker, and exactly the product's entry points.
	for name, image := range map[string][]byte{"splitzip.ptx": ptx, "splitzip_sm90.ptx": ptxSM90} {
		first, _, _ := strings.Cut(string(image), "\n")
		assert.Regexp(t, `^// Code generated .* DO NOT EDIT\.$`, first, name)
		assert.ElementsMatch(t, entryPoints, ptxEntries(image), name)
	}
	assert.Contains(t, string(ptx), ".target sm_80")
	assert.NotContains(t, string(ptx), "griddepcontrol")
	assert.Contains(t, string(ptxSM90), ".target sm_90")
	assert.Contains(t, string(ptxSM90), "griddepcontrol.wait")
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
