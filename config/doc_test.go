package config

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"strings"
	"testing"
)

// The option structs are the JSON config's documentation: every field
// says what it does and how the Caddyfile spells it (in its own comment,
// or in its type's for the small structs of a repeatable option).
func TestEveryOptionFieldIsDocumented(t *testing.T) {
	fset := token.NewFileSet()
	entries, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	structs := 0
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.TYPE {
				continue
			}
			for _, spec := range gd.Specs {
				ts := spec.(*ast.TypeSpec)
				st, ok := ts.Type.(*ast.StructType)
				if !ok || !ts.Name.IsExported() {
					continue
				}
				structs++
				typeDoc := gd.Doc.Text() + ts.Doc.Text()
				for _, field := range st.Fields.List {
					if field.Tag == nil || !strings.Contains(field.Tag.Value, `json:"`) {
						continue
					}
					fname := fieldName(field)
					doc := field.Doc.Text()
					if strings.TrimSpace(doc) == "" {
						t.Errorf("%s: %s.%s has no comment; say what it does, its unit, default and Caddyfile spelling",
							fset.Position(field.Pos()), ts.Name.Name, fname)
						continue
					}
					if !strings.Contains(doc, "Caddyfile:") && !strings.Contains(typeDoc, "Caddyfile:") {
						t.Errorf("%s: the comment of %s.%s does not give its Caddyfile spelling (\"Caddyfile: name <value>\")",
							fset.Position(field.Pos()), ts.Name.Name, fname)
					}
				}
			}
		}
	}
	if structs < 4 { // Options, Trust, SLA, Alert
		t.Fatalf("found %d option structs; is the test reading the right files?", structs)
	}
}

func fieldName(f *ast.Field) string {
	if len(f.Names) > 0 {
		return f.Names[0].Name
	}
	return "(embedded)"
}
