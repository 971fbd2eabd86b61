package pybind

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// kindConstants reads the package's sources and returns the value of every constant named Kind*, so that a
// kind added without a place in errorKinds fails the test below.
func kindConstants(t *testing.T) map[string]string {
	t.Helper()
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, ".", func(fi os.FileInfo) bool {
		return !strings.HasSuffix(fi.Name(), "_test.go")
	}, 0)
	require.NoError(t, err)
	out := map[string]string{}
	for _, f := range pkgs["pybind"].Files {
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, name := range vs.Names {
					if !strings.HasPrefix(name.Name, "Kind") {
						continue
					}
					lit, ok := vs.Values[i].(*ast.BasicLit)
					require.True(t, ok, "%s is not a string literal", name.Name)
					v, err := strconv.Unquote(lit.Value)
					require.NoError(t, err)
					out[name.Name] = v
				}
			}
		}
	}
	return out
}

func TestErrorKindsListsEveryConstant(t *testing.T) {
	consts := kindConstants(t)
	require.NotEmpty(t, consts)
	var values []string
	for _, v := range consts {
		values = append(values, v)
	}
	assert.ElementsMatch(t, values, errorKinds, "errorKinds must list every Kind constant once")
	seen := map[string]bool{}
	for _, k := range errorKinds {
		assert.False(t, seen[k], "kind %q listed twice", k)
		seen[k] = true
		assert.NotContains(t, k, ",", "kinds travel comma-separated")
	}
	assert.Equal(t, errorKinds, strings.Split(ErrorKinds(), ","))
}

func TestEveryReturnedKindIsListed(t *testing.T) {
	// Errors of every origin the binding classifies: codec, handles, arguments, connector, panics.
	_, err := Decode(0, 3, 0, 0)
	assert.Contains(t, errorKinds, kindPrefix(t, err))
	_, err = CodebookJSON(-5)
	assert.Equal(t, KindHandle, kindPrefix(t, err))
	_, err = ProducerNew(9999, `{"engine_id":"x"}`)
	assert.Contains(t, errorKinds, kindPrefix(t, err))
	_, err = EndpointOptions(`{"engine_id":"x","staging_bytes":-1}`)
	assert.Equal(t, KindOption, kindPrefix(t, err))
	func() {
		defer recoverInto(&err)
		panic("boom")
	}()
	assert.Equal(t, KindInternal, kindPrefix(t, err))
}
