package transport

import (
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// FuzzServerInput sends arbitrary bytes to a producer as a consumer would and
// checks that it neither crashes nor stops serving.
func FuzzServerInput(f *testing.F) {
	golden := append([]byte{0x53, 0x5A, 0x54, 0x50, 0x00, 0x02, 0x01, 0x02}, make([]byte, 16)...)
	golden = append(golden, 'a', 'b')
	f.Add(golden)
	withProof := append(append([]byte{}, golden...), make([]byte, proofLen)...) // a wrong proof
	f.Add(append(withProof, 0x01, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0))
	f.Add(append(append([]byte{}, golden[:4]...), 0x00, 0x01, 0x01, 0x02)) // version 1
	f.Add(append(append([]byte{}, golden...), 0x01, 0, 0, 0, 0, 0, 0, 0x05))
	f.Add(append(append([]byte{}, golden[:7]...), 0x02))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))

	s, err := Listen("127.0.0.1:0", WithIOTimeout(200*time.Millisecond))
	if err != nil {
		f.Fatal(err)
	}
	defer s.Close()
	chunks := [][]byte{[]byte("hi"), make([]byte, 5000)}
	f.Fuzz(func(t *testing.T, in []byte) {
		s.Offer("ab", testSecret, NewBytesPayload(chunks, nil)) // again if a previous input fetched it
		c, err := net.Dial("tcp", addrOf(s))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write(in)
		c.(*net.TCPConn).CloseWrite()
		// The producer answers and closes, or resets a connection it
		// will not talk to; it must not leave it hanging.
		if _, err := io.Copy(io.Discard, c); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("producer did not close the connection: %v", err)
			}
		}
	})
	id := NewHandoffID()
	if err := s.Offer(id, testSecret, NewBytesPayload(chunks, nil)); err != nil {
		f.Fatal(err)
	}
	if _, err := Fetch(context.Background(), addrOf(s), id, testSecret, func(int, []byte) error { return nil }); err != nil {
		f.Fatalf("producer stopped serving: %v", err)
	}
}
