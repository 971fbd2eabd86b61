package nats

import (
	"bufio"
	"context"
	"errors"
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

// extServer is a nats-server binary run by a test.
type extServer struct {
	t        *testing.T
	port     int
	storeDir string
	args     []string
	cmd      *exec.Cmd
	exited   chan struct{}
}

var listenRE = regexp.MustCompile(`Listening for client connections on [^\s]*:(\d+)`)

// startExternal runs `nats-server` with JetStream on 127.0.0.1, a random
// port and a fresh store dir, plus args (auth flags), and waits until its log
// says it is ready. It skips the test when the binary is not on PATH.
func startExternal(t *testing.T, args ...string) *extServer {
	t.Helper()
	if _, err := exec.LookPath("nats-server"); err != nil {
		t.Skip("nats-server binary not on PATH (Debian: apt-get install nats-server); skipping the external-server test")
	}
	s := &extServer{t: t, port: -1, storeDir: t.TempDir(), args: args}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *extServer) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", s.port) }

// start launches the server on s.port (random when -1) and s.storeDir.
func (s *extServer) start() {
	t := s.t
	t.Helper()
	args := append([]string{"-a", "127.0.0.1", "-p", strconv.Itoa(s.port), "-js", "-sd", s.storeDir}, s.args...)
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
	case s.port = <-ready:
	case <-s.exited:
		t.Fatalf("nats-server %v exited before it was ready", args)
	case <-time.After(20 * time.Second):
		t.Fatalf("nats-server %v not ready within 20s", args)
	}
}

// stop shuts the server down gracefully (SIGINT) and waits for it to exit.
func (s *extServer) stop() {
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

func TestExternalUserPassword(t *testing.T) {
	srv := startExternal(t, "--user", "splitzip", "--pass", "s3cret")
	_, err := Connect(WithURL(srv.url()), WithUserInfo("splitzip", "wrong"), WithTimeout(2*time.Second))
	require.Error(t, err, "wrong password")
	_, err = Connect(WithURL(srv.url()), WithTimeout(2*time.Second))
	require.Error(t, err, "no credentials")

	p := newPlane(t, WithURL(srv.url()), WithUserInfo("splitzip", "s3cret"))
	require.False(t, p.Embedded())
	require.Equal(t, srv.url(), p.ClientURL())
	q := newPlane(t, WithURL(srv.url()), WithUserInfo("splitzip", "s3cret"))
	exerciseProtocol(t, p, q)
}

func TestExternalToken(t *testing.T) {
	srv := startExternal(t, "--auth", "t0ken")
	_, err := Connect(WithURL(srv.url()), WithToken("nope"), WithTimeout(2*time.Second))
	require.Error(t, err)
	p := newPlane(t, WithURL(srv.url()), WithToken("t0ken"))
	q := newPlane(t, WithURL(srv.url()), WithToken("t0ken"))
	exerciseProtocol(t, p, q)
}

// exerciseProtocol runs a handoff through producer p and consumer q.
func exerciseProtocol(t *testing.T, p, q *Plane) {
	t.Helper()
	ctx := testCtx(t)
	_, err := p.RegisterEngine(ctx, Engine{ID: "prefill-0", Role: RoleProducer, Addr: "127.0.0.1:7000",
		TPSize: 1, LayoutFingerprint: "L"})
	require.NoError(t, err)
	e, err := q.LookupEngine(ctx, "prefill-0")
	require.NoError(t, err)
	require.Equal(t, RoleProducer, e.Role)

	done := make(chan Completion, 1)
	_, err = p.SubscribeCompletions("prefill-0", AllRanks, func(c Completion) error { done <- c; return nil })
	require.NoError(t, err)

	rec := sampleRecord("prefill-0", 1, 3)
	rec.ID = NewHandoffID()
	waited := make(chan error, 1)
	go func() {
		_, err := q.WaitHandoff(ctx, rec.ID)
		waited <- err
	}()
	require.Eventually(t, func() bool { return consumers(t, q) == 1 }, 10*time.Second, 5*time.Millisecond)
	require.NoError(t, p.PutHandoff(ctx, rec))
	require.NoError(t, <-waited)
	require.NoError(t, q.NotifyDone(ctx, "prefill-0", Completion{HandoffID: rec.ID, OK: true}))
	require.Equal(t, rec.ID, (<-done).HandoffID)
	require.NoError(t, p.DeleteHandoff(ctx, rec.ID))
	_, err = q.GetHandoff(ctx, rec.ID)
	require.ErrorIs(t, err, ErrUnknownHandoff)
}

// TestExternalRestart stops the server and starts it again on the same port
// and store directory. The clients reconnect and report the restart; records
// in file storage survive (the server is stopped gracefully); a wait for a
// record that was never published fails with ErrServerRestarted.
func TestExternalRestart(t *testing.T) {
	srv := startExternal(t)
	opts := []Option{WithURL(srv.url()), WithReconnect(-1, 20*time.Millisecond), WithEngineTTL(time.Minute)}
	p := newPlane(t, opts...)
	events := watchEvents(t, p)
	ctx := testCtx(t)

	_, err := p.RegisterEngine(ctx, Engine{ID: "prefill-0", Role: RoleProducer, TPSize: 1, LayoutFingerprint: "L"})
	require.NoError(t, err)
	rec := sampleRecord("prefill-0", 1, 2)
	require.NoError(t, p.PutHandoff(ctx, rec))
	epoch := p.Epoch()
	require.NoError(t, p.CheckEpoch(epoch))
	oldServer := p.ServerID()

	// A consumer waiting for a record that will never come.
	missing := NewHandoffID()
	waited := make(chan error, 1)
	go func() {
		_, err := p.WaitHandoff(ctx, missing)
		waited <- err
	}()
	require.Eventually(t, func() bool { return consumers(t, p) == 1 }, 10*time.Second, 5*time.Millisecond)

	srv.stop()
	ev := events.next(t, Disconnected)
	require.Equal(t, epoch+1, ev.Epoch)
	require.False(t, p.Connected())
	require.ErrorIs(t, p.CheckEpoch(epoch), ErrDisconnected)
	_, err = p.GetHandoff(quickCtx(t), rec.ID)
	require.ErrorIs(t, err, ErrDisconnected, "operations fail clearly while the server is down")

	srv.start()
	ev = events.next(t, Reconnected)
	require.True(t, ev.Restarted)
	require.Equal(t, oldServer, ev.PrevServerID)
	require.NotEqual(t, oldServer, p.ServerID())
	require.ErrorIs(t, p.CheckEpoch(epoch), ErrServerRestarted)
	require.NoError(t, p.CheckEpoch(p.Epoch()))

	err = <-waited
	require.ErrorIs(t, err, ErrServerRestarted)
	require.ErrorIs(t, err, ErrUnknownHandoff)

	// The record was flushed to the store dir and survives the restart (once
	// JetStream has recovered its streams).
	require.Eventually(t, func() bool {
		got, err := p.GetHandoff(quickCtx(t), rec.ID)
		return err == nil && got.ID == rec.ID
	}, 20*time.Second, 20*time.Millisecond)
	_, err = p.LookupEngine(ctx, "prefill-0")
	require.NoError(t, err)
}

// TestExternalRestartMemoryStorage: with memory storage the restart loses
// the records; the Plane recreates the buckets and refreshes its engine
// registrations, and reads of old handoffs report ErrUnknownHandoff while
// CheckEpoch reports ErrServerRestarted.
func TestExternalRestartMemoryStorage(t *testing.T) {
	srv := startExternal(t)
	p := newPlane(t, WithURL(srv.url()), WithReconnect(-1, 20*time.Millisecond), WithStorage(MemoryStorage),
		WithEngineTTL(time.Minute), WithNamespace("mem"))
	events := watchEvents(t, p)
	ctx := testCtx(t)
	_, err := p.RegisterEngine(ctx, Engine{ID: "prefill-0", Role: RoleProducer, TPSize: 1, LayoutFingerprint: "L"})
	require.NoError(t, err)
	rec := sampleRecord("prefill-0", 1, 2)
	require.NoError(t, p.PutHandoff(ctx, rec))
	epoch := p.Epoch()

	srv.stop()
	events.next(t, Disconnected)
	srv.start()
	require.True(t, events.next(t, Reconnected).Restarted)
	require.ErrorIs(t, p.CheckEpoch(epoch), ErrServerRestarted)

	// The engine entry comes back through the post-restart refresh.
	require.Eventually(t, func() bool {
		_, err := p.LookupEngine(quickCtx(t), "prefill-0")
		return err == nil
	}, 20*time.Second, 20*time.Millisecond)
	_, err = p.GetHandoff(ctx, rec.ID)
	require.ErrorIs(t, err, ErrUnknownHandoff)
	next := sampleRecord("prefill-0", 1, 2)
	require.NoError(t, p.PutHandoff(ctx, next), "the recreated bucket takes new handoffs")
}

func TestExternalUnreachable(t *testing.T) {
	srv := startExternal(t)
	url := srv.url()
	srv.stop()
	_, err := Connect(WithURL(url), WithTimeout(time.Second))
	require.Error(t, err)
	require.Contains(t, err.Error(), "splitzip/nats: connecting to")
	require.False(t, errors.Is(err, context.Canceled))
}
