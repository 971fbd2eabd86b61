//go:build !amd64 || !gc || noasm

package codec

// hasBF16Asm reports whether encodeBF16Nibbles and decodeBF16Nibbles run assembly kernels.
const hasBF16Asm = false

func encodeBF16Nibbles(p *encPart) { encodeBF16NibblesGo(p) }

func decodeBF16Nibbles(p *decPart) { decodeBF16NibblesGo(p) }
