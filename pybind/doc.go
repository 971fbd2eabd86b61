// Package pybind is the surface of SplitZip that gopy turns into the CPython extension
// splitzip_connector._core (make py-build). The Pythonic API lives in python/splitzip_connector; this package
// is deliberately flat so that the generated glue stays trivial and fast:
//
//   - memory is passed as integers: a host address and a length (numpy's and torch's data pointers), or a
//     device address and PyTorch's current stream handle; nothing is copied on the way in or out, and Go never
//     keeps an address past the call that received it;
//   - configuration and descriptions travel as strings (dtype names, JSON);
//   - Go objects that live across calls (codebooks, histograms) are integer handles released explicitly;
//   - every function returns (value, error): gopy turns a non-nil error into a Python RuntimeError whose
//     message starts with a bracketed kind ("[corrupt] splitzip: corrupt frame: …"), which the Python package
//     maps to its exception classes (see kinds in errors.go).
//
// gopy releases the GIL around every call, so Python threads compress concurrently; every function here is
// safe for concurrent use.
package pybind
