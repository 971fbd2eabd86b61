package nixl

import (
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/require"
)

// A row reads back as written, host or device memory alike, and only under its own nonce and index; a changed
// byte of any field, or a memory word this version does not know, leaves it unpublished.
func TestTableRows(t *testing.T) {
	tbl := make([]byte, tableLen(3))
	putHeader(tbl, 3, 42)
	rows := []entry{
		{addr: 0x7f00_0000_1000, n: 4096, crc: 0xDEADBEEF, mem: MemDRAM},
		{addr: 0x7e00_0000_0000, n: 1 << 20, crc: 7, mem: MemVRAM, dev: 3},
		{},
	}
	for i, e := range rows {
		putEntry(tbl, 42, i, e)
	}
	for i, want := range rows {
		r := tbl[headerSize+entrySize*i:][:entrySize]
		got, ok := parseEntry(r, 42, i)
		require.True(t, ok, "row %d", i)
		require.Equal(t, want, got)
		_, ok = parseEntry(r, 43, i)
		require.False(t, ok, "another nonce")
		_, ok = parseEntry(r, 42, i+1)
		require.False(t, ok, "another index")
		for b := range entrySize {
			if b >= 16 && b < 20 {
				continue // the check word itself
			}
			r[b] ^= 0x10
			_, ok = parseEntry(r, 42, i)
			require.False(t, ok, "row %d with byte %d changed", i, b)
			r[b] ^= 0x10
		}
	}
	// A memory type this version does not read, with its check word right: not published.
	e := entry{addr: 1 << 20, n: 8, mem: MemType(7)}
	putEntry(tbl, 42, 2, e)
	_, ok := parseEntry(tbl[headerSize+2*entrySize:], 42, 2)
	require.False(t, ok)
	require.Equal(t, uint32(7|3<<16), entry{mem: 7, dev: 3}.where())
	require.Equal(t, uint16(tableVersion), binary.LittleEndian.Uint16(tbl[4:]))
}
