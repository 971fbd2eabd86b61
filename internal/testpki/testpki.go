// Package testpki makes certificate authorities and certificates for TLS between engines and NATS over TLS,
// in tests and benchmarks: PEM files in a directory, valid for 127.0.0.1, ::1, localhost and their name.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a certificate authority whose certificate is in CAFile.
type CA struct {
	t      testing.TB // nil for Files
	dir    string
	name   string
	key    *ecdsa.PrivateKey
	cert   *x509.Certificate
	CAFile string
	serial int64
}

// Pair is a certificate and its key, as PEM files.
type Pair struct {
	CertFile, KeyFile string
}

// NewCA makes a CA named name, its files in a fresh temporary directory of the test.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	ca, err := newCA(t.TempDir(), name)
	if err != nil {
		t.Fatal(err)
	}
	ca.t = t
	return ca
}

// Issue makes a certificate for name signed by the CA, usable by a TLS server and a TLS client (mutual TLS).
func (ca *CA) Issue(name string) Pair {
	ca.t.Helper()
	p, err := ca.issue(name)
	if err != nil {
		ca.t.Fatal(err)
	}
	return p
}

// Files writes a CA and a certificate per name into dir, for tools that need TLS files (a benchmark with
// TLS between its processes), and returns the CA file and the pairs in the order of names.
func Files(dir string, names ...string) (caFile string, pairs []Pair, err error) {
	ca, err := newCA(dir, "splitzip")
	if err != nil {
		return "", nil, err
	}
	for _, n := range names {
		p, err := ca.issue(n)
		if err != nil {
			return "", nil, err
		}
		pairs = append(pairs, p)
	}
	return ca.CAFile, pairs, nil
}

func newCA(dir, name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	ca := &CA{dir: dir, name: name, key: key, cert: cert, serial: 1}
	ca.CAFile, err = ca.write(name+"-ca.pem", "CERTIFICATE", der)
	return ca, err
}

func (ca *CA) issue(name string) (Pair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Pair{}, err
	}
	ca.serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(ca.serial),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
		DNSNames:     []string{"localhost", name},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return Pair{}, err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return Pair{}, err
	}
	var p Pair
	if p.CertFile, err = ca.write(ca.name+"-"+name+".pem", "CERTIFICATE", der); err != nil {
		return p, err
	}
	p.KeyFile, err = ca.write(ca.name+"-"+name+"-key.pem", "EC PRIVATE KEY", kder)
	return p, err
}

func (ca *CA) write(file, typ string, der []byte) (string, error) {
	p := filepath.Join(ca.dir, file)
	return p, os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}
