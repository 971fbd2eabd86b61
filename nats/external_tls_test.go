package nats

import (
	"strconv"
	"testing"
	"time"

	"github.com/splitzip/splitzip/internal/natstest"
	"github.com/splitzip/splitzip/internal/testpki"
	"github.com/stretchr/testify/require"
)

// The nats-server binary with mutual TLS and a user and password, as a cluster's operators would run it:
// the control plane works with both, and fails without either.
func TestExternalTLSAndAuth(t *testing.T) {
	ca := testpki.NewCA(t, "cluster")
	cert := ca.Issue("nats")
	srv := natstest.StartExternal(t, "--tls", "--tlscert", cert.CertFile, "--tlskey", cert.KeyFile,
		"--tlsverify", "--tlscacert", ca.CAFile, "--user", "splitzip", "--pass", "s3cret")
	url := "tls://127.0.0.1:" + strconv.Itoa(srv.Port)
	client := ca.Issue("engine")
	auth := []Option{WithURL(url), WithUserInfo("splitzip", "s3cret"), WithTLS(ca.CAFile, client.CertFile, client.KeyFile)}

	p := newPlane(t, auth...)
	q := newPlane(t, auth...)
	exerciseProtocol(t, p, q)

	for name, opts := range map[string][]Option{
		"plain":              {WithURL(srv.URL()), WithUserInfo("splitzip", "s3cret")},
		"no client cert":     {WithURL(url), WithUserInfo("splitzip", "s3cret"), WithTLS(ca.CAFile, "", "")},
		"wrong password":     {WithURL(url), WithUserInfo("splitzip", "nope"), WithTLS(ca.CAFile, client.CertFile, client.KeyFile)},
		"no password":        {WithURL(url), WithTLS(ca.CAFile, client.CertFile, client.KeyFile)},
		"server not trusted": {WithURL(url), WithUserInfo("splitzip", "s3cret"), WithTLS(testpki.NewCA(t, "other").CAFile, client.CertFile, client.KeyFile)},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Connect(append(opts, WithTimeout(2*time.Second), WithReconnect(0, time.Millisecond))...)
			require.Error(t, err)
		})
	}
}
