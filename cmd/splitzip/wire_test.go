package main

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"
)

// bench wire runs its producer as a child process of the splitzip binary: built here, then run small, plain
// and over mutual TLS, its table checked for one row per connection count with a rate in it.
func TestBenchWire(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the splitzip binary")
	}
	bin := filepath.Join(t.TempDir(), "splitzip")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "%s", out)
	row := regexp.MustCompile(`(?m)^\| (1|3) \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \|$`)
	for _, extra := range [][]string{nil, {"-tls", "-sink", "none", "-socket-buffer", "1MiB"}} {
		args := append([]string{"bench", "wire", "-size", "8MiB", "-chunk", "1MiB", "-conns", "1,3", "-repeat", "2"}, extra...)
		out, err := exec.Command(bin, args...).CombinedOutput()
		require.NoError(t, err, "%s", out)
		require.Len(t, row.FindAllString(string(out), -1), 2, "%s", out)
	}
	out, err = exec.Command(bin, "bench", "wire", "-size", "1MiB", "-chunk", "2MiB").CombinedOutput()
	require.Error(t, err, "%s", out)
}
