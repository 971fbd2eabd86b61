//go:build tools

// Package tools pins the build tools of the Python extension in go.mod, so `go build` of them needs no
// `go install …@latest` and resolves the same versions everywhere:
//
//   - gopy turns the Go package ../../pybind into a CPython extension (make py-build);
//   - goimports is run by gopy on the code it generates.
//
// gopy v0.4.10 pins golang.org/x/tools v0.16.0, which does not build with Go 1.26; go.mod raises it.
package tools

import (
	_ "github.com/go-python/gopy"
	_ "golang.org/x/tools/cmd/goimports"
)
