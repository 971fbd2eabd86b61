//go:build ignore

// gen_codetables writes default_codetables.json: the built-in high-ratio code tables, learned on the real KV
// calibration fixture (codec.Histogram.CodeTable of its bf16 tensors). fp32 gets the bf16 table: its exponent
// field is the same 8 bits, and the fixture's values converted to fp32 exactly have the same exponents. Run with
// `go generate ./pybind` from the repository root; TestDefaultCodeTablesAreTheFixtures checks the file is current.
package main

import (
	"encoding/json"
	"log"
	"os"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/internal/safetensors"
)

func main() {
	f, err := safetensors.ReadFile("../tests/data/kv_calibration.safetensors")
	if err != nil {
		log.Fatal(err)
	}
	h, err := codec.NewHistogram(codec.BF16)
	if err != nil {
		log.Fatal(err)
	}
	for _, t := range f.Tensors {
		if t.DType == "BF16" {
			if err := h.Add(t.Data); err != nil {
				log.Fatal(err)
			}
		}
	}
	bf16, err := h.CodeTable()
	if err != nil {
		log.Fatal(err)
	}
	fp32 := *bf16
	fp32.DType = codec.FP32
	b, err := json.MarshalIndent([]*codec.CodeTable{bf16, &fp32}, "", " ")
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile("default_codetables.json", append(b, '\n'), 0o644); err != nil {
		log.Fatal(err)
	}
}
