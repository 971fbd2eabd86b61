package gpubench

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestPTXUpToDate fails when the committed PTX is stale against its CUDA source (or was edited by hand):
// bench.sha256, written by `make -C internal/gpubench ptx`, records the hashes of the source and of the PTX
// built from it.
func TestPTXUpToDate(t *testing.T) {
	files := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(ptxHashes), "\n") {
		sum, name, ok := strings.Cut(line, "  ")
		require.True(t, ok, "line %q of bench.sha256", line)
		b, err := os.ReadFile(name)
		require.NoError(t, err)
		got := sha256.Sum256(b)
		assert.Equal(t, sum, hex.EncodeToString(got[:]),
			"%s changed since the PTX was built: run `make -C internal/gpubench ptx` (nvcc 13.0) and commit bench.ptx and bench.sha256", name)
		files[name] = true
	}
	entries, err := os.ReadDir(".")
	require.NoError(t, err)
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".cu") || strings.HasSuffix(e.Name(), ".cuh") {
			assert.True(t, files[e.Name()], "%s is not recorded in bench.sha256 (add it to SOURCES in the Makefile)", e.Name())
		}
	}
	require.True(t, files["bench.ptx"])
	disk, err := os.ReadFile("bench.ptx")
	require.NoError(t, err)
	assert.Equal(t, disk, benchPTX, "embedded PTX differs from bench.ptx")
	first, _, _ := strings.Cut(string(benchPTX), "\n")
	assert.Regexp(t, `^// Code generated .* DO NOT EDIT\.$`, first)
	for _, name := range []string{"sz_noop", "sz_copy16", "sz_spin"} {
		assert.Contains(t, string(benchPTX), ".entry "+name+"(", name)
	}
}
