// Package ptxcheck is the staleness check shared by the packages that embed PTX built from CUDA sources
// (kernels, internal/gpubench): `make ptx` records the hashes of the sources and of the PTX built from them in
// a sha256sum file, and a test compares them with the files on disk, so a source changed without rebuilding
// the PTX, or PTX edited by hand, fails CI although CI has no nvcc.
package ptxcheck

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// UpToDate checks, in the test's package directory, that every file recorded in hashes (sha256sum's output)
// still has its hash, that every .cu and .cuh file there is recorded, and that each embedded image equals the
// recorded PTX file of its name and starts with the generated-code marker. rebuild is the command that
// regenerates them, for the failure messages.
func UpToDate(t *testing.T, hashes, rebuild string, embedded map[string][]byte) {
	t.Helper()
	files := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(hashes), "\n") {
		sum, name, ok := strings.Cut(line, "  ")
		require.True(t, ok, "line %q of the recorded hashes", line)
		b, err := os.ReadFile(name)
		require.NoError(t, err)
		got := sha256.Sum256(b)
		assert.Equal(t, sum, hex.EncodeToString(got[:]),
			"%s changed since the PTX was built: run `%s` (nvcc 13.0) and commit the PTX and its hashes", name, rebuild)
		files[name] = true
	}
	entries, err := os.ReadDir(".")
	require.NoError(t, err)
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".cu") || strings.HasSuffix(e.Name(), ".cuh") {
			assert.True(t, files[e.Name()], "%s is not recorded in the hashes (add it to SOURCES in the Makefile)", e.Name())
		}
	}
	for name, image := range embedded {
		require.True(t, files[name], "%s is not recorded in the hashes", name)
		disk, err := os.ReadFile(name)
		require.NoError(t, err)
		assert.Equal(t, disk, image, "embedded PTX differs from %s", name)
		first, _, _ := strings.Cut(string(image), "\n")
		assert.Regexp(t, `^// Code generated .* DO NOT EDIT\.$`, first, name)
	}
}
