package main

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseModes(t *testing.T) {
	for _, c := range []struct {
		mode, modes string
		want        []string
	}{
		{"fast,high-ratio,auto", "", []string{"raw", "fast", "high-ratio", "auto"}},
		{"auto,high_ratio", "", []string{"raw", "high-ratio", "auto"}},
		{"fast,high-ratio,auto", "raw,compressed,auto", []string{"raw", "fast", "auto"}},
		{"", "high-ratio", []string{"high-ratio"}},
	} {
		got, err := parseModes(c.mode, c.modes)
		require.NoError(t, err, c)
		require.Equal(t, c.want, got, c)
	}
	for _, bad := range []string{"raw", "turbo", "fast,"} {
		_, err := parseModes(bad, "")
		require.Error(t, err, bad)
	}
	_, err := parseModes("fast", "raw,turbo")
	require.Error(t, err)
	for _, m := range benchModes {
		_, _, ok := benchPolicy(m)
		require.True(t, ok, m)
	}
}

func TestCheckBenchTransport(t *testing.T) {
	require.NoError(t, checkBenchTransport("tcp", "1,2.5,0"))
	require.NoError(t, checkBenchTransport("nixl", "0"))
	require.ErrorContains(t, checkBenchTransport("nixl", "1,0"), "-rates 0")
	require.ErrorContains(t, checkBenchTransport("rdma", "0"), "want tcp or nixl")
	t.Setenv("UCX_TLS", "tcp")
	require.Equal(t, "nixl (UCX_TLS=tcp)", transportLabel("nixl"))
}
