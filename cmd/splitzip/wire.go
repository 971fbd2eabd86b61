package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/splitzip/splitzip/connector/transport"
	"github.com/splitzip/splitzip/internal/testpki"
)

// The wire benchmark measures the payload transport alone: a producer process (a child of this one) offers a
// payload of -size bytes in -chunk chunks whose CRCs it knows (as the connector's producer does), and this
// process fetches it with each connection count, under -rate if set, over mutual TLS with -tls. No codec, no
// NATS, no KV cache: what the wire and the transport's copies allow, the ceiling of every handoff.

type wireOffer struct {
	ID     string `json:"id"`
	Secret []byte `json:"secret"`
}

type wireReply struct {
	Addr string `json:"addr,omitempty"`
	Err  string `json:"err,omitempty"`
}

func runBenchWire(args []string) error {
	fs := newFlags("bench wire", "")
	var size, chunk byteSize = 2 << 30, 8 << 20
	fs.Var(&size, "size", "payload per transfer, e.g. 4GiB")
	fs.Var(&chunk, "chunk", "chunk size (the connector's frames are up to 8 MiB of raw KV)")
	connsFlag := fs.String("conns", "1,2,4,8,16", "TCP connections per transfer, a list")
	repeat := fs.Int("repeat", 5, "transfers per figure (the median is reported, and the best)")
	rate := fs.Float64("rate", 0, "cap in Gbit/s, as the consumer's rate limit shapes links in bench transfer and tests/gpu (0: none)")
	useTLS := fs.Bool("tls", false, "mutual TLS between the two processes (certificates made for the run)")
	sinkMode := fs.String("sink", "copy", "what the consumer does with a chunk: copy (into a destination as large as the payload, as a decode writes the KV cache) or none")
	var sockBuf byteSize
	fs.Var(&sockBuf, "socket-buffer", "SO_SNDBUF/SO_RCVBUF on both sides, e.g. 4MiB (default: the kernel's autotuning)")
	prefix := fs.String("producer-prefix", "", "command prefix that starts the producer process elsewhere, e.g. \"ip netns exec prefill\"")
	listen := fs.String("producer-listen", "127.0.0.1:0", "payload listen address of the producer process")
	if err := fs.Parse(args); err != nil {
		return err
	}
	connList, err := parseList(*connsFlag)
	if err != nil {
		return err
	}
	if *repeat < 1 || chunk > size || (*sinkMode != "copy" && *sinkMode != "none") {
		return fmt.Errorf("bench wire: want -repeat ≥ 1, -chunk ≤ -size, -sink copy or none")
	}
	n := int(size / chunk)
	var topts []transport.Option
	childArgs := []string{"-size", fmt.Sprint(int64(size)), "-chunk", fmt.Sprint(int64(chunk)), "-listen", *listen}
	if *useTLS {
		dir, err := os.MkdirTemp("", "splitzip-wire-tls-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		ca, pairs, err := testpki.Files(dir, "producer", "consumer")
		if err != nil {
			return err
		}
		topts = append(topts, transport.WithTLSFiles(ca, pairs[1].CertFile, pairs[1].KeyFile))
		childArgs = append(childArgs, "-tls-dir", dir)
	}
	if *rate > 0 {
		topts = append(topts, transport.WithRateLimit(int64(*rate*1e9/8)))
	}
	if sockBuf > 0 {
		topts = append(topts, transport.WithSocketBuffer(int(sockBuf)))
		childArgs = append(childArgs, "-socket-buffer", fmt.Sprint(int64(sockBuf)))
	}

	self, err := os.Executable()
	if err != nil {
		return err
	}
	argv := append(append(strings.Fields(*prefix), self, "bench", "wire-producer"), childArgs...)
	child := exec.Command(argv[0], argv[1:]...)
	child.Stderr = os.Stderr
	stdin, _ := child.StdinPipe()
	stdout, _ := child.StdoutPipe()
	if err := child.Start(); err != nil {
		return err
	}
	defer func() { stdin.Close(); _ = child.Wait() }()
	replies := bufio.NewScanner(stdout)
	enc := json.NewEncoder(stdin)
	next := func() (wireReply, error) {
		var r wireReply
		if !replies.Scan() {
			return r, errors.New("the producer process ended (its error is above)")
		}
		if err := json.Unmarshal(replies.Bytes(), &r); err != nil {
			return r, err
		}
		if r.Err != "" {
			return r, errors.New("producer: " + r.Err)
		}
		return r, nil
	}
	hello, err := next()
	if err != nil {
		return err
	}

	var dst []byte
	sink := func(i int, data []byte) error { return nil }
	if *sinkMode == "copy" {
		dst = make([]byte, n*int(chunk))
		for i := 0; i < len(dst); i += 4096 { // fault the pages in before timing
			dst[i] = 1
		}
		sink = func(i int, data []byte) error { copy(dst[i*int(chunk):], data); return nil }
	}
	tlsName := "plain TCP"
	if *useTLS {
		tlsName = "mutual TLS"
	}
	link := "unshaped"
	if *rate > 0 {
		link = fmt.Sprintf("capped at %g Gbit/s", *rate)
	}
	fmt.Printf("wire: %s in %d chunks of %s per transfer, %s, %s, sink %s, producer at %s; %s, %d cores; median of %d\n\n",
		formatBytes(float64(n)*float64(chunk)), n, formatBytes(float64(chunk)), tlsName, link, *sinkMode, hello.Addr,
		cpuName(), runtime.NumCPU(), *repeat)
	fmt.Println("| conns | Gbit/s (median) | Gbit/s (best) | consumer CPU s/GB | producer CPU s/GB |")
	fmt.Println("|---:|---:|---:|---:|---:|")
	for _, c := range connList {
		opts := append(slices.Clone(topts), transport.WithConns(int(c)))
		var rates, ccpu, pcpu []float64
		for range *repeat {
			id, secret := transport.NewHandoffID(), transport.NewSecret()
			if err := enc.Encode(wireOffer{ID: id, Secret: secret}); err != nil {
				return err
			}
			if _, err := next(); err != nil {
				return err
			}
			c0, p0 := processCPU(os.Getpid()), processCPU(child.Process.Pid)
			t0 := time.Now()
			st, err := transport.Fetch(context.Background(), hello.Addr, id, secret, sink, opts...)
			took := time.Since(t0)
			if err != nil {
				return err
			}
			gb := float64(st.Bytes) / 1e9
			rates = append(rates, gb*8/took.Seconds())
			ccpu = append(ccpu, (processCPU(os.Getpid())-c0).Seconds()/gb)
			pcpu = append(pcpu, (processCPU(child.Process.Pid)-p0).Seconds()/gb)
		}
		fmt.Printf("| %d | %.1f | %.1f | %.3f | %.3f |\n", int(c), medianOf(rates), slices.Max(rates), medianOf(ccpu), medianOf(pcpu))
	}
	return nil
}

func medianOf(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// runWireProducer is the producer process of bench wire: it serves one payload under every id it is sent.
func runWireProducer(args []string) error {
	fs := newFlags("bench wire-producer", "")
	var size, chunk byteSize = 2 << 30, 8 << 20
	fs.Var(&size, "size", "payload bytes")
	fs.Var(&chunk, "chunk", "chunk bytes")
	listen := fs.String("listen", "127.0.0.1:0", "listen address")
	tlsDir := fs.String("tls-dir", "", "directory of the TLS files bench wire made")
	var sockBuf byteSize
	fs.Var(&sockBuf, "socket-buffer", "SO_SNDBUF/SO_RCVBUF")
	if err := fs.Parse(args); err != nil {
		return err
	}
	out := json.NewEncoder(os.Stdout)
	fail := func(err error) error { _ = out.Encode(wireReply{Err: err.Error()}); return err }
	var opts []transport.Option
	if sockBuf > 0 {
		opts = append(opts, transport.WithSocketBuffer(int(sockBuf)))
	}
	if *tlsDir != "" {
		opts = append(opts, transport.WithTLSFiles(filepath.Join(*tlsDir, "splitzip-ca.pem"),
			filepath.Join(*tlsDir, "splitzip-producer.pem"), filepath.Join(*tlsDir, "splitzip-producer-key.pem")))
	}
	n := int(size / chunk)
	mem := make([]byte, n*int(chunk))
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < int(chunk); i += 8 {
		v := r.Uint64()
		for k := 0; k < 8 && i+k < int(chunk); k++ {
			mem[i+k] = byte(v >> (8 * k))
		}
	}
	first := mem[:chunk]
	chunks := make([][]byte, n)
	crcs := make([]uint32, n)
	crc := crc32.Checksum(first, crc32.MakeTable(crc32.Castagnoli))
	for i := range chunks {
		chunks[i] = mem[i*int(chunk) : (i+1)*int(chunk)]
		copy(chunks[i], first) // distinct memory, same bytes
		crcs[i] = crc
	}
	srv, err := transport.Listen(*listen, append(opts, transport.WithHandoffTTL(10*time.Minute))...)
	if err != nil {
		return fail(err)
	}
	defer srv.Close()
	if err := out.Encode(wireReply{Addr: srv.Addr().String()}); err != nil {
		return err
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var o wireOffer
		if err := json.Unmarshal(in.Bytes(), &o); err != nil {
			return fail(err)
		}
		p := transport.NewStreamPayload(n, nil)
		for i, c := range chunks {
			if err := p.PutWithCRC(i, c, crcs[i]); err != nil {
				return fail(err)
			}
		}
		if err := srv.Offer(o.ID, o.Secret, p); err != nil {
			return fail(err)
		}
		if err := out.Encode(wireReply{}); err != nil {
			return err
		}
	}
	return in.Err()
}
