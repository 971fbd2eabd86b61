//go:build !amd64 || !gc || noasm

package codec

// hasBF16Asm reports whether encodeBF16Nibbles and decodeBF16Nibbles run assembly kernels.
const hasBF16Asm = false

func encodeBF16Nibbles(p *encPart) { encodeBF16NibblesGo(p) }

func decodeBF16Nibbles(p *decPart) { decodeBF16NibblesGo(p) }

func encodeBF16Span(p *encPart, i0, i, i1 int) bool { return encodeBF16Range(p, i0, i, i1) }

func decodeBF16Span(p *decPart, i, i1 int) { decodeBF16Range(p, i, i1) }
