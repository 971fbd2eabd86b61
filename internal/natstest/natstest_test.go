package natstest

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestBinaryFromEnv(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "nats-server")
	require.NoError(t, os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755))
	t.Setenv(EnvBinary, exe)
	got, err := Binary()
	require.NoError(t, err)
	require.Equal(t, exe, got)

	// Asked for and missing, or not executable: an error, not ErrNoBinary (which lets tests skip).
	for _, p := range []string{filepath.Join(dir, "missing"), dir} {
		t.Setenv(EnvBinary, p)
		_, err = Binary()
		require.Error(t, err, p)
		require.NotErrorIs(t, err, ErrNoBinary, p)
		require.Contains(t, err.Error(), EnvBinary)
	}
	plain := filepath.Join(dir, "plain")
	require.NoError(t, os.WriteFile(plain, nil, 0o644))
	t.Setenv(EnvBinary, plain)
	_, err = Binary()
	require.Error(t, err)
	require.NotErrorIs(t, err, ErrNoBinary)
}

func TestBinaryFallbacks(t *testing.T) {
	t.Setenv(EnvBinary, "")
	t.Setenv("PATH", t.TempDir())
	root, ok := moduleRoot()
	require.True(t, ok, "go test runs inside the module")
	require.FileExists(t, filepath.Join(root, "go.mod"))
	built := filepath.Join(root, "build", "bin", "nats-server")
	got, err := Binary()
	if executable(built) {
		require.NoError(t, err)
		require.Equal(t, built, got)
	} else {
		require.ErrorIs(t, err, ErrNoBinary, "no binary in build/bin and none on PATH")
	}
}

// StartExternal runs the binary where a client can reach it, and Start brings it back on the same port: the
// path the nats and connector tests take.
func TestStartExternal(t *testing.T) {
	s := StartExternal(t)
	require.Positive(t, s.Port)
	dial := func() error {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", s.Port), 5*time.Second)
		if err == nil {
			_ = c.Close()
		}
		return err
	}
	require.NoError(t, dial())
	port := s.Port
	s.Stop()
	require.Error(t, dial(), "stopped")
	s.Start()
	require.Equal(t, port, s.Port)
	require.NoError(t, dial())
	require.Equal(t, "nats://127.0.0.1:"+strconv.Itoa(port), s.URL())
}
