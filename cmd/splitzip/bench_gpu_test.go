package main

import (
	"io/fs"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// -ptx belongs to the GPU bench, and a PTX file that cannot be read fails before any GPU work.
func TestBenchGPUPTXFlag(t *testing.T) {
	require.ErrorContains(t, runBench([]string{"-ptx", "x.ptx"}), "-ptx needs -gpu")
	err := runBench([]string{"-gpu", "-ptx", filepath.Join(t.TempDir(), "missing.ptx")})
	require.ErrorIs(t, err, fs.ErrNotExist)
}
