// Package natstest runs the Debian nats-server binary for tests of the external-server path: the same
// binary a multi-host deployment runs, started on 127.0.0.1 with a random port and its own store.
package natstest

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
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
	args     []string
	cmd      *exec.Cmd
	exited   chan struct{}
}

var listenRE = regexp.MustCompile(`Listening for client connections on [^\s]*:(\d+)`)

// StartExternal runs `nats-server` with JetStream on 127.0.0.1, a random
// port and a fresh store dir, plus args (auth flags), and waits until its log
// says it is ready. It skips the test when the binary is not on PATH.
func StartExternal(t testing.TB, args ...string) *Server {
	t.Helper()
	if _, err := exec.LookPath("nats-server"); err != nil {
		t.Skip("nats-server binary not on PATH (Debian: apt-get install nats-server); skipping the external-server test")
	}
	s := &Server{t: t, Port: -1, StoreDir: t.TempDir(), args: args}
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
	cmd := exec.Command("nats-server", args...)
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
		t.Fatalf("nats-server %v exited before it was ready", args)
	case <-time.After(20 * time.Second):
		t.Fatalf("nats-server %v not ready within 20s", args)
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
