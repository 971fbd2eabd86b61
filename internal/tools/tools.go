//go:build tools

// Package tools pins the build tools in go.mod, so `go build` of them needs no `go install …@latest` (nor a
// system package) and resolves the same versions everywhere:
//
//   - gopy turns the Go package ../../pybind into a CPython extension (make py-build);
//   - goimports is run by gopy on the code it generates;
//   - nats-server is the external NATS server the tests run (make deps builds it into build/bin; see
//     ../natstest), the same release as the server package nats/ embeds.
//
// gopy v0.4.10 pins golang.org/x/tools v0.16.0, which does not build with Go 1.26; go.mod raises it.
package tools

import (
	_ "github.com/go-python/gopy"
	_ "github.com/nats-io/nats-server/v2"
	_ "golang.org/x/tools/cmd/goimports"
)
