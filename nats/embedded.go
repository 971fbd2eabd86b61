package nats

import (
	"fmt"
	"os"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
)

// embeddedReadyTimeout bounds the wait for the embedded server to accept
// connections.
const embeddedReadyTimeout = 10 * time.Second

// embedded is an in-process NATS server with JetStream.
type embedded struct {
	srv     *natsserver.Server
	tempDir string // removed on shutdown; "" when the caller chose the store dir
}

// startEmbedded starts a JetStream-enabled server on o.EmbeddedHost and
// o.EmbeddedPort and waits until it accepts connections.
func startEmbedded(o *Options) (*embedded, error) {
	e := &embedded{}
	storeDir := o.EmbeddedStoreDir
	if storeDir == "" {
		dir, err := os.MkdirTemp("", "splitzip-nats-*")
		if err != nil {
			return nil, fmt.Errorf("splitzip/nats: embedded server store dir: %w", err)
		}
		storeDir, e.tempDir = dir, dir
	}
	sopts := &natsserver.Options{
		ServerName:    "splitzip-embedded",
		Host:          o.EmbeddedHost,
		Port:          o.EmbeddedPort,
		JetStream:     true,
		StoreDir:      storeDir,
		NoLog:         true,
		NoSigs:        true,
		Username:      o.User,
		Password:      o.Password,
		Authorization: o.Token,
	}
	srv, err := natsserver.NewServer(sopts)
	if err != nil {
		e.removeTemp()
		return nil, fmt.Errorf("splitzip/nats: embedded server: %w", err)
	}
	e.srv = srv
	srv.Start()
	if !srv.ReadyForConnections(embeddedReadyTimeout) {
		e.shutdown()
		return nil, fmt.Errorf("splitzip/nats: embedded server on %s:%d not ready within %v",
			o.EmbeddedHost, o.EmbeddedPort, embeddedReadyTimeout)
	}
	return e, nil
}

func (e *embedded) clientURL() string { return e.srv.ClientURL() }

func (e *embedded) shutdown() {
	if e.srv != nil {
		e.srv.Shutdown()
		e.srv.WaitForShutdown()
	}
	e.removeTemp()
}

func (e *embedded) removeTemp() {
	if e.tempDir != "" {
		_ = os.RemoveAll(e.tempDir)
	}
}
