// Package natstest runs a nats-server binary for tests of the external-server path: the same binary a
// multi-host deployment runs, started on 127.0.0.1 with a random port and its own store.
//
// The binary is built from the nats-server module go.mod pins (internal/tools), without root:
//
//	go build -o build/bin/nats-server github.com/nats-io/nats-server/v2   (what `make deps` does)
//
// Tests find it through $SPLITZIP_NATS_SERVER (the Makefile sets it), else at build/bin/nats-server in the
// module root, else as nats-server on PATH. Without any of them the tests skip, saying so; a
// SPLITZIP_NATS_SERVER naming no executable fails them, so a run that was given the binary cannot skip.
package natstest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Server is a nats-server binary run by a test.
type Server struct {
	t        testing.TB
	Port     int
	StoreDir string
	bin      string
	args     []string
	cmd      *exec.Cmd
	exited   chan struct{}
}

var listenRE = regexp.MustCompile(`Listening for client connections on [^\s]*:(\d+)`)

// EnvBinary names the environment variable holding the nats-server binary's path.
const EnvBinary = "SPLITZIP_NATS_SERVER"

// ErrNoBinary reports that no nats-server binary was found and none was asked for.
var ErrNoBinary = errors.New("splitzip/natstest: no nats-server binary: build one with `make deps` " +
	"(go build -o build/bin/nats-server github.com/nats-io/nats-server/v2) or set " + EnvBinary)

// Binary returns the nats-server binary to run: $SPLITZIP_NATS_SERVER, else build/bin/nats-server in the
// module root, else nats-server on PATH; ErrNoBinary when there is none. A SPLITZIP_NATS_SERVER naming no
// executable file is another error: the binary was asked for and is missing.
func Binary() (string, error) {
	if env := os.Getenv(EnvBinary); env != "" {
		if !executable(env) {
			return "", fmt.Errorf("splitzip/natstest: %s=%s is not an executable file (make deps builds it)", EnvBinary, env)
		}
		return env, nil
	}
	if root, ok := moduleRoot(); ok {
		if p := filepath.Join(root, "build", "bin", "nats-server"); executable(p) {
			return p, nil
		}
	}
	if p, err := exec.LookPath("nats-server"); err == nil {
		return p, nil
	}
	return "", ErrNoBinary
}

func executable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// moduleRoot is the nearest directory at or above the working directory (a package directory, under go test)
// holding go.mod.
func moduleRoot() (string, bool) {
	dir, err := os.Getwd()
	if err != nil {
		return "", false
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, true
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", false
		}
		dir = parent
	}
}

// StartExternal runs the nats-server binary (see Binary) with JetStream on 127.0.0.1, a random port and a
// fresh store dir, plus args (auth flags), and waits until its log says it is ready. It skips the test when no
// binary is found, and fails it when SPLITZIP_NATS_SERVER names a missing one.
func StartExternal(t testing.TB, args ...string) *Server {
	t.Helper()
	bin, err := Binary()
	if errors.Is(err, ErrNoBinary) {
		t.Skipf("skipping the external-server test: %v", err)
	}
	require.NoError(t, err)
	s := &Server{t: t, Port: -1, StoreDir: t.TempDir(), bin: bin, args: args}
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

// URL is the client URL.
func (s *Server) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", s.Port) }

// Start launches the server on its port (random the first time) and store dir.
func (s *Server) Start() {
	t := s.t
	t.Helper()
	args := append([]string{"-a", "127.0.0.1", "-p", strconv.Itoa(s.Port), "-js", "-sd", s.StoreDir}, s.args...)
	cmd := exec.Command(s.bin, args...)
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	cmd.Stdout = cmd.Stderr
	require.NoError(t, cmd.Start())
	s.cmd, s.exited = cmd, make(chan struct{})

	ready := make(chan int, 1)
	go func() {
		// Read the log to the end so the server never blocks on a full pipe.
		sc := bufio.NewScanner(stderr)
		port := 0
		for sc.Scan() {
			line := sc.Text()
			if os.Getenv("SPLITZIP_NATS_LOG") != "" {
				println("SERVER", line)
			}
			if m := listenRE.FindStringSubmatch(line); m != nil {
				port, _ = strconv.Atoi(m[1])
			}
			if port != 0 && regexp.MustCompile(`Server is ready`).MatchString(line) {
				ready <- port
				port = 0
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		_ = cmd.Wait()
		close(s.exited)
	}()
	select {
	case s.Port = <-ready:
	case <-s.exited:
		t.Fatalf("%s %v exited before it was ready", s.bin, args)
	case <-time.After(20 * time.Second):
		t.Fatalf("%s %v not ready within 20s", s.bin, args)
	}
}

// Stop shuts the server down gracefully (SIGINT) and waits for it to exit.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(os.Interrupt)
	select {
	case <-s.exited:
	case <-time.After(20 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
	s.cmd = nil
}
