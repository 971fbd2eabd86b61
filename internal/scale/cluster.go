package scale

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Cluster is a NATS cluster of nats-server processes on 127.0.0.1, JetStream on every node: what a deployment
// of many engines shares for its control plane. Nodes keep their ports and store directories across Kill and
// Start, so a restarted node rejoins with its state.
type Cluster struct {
	bin   string
	dir   string
	nodes []*node
}

type node struct {
	name              string
	port, clusterPort int
	storeDir, logFile string
	mu                sync.Mutex
	cmd               *exec.Cmd
	exited            chan struct{}
}

// StartCluster starts n nats-server processes from bin (natstest.Binary finds it), with their stores and logs
// under dir, and waits until the cluster's JetStream has a leader.
func StartCluster(ctx context.Context, bin, dir string, n int) (*Cluster, error) {
	if n < 1 {
		return nil, fmt.Errorf("splitzip/scale: a cluster of %d nodes", n)
	}
	c := &Cluster{bin: bin, dir: dir}
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	for i := range n {
		name := fmt.Sprintf("nats-%d", i)
		nd := &node{name: name, port: ports[2*i], clusterPort: ports[2*i+1],
			storeDir: filepath.Join(dir, name), logFile: filepath.Join(dir, name+".log")}
		if err := os.MkdirAll(nd.storeDir, 0o755); err != nil {
			return nil, err
		}
		c.nodes = append(c.nodes, nd)
	}
	for i := range c.nodes {
		if err := c.Start(i); err != nil {
			c.Stop()
			return nil, err
		}
	}
	if err := c.WaitReady(ctx); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// freePorts returns n distinct ports free on 127.0.0.1 now.
func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// URL is the client URL list of every node, for nats.WithURL.
func (c *Cluster) URL() string {
	urls := make([]string, len(c.nodes))
	for i, nd := range c.nodes {
		urls[i] = fmt.Sprintf("nats://127.0.0.1:%d", nd.port)
	}
	return strings.Join(urls, ",")
}

// Nodes is the number of nodes.
func (c *Cluster) Nodes() int { return len(c.nodes) }

// Start starts node i (again) on its ports and store directory.
func (c *Cluster) Start(i int) error {
	nd := c.nodes[i]
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if nd.cmd != nil {
		return nil
	}
	var routes []string
	for j, o := range c.nodes {
		if j != i {
			routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", o.clusterPort))
		}
	}
	args := []string{"-a", "127.0.0.1", "-p", strconv.Itoa(nd.port), "-js", "-sd", nd.storeDir,
		"--server_name", nd.name, "--cluster_name", "splitzip-scale",
		"--cluster", fmt.Sprintf("nats://127.0.0.1:%d", nd.clusterPort)}
	if len(routes) > 0 {
		args = append(args, "--routes", strings.Join(routes, ","))
	}
	logf, err := os.OpenFile(nd.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(c.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("splitzip/scale: starting %s: %w", nd.name, err)
	}
	nd.cmd, nd.exited = cmd, make(chan struct{})
	go func(exited chan struct{}) {
		_ = cmd.Wait()
		logf.Close()
		close(exited)
	}(nd.exited)
	return waitPort(nd.port, nd.exited, 30*time.Second)
}

// waitPort waits until 127.0.0.1:port accepts connections.
func waitPort(port int, exited <-chan struct{}, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("splitzip/scale: nats-server on port %d exited before it listened", port)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("splitzip/scale: nats-server on port %d not listening after %v", port, limit)
		}
		time.Sleep(20 * time.Millisecond) // a port to poll: no event tells when it opens
	}
}

// WaitReady waits until JetStream answers through the cluster (a meta leader is elected) and every stream
// there is answers too (its leader is elected), or ctx ends.
func (c *Cluster) WaitReady(ctx context.Context) error {
	nc, err := natsgo.Connect(c.URL(), natsgo.MaxReconnects(-1), natsgo.ReconnectWait(100*time.Millisecond))
	if err != nil {
		return fmt.Errorf("splitzip/scale: connecting to the cluster: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	var last error
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := streamsAnswer(actx, js)
		cancel()
		if err == nil {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("splitzip/scale: JetStream not ready on %s: %w (last: %v)", c.URL(), ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// streamsAnswer asks JetStream for its account and for every stream's state: each answer needs a leader.
func streamsAnswer(ctx context.Context, js jetstream.JetStream) error {
	if _, err := js.AccountInfo(ctx); err != nil {
		return err
	}
	names := js.StreamNames(ctx)
	for name := range names.Name() {
		if _, err := js.Stream(ctx, name); err != nil {
			return fmt.Errorf("stream %s: %w", name, err)
		}
	}
	return names.Err()
}

// Kill ends node i at once (SIGKILL): a crash.
func (c *Cluster) Kill(i int) { c.signal(i, syscall.SIGKILL) }

// Shutdown stops node i gracefully (SIGTERM) and waits for it.
func (c *Cluster) Shutdown(i int) { c.signal(i, syscall.SIGTERM) }

func (c *Cluster) signal(i int, sig syscall.Signal) {
	nd := c.nodes[i]
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if nd.cmd == nil {
		return
	}
	_ = nd.cmd.Process.Signal(sig)
	select {
	case <-nd.exited:
	case <-time.After(20 * time.Second):
		_ = nd.cmd.Process.Kill()
		<-nd.exited
	}
	nd.cmd = nil
}

// Pids are the running nodes' process ids (for CPU accounting).
func (c *Cluster) Pids() []int {
	var out []int
	for _, nd := range c.nodes {
		nd.mu.Lock()
		if nd.cmd != nil {
			out = append(out, nd.cmd.Process.Pid)
		}
		nd.mu.Unlock()
	}
	return out
}

// Stop shuts every node down gracefully.
func (c *Cluster) Stop() {
	for i := range c.nodes {
		c.Shutdown(i)
	}
}

// Logs returns the tail of every node's log, for a failure's report.
func (c *Cluster) Logs(lines int) string {
	var b strings.Builder
	for _, nd := range c.nodes {
		data, err := os.ReadFile(nd.logFile)
		if err != nil {
			continue
		}
		ls := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		fmt.Fprintf(&b, "--- %s (last %d lines)\n%s\n", nd.name, lines, strings.Join(ls[max(0, len(ls)-lines):], "\n"))
	}
	return b.String()
}

var errWorkerGone = errors.New("splitzip/scale: worker process ended")
