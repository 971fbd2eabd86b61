package gpubench

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/splitzip/splitzip/internal/ptxcheck"
)

// TestPTXUpToDate fails when the committed PTX is stale against its CUDA source (or was edited by hand).
func TestPTXUpToDate(t *testing.T) {
	ptxcheck.UpToDate(t, ptxHashes, "make -C internal/gpubench ptx", map[string][]byte{"bench.ptx": benchPTX})
	for _, name := range []string{"sz_noop", "sz_copy16", "sz_spin"} {
		assert.Contains(t, string(benchPTX), ".entry "+name+"(", name)
	}
}
