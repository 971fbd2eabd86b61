package nats

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/require"
)

// runServer starts an in-process JetStream server configured by edit on a
// random port and shuts it down when the test ends.
func runServer(t *testing.T, edit func(*natsserver.Options)) *natsserver.Server {
	t.Helper()
	o := &natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		NoLog: true, NoSigs: true}
	edit(o)
	s, err := natsserver.NewServer(o)
	require.NoError(t, err)
	s.Start()
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	require.True(t, s.ReadyForConnections(10*time.Second))
	return s
}

func TestNKeyAuth(t *testing.T) {
	user, err := nkeys.CreateUser()
	require.NoError(t, err)
	pub, err := user.PublicKey()
	require.NoError(t, err)
	seed, err := user.Seed()
	require.NoError(t, err)
	seedFile := filepath.Join(t.TempDir(), "user.nk")
	require.NoError(t, os.WriteFile(seedFile, seed, 0o600))

	s := runServer(t, func(o *natsserver.Options) { o.Nkeys = []*natsserver.NkeyUser{{Nkey: pub}} })
	_, err = Connect(WithURL(s.ClientURL()), WithTimeout(2*time.Second))
	require.Error(t, err, "the server requires the nkey")
	p := newPlane(t, WithURL(s.ClientURL()), WithNKeyFile(seedFile))
	rec := sampleShard("p", 0, 1, 1)
	require.NoError(t, p.PutShard(testCtx(t), rec))
}

func TestTLS(t *testing.T) {
	dir := t.TempDir()
	caFile, serverCfg := selfSignedTLS(t, dir)
	s := runServer(t, func(o *natsserver.Options) { o.TLS, o.TLSConfig = true, serverCfg })

	_, err := Connect(WithURL(s.ClientURL()), WithTimeout(2*time.Second))
	require.Error(t, err, "plain connection to a TLS-only server")
	p := newPlane(t, WithURL("tls://"+s.Addr().String()), WithTLS(caFile, "", ""))
	rec := sampleShard("p", 0, 1, 1)
	require.NoError(t, p.PutShard(testCtx(t), rec))
	_, err = p.WaitShard(testCtx(t), rec.HandoffID, 0, false)
	require.NoError(t, err)
}

// selfSignedTLS writes a self-signed CA certificate for 127.0.0.1 to dir and
// returns its path and a server TLS config using it.
func selfSignedTLS(t *testing.T, dir string) (string, *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "splitzip test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	caFile := filepath.Join(dir, "ca.pem")
	require.NoError(t, os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	return caFile, &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
	}
}
