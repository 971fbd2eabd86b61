package scale

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// flipProxy forwards TCP connections to a producer and flips one bit of the producer's streams every `every`
// bytes: damage in transit that only the transport's CRC-32C (or the frame checks behind it) can catch.
type flipProxy struct {
	ln      net.Listener
	target  string
	every   int64
	flipped atomic.Int64
	total   atomic.Int64 // bytes of every connection from the producer so far
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   map[net.Conn]struct{}
}

func startFlipProxy(target string, every int64) (*flipProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &flipProxy{ln: ln, target: target, every: every, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

func (p *flipProxy) addr() string { return p.ln.Addr().String() }

func (p *flipProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *flipProxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			in.Close()
			continue
		}
		if !p.track(in) || !p.track(out) {
			in.Close()
			out.Close()
			return
		}
		p.wg.Add(2)
		go func() { defer p.wg.Done(); _, _ = io.Copy(out, in); out.Close() }()
		go func() { defer p.wg.Done(); p.corrupt(in, out); in.Close() }()
	}
}

// corrupt copies the producer's bytes (from out) to the consumer (in), flipping one bit at every multiple of
// p.every bytes (plus half of it) of all the producer's streams together: each fetch spreads over several
// short connections, so a count per connection might never reach a flip.
func (p *flipProxy) corrupt(in, out net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		n, err := out.Read(buf)
		if n > 0 {
			end := p.total.Add(int64(n))
			start := end - int64(n)
			// Flip positions are k·every + every/2; the first one at or after start:
			k := (start - p.every/2 + p.every - 1) / p.every
			for pos := k*p.every + p.every/2; pos < end; pos += p.every {
				if pos >= start {
					buf[pos-start] ^= 0x08
					p.flipped.Add(1)
				}
			}
			if _, werr := in.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *flipProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}
