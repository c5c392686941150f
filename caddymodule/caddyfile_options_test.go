package caddymodule

import (
	"bufio"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// This file reads, from the source, which keywords the module's Caddyfile
// parsers accept, and which keywords a Caddyfile uses, so that
// TestCaddyfileAdaptGoldenCoversEveryOption can tell an option with no
// golden file. Both sides name a keyword by its path: the directive (or
// "(global)" and the global option), the keywords of the enclosing
// sub-blocks, then the keyword itself: "asap sla window".

const globalPath = "(global)"

const httpcaddyfilePath = "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

// parserOptions returns every keyword the Caddyfile parsers of the module
// rooted at root accept, mapped to where its case label is.
//
// A parser is a function given to httpcaddyfile.RegisterHandlerDirective,
// RegisterDirective or RegisterGlobalOption, and every function of the
// module it calls. A keyword is a string case label of a switch on a token
// (d.Val(), or a variable assigned from it). What a case's body parses,
// in an inline switch or in a function it calls, is that keyword's
// sub-block.
func parserOptions(root string) (map[string]string, error) {
	src, err := loadModuleSource(root)
	if err != nil {
		return nil, err
	}
	w := &optionWalker{src: src, opts: map[string]string{}, seen: map[string]bool{}}
	for _, pkg := range src.sortedPkgs() {
		for _, file := range pkg.files {
			w.findRoots(pkg, file)
		}
	}
	if len(w.errs) > 0 {
		return w.opts, fmt.Errorf("%s", strings.Join(w.errs, "\n"))
	}
	return w.opts, nil
}

// typeRef names a type: dir is its package's directory, "" outside the
// module.
type typeRef struct{ dir, name string }

type goPkg struct {
	dir     string
	files   []*ast.File
	funcs   map[string]*ast.FuncDecl
	methods map[string]map[string]*ast.FuncDecl // type → method
	fields  map[string]map[string]typeRef       // struct type → field
	fileOf  map[*ast.FuncDecl]*ast.File
}

type moduleSource struct {
	fset    *token.FileSet
	root    string
	modPath string
	pkgs    map[string]*goPkg // by directory
}

func loadModuleSource(root string) (*moduleSource, error) {
	modPath, err := readModulePath(filepath.Join(root, "go.mod"))
	if err != nil {
		return nil, err
	}
	src := &moduleSource{fset: token.NewFileSet(), root: filepath.Clean(root), modPath: modPath, pkgs: map[string]*goPkg{}}
	err = filepath.WalkDir(src.root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != src.root && (name == "testdata" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(src.fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		dir := filepath.Dir(path)
		pkg := src.pkgs[dir]
		if pkg == nil {
			pkg = &goPkg{dir: dir, funcs: map[string]*ast.FuncDecl{}, methods: map[string]map[string]*ast.FuncDecl{},
				fields: map[string]map[string]typeRef{}, fileOf: map[*ast.FuncDecl]*ast.File{}}
			src.pkgs[dir] = pkg
		}
		pkg.files = append(pkg.files, f)
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, pkg := range src.pkgs {
		src.index(pkg)
	}
	return src, nil
}

func readModulePath(gomod string) (string, error) {
	f, err := os.Open(gomod)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`), nil
		}
	}
	return "", fmt.Errorf("%s: no module line", gomod)
}

func (src *moduleSource) sortedPkgs() []*goPkg {
	var out []*goPkg
	for _, p := range src.pkgs {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].dir < out[j].dir })
	return out
}

func (src *moduleSource) index(pkg *goPkg) {
	for _, file := range pkg.files {
		for _, decl := range file.Decls {
			switch d := decl.(type) {
			case *ast.FuncDecl:
				pkg.fileOf[d] = file
				if d.Recv == nil || len(d.Recv.List) == 0 {
					pkg.funcs[d.Name.Name] = d
					continue
				}
				recv := src.typeOf(pkg, file, d.Recv.List[0].Type).name
				if pkg.methods[recv] == nil {
					pkg.methods[recv] = map[string]*ast.FuncDecl{}
				}
				pkg.methods[recv][d.Name.Name] = d
			case *ast.GenDecl:
				for _, spec := range d.Specs {
					ts, ok := spec.(*ast.TypeSpec)
					if !ok {
						continue
					}
					st, ok := ts.Type.(*ast.StructType)
					if !ok {
						continue
					}
					fields := map[string]typeRef{}
					for _, fl := range st.Fields.List {
						t := src.typeOf(pkg, file, fl.Type)
						if len(fl.Names) == 0 { // embedded: named after its type
							fields[t.name] = t
						}
						for _, n := range fl.Names {
							fields[n.Name] = t
						}
					}
					pkg.fields[ts.Name.Name] = fields
				}
			}
		}
	}
}

// importDir says whether name is an import of file, and where that
// package's source is ("" outside the module).
func (src *moduleSource) importDir(file *ast.File, name string) (dir, importPath string, ok bool) {
	for _, imp := range file.Imports {
		p, _ := strconv.Unquote(imp.Path.Value)
		local := p[strings.LastIndex(p, "/")+1:]
		if imp.Name != nil {
			local = imp.Name.Name
		}
		if local != name {
			continue
		}
		switch {
		case p == src.modPath:
			return src.root, p, true
		case strings.HasPrefix(p, src.modPath+"/"):
			return filepath.Join(src.root, filepath.FromSlash(strings.TrimPrefix(p, src.modPath+"/"))), p, true
		}
		return "", p, true
	}
	return "", "", false
}

// typeOf reads a type expression written in file.
func (src *moduleSource) typeOf(pkg *goPkg, file *ast.File, e ast.Expr) typeRef {
	switch t := e.(type) {
	case *ast.StarExpr:
		return src.typeOf(pkg, file, t.X)
	case *ast.IndexExpr:
		return src.typeOf(pkg, file, t.X)
	case *ast.IndexListExpr:
		return src.typeOf(pkg, file, t.X)
	case *ast.Ident:
		return typeRef{pkg.dir, t.Name}
	case *ast.SelectorExpr:
		if x, ok := t.X.(*ast.Ident); ok {
			if dir, _, ok := src.importDir(file, x.Name); ok {
				return typeRef{dir, t.Sel.Name}
			}
		}
	}
	return typeRef{}
}

func (src *moduleSource) pos(p token.Pos) string {
	at := src.fset.Position(p)
	if rel, err := filepath.Rel(src.root, at.Filename); err == nil {
		at.Filename = filepath.ToSlash(rel)
	}
	return fmt.Sprintf("%s:%d", at.Filename, at.Line)
}

// fn is a function body to read: a declaration or a literal.
type fn struct {
	pkg  *goPkg
	file *ast.File
	recv *ast.FieldList
	typ  *ast.FuncType
	body *ast.BlockStmt
}

func declFn(pkg *goPkg, d *ast.FuncDecl) fn {
	return fn{pkg: pkg, file: pkg.fileOf[d], recv: d.Recv, typ: d.Type, body: d.Body}
}

// scope is what the walker knows about a function's variables.
type scope struct {
	fn
	types    map[string]typeRef // variables whose type is known
	declared map[string]bool    // every local name (shadows imports)
	tokens   map[string]bool    // variables holding a token (x := d.Val())
}

type optionWalker struct {
	src  *moduleSource
	opts map[string]string
	seen map[string]bool
	errs []string
}

func (w *optionWalker) fail(format string, a ...any) {
	w.errs = append(w.errs, fmt.Sprintf(format, a...))
}

func (w *optionWalker) add(path []string, at string) {
	k := strings.Join(path, " ")
	if _, ok := w.opts[k]; !ok {
		w.opts[k] = at
	}
}

// findRoots starts a walk at every directive or global option file
// registers.
func (w *optionWalker) findRoots(pkg *goPkg, file *ast.File) {
	ast.Inspect(file, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok || len(call.Args) != 2 {
			return true
		}
		x, ok := sel.X.(*ast.Ident)
		if !ok {
			return true
		}
		if _, p, ok := w.src.importDir(file, x.Name); !ok || p != httpcaddyfilePath {
			return true
		}
		var base []string
		switch sel.Sel.Name {
		case "RegisterHandlerDirective", "RegisterDirective":
		case "RegisterGlobalOption":
			base = []string{globalPath}
		default:
			return true
		}
		lit, ok := call.Args[0].(*ast.BasicLit)
		if !ok || lit.Kind != token.STRING {
			w.fail("%s: the directive name is not a string literal; this test reads it from the source", w.src.pos(call.Pos()))
			return true
		}
		name, _ := strconv.Unquote(lit.Value)
		path := append(base, name)
		w.add(path, w.src.pos(lit.Pos()))
		var target []fn
		switch f := call.Args[1].(type) {
		case *ast.FuncLit:
			target = []fn{{pkg: pkg, file: file, typ: f.Type, body: f.Body}}
		default:
			target = w.resolve(newScope(w.src, fn{pkg: pkg, file: file}), &ast.CallExpr{Fun: f})
		}
		if len(target) == 0 {
			w.fail("%s: cannot find the parser of %q", w.src.pos(call.Pos()), name)
		}
		for _, t := range target {
			w.walkFunc(t, path)
		}
		return true
	})
}

func (w *optionWalker) walkFunc(f fn, path []string) {
	if f.body == nil {
		return
	}
	key := fmt.Sprintf("%s|%s", w.src.pos(f.body.Pos()), strings.Join(path, " "))
	if w.seen[key] {
		return
	}
	w.seen[key] = true
	s := newScope(w.src, f)
	w.walkNode(s, f.body, path)
}

func newScope(src *moduleSource, f fn) *scope {
	s := &scope{fn: f, types: map[string]typeRef{}, declared: map[string]bool{}, tokens: map[string]bool{}}
	for _, fl := range []*ast.FieldList{f.recv, paramsOf(f.typ)} {
		if fl == nil {
			continue
		}
		for _, field := range fl.List {
			t := src.typeOf(f.pkg, f.file, field.Type)
			for _, n := range field.Names {
				s.types[n.Name] = t
				s.declared[n.Name] = true
			}
		}
	}
	if f.body == nil {
		return s
	}
	// Source order is good enough: parsers assign before they use.
	ast.Inspect(f.body, func(n ast.Node) bool {
		switch x := n.(type) {
		case *ast.AssignStmt:
			if len(x.Lhs) != len(x.Rhs) {
				for _, l := range x.Lhs {
					if id, ok := l.(*ast.Ident); ok && x.Tok == token.DEFINE {
						s.declared[id.Name] = true
					}
				}
				return true
			}
			for i, l := range x.Lhs {
				id, ok := l.(*ast.Ident)
				if !ok {
					continue
				}
				if x.Tok == token.DEFINE {
					s.declared[id.Name] = true
				}
				if isTokenCall(x.Rhs[i]) {
					s.tokens[id.Name] = true
				}
				if t := s.exprType(src, x.Rhs[i]); t.name != "" {
					s.types[id.Name] = t
				}
			}
		case *ast.ValueSpec:
			for i, id := range x.Names {
				s.declared[id.Name] = true
				switch {
				case x.Type != nil:
					s.types[id.Name] = src.typeOf(f.pkg, f.file, x.Type)
				case i < len(x.Values):
					if isTokenCall(x.Values[i]) {
						s.tokens[id.Name] = true
					}
					if t := s.exprType(src, x.Values[i]); t.name != "" {
						s.types[id.Name] = t
					}
				}
			}
		}
		return true
	})
	return s
}

func paramsOf(t *ast.FuncType) *ast.FieldList {
	if t == nil {
		return nil
	}
	return t.Params
}

// isTokenCall matches x.Val(), the current Caddyfile token.
func isTokenCall(e ast.Expr) bool {
	call, ok := e.(*ast.CallExpr)
	if !ok || len(call.Args) != 0 {
		return false
	}
	sel, ok := call.Fun.(*ast.SelectorExpr)
	return ok && sel.Sel.Name == "Val"
}

func (s *scope) exprType(src *moduleSource, e ast.Expr) typeRef {
	switch x := e.(type) {
	case *ast.Ident:
		return s.types[x.Name]
	case *ast.ParenExpr:
		return s.exprType(src, x.X)
	case *ast.StarExpr:
		return s.exprType(src, x.X)
	case *ast.UnaryExpr:
		if x.Op == token.AND {
			return s.exprType(src, x.X)
		}
	case *ast.CompositeLit:
		return src.typeOf(s.pkg, s.file, x.Type)
	case *ast.CallExpr:
		if id, ok := x.Fun.(*ast.Ident); ok && id.Name == "new" && len(x.Args) == 1 {
			return src.typeOf(s.pkg, s.file, x.Args[0])
		}
	case *ast.SelectorExpr:
		base := s.exprType(src, x.X)
		if pkg := src.pkgs[base.dir]; base.dir != "" && pkg != nil {
			return pkg.fields[base.name][x.Sel.Name]
		}
	}
	return typeRef{}
}

func (w *optionWalker) walkNode(s *scope, n ast.Node, path []string) {
	ast.Inspect(n, func(n ast.Node) bool {
		switch x := n.(type) {
		case *ast.SwitchStmt:
			if !s.isTokenSwitch(x) {
				return true
			}
			for _, stmt := range x.Body.List {
				cc := stmt.(*ast.CaseClause)
				if cc.List == nil { // default
					for _, b := range cc.Body {
						w.walkNode(s, b, path)
					}
				}
				for _, label := range cc.List {
					lit, ok := label.(*ast.BasicLit)
					if !ok || lit.Kind != token.STRING {
						w.fail("%s: a case of a Caddyfile token switch is not a string literal; write the keyword in the case so this test sees it",
							w.src.pos(label.Pos()))
						continue
					}
					kw, _ := strconv.Unquote(lit.Value)
					sub := append(append([]string(nil), path...), kw)
					w.add(sub, w.src.pos(lit.Pos()))
					for _, b := range cc.Body {
						w.walkNode(s, b, sub)
					}
				}
			}
			return false
		case *ast.CallExpr:
			for _, callee := range w.resolve(s, x) {
				w.walkFunc(callee, path)
			}
		}
		return true
	})
}

func (s *scope) isTokenSwitch(sw *ast.SwitchStmt) bool {
	if sw.Tag == nil {
		return false
	}
	if id, ok := sw.Tag.(*ast.Ident); ok {
		return s.tokens[id.Name]
	}
	return isTokenCall(sw.Tag)
}

// resolve finds the module functions a call may run.
func (w *optionWalker) resolve(s *scope, call *ast.CallExpr) []fn {
	switch f := call.Fun.(type) {
	case *ast.Ident:
		if s.declared[f.Name] {
			return nil // a func value
		}
		if d := s.pkg.funcs[f.Name]; d != nil {
			return []fn{declFn(s.pkg, d)}
		}
	case *ast.SelectorExpr:
		if x, ok := f.X.(*ast.Ident); ok && !s.declared[x.Name] {
			if dir, _, ok := w.src.importDir(s.file, x.Name); ok {
				if pkg := w.src.pkgs[dir]; dir != "" && pkg != nil {
					if d := pkg.funcs[f.Sel.Name]; d != nil {
						return []fn{declFn(pkg, d)}
					}
				}
				return nil
			}
		}
		if t := s.exprType(w.src, f.X); t.name != "" {
			if pkg := w.src.pkgs[t.dir]; t.dir != "" && pkg != nil {
				if d := pkg.methods[t.name][f.Sel.Name]; d != nil {
					return []fn{declFn(pkg, d)}
				}
			}
			return nil
		}
		// The receiver's type is unknown: any method of that name here
		// that switches on tokens could be the one.
		var cands []fn
		var names []string
		for typ, ms := range s.pkg.methods {
			if d := ms[f.Sel.Name]; d != nil && w.switchesOnTokens(declFn(s.pkg, d)) {
				cands = append(cands, declFn(s.pkg, d))
				names = append(names, typ)
			}
		}
		if len(cands) > 1 {
			sort.Strings(names)
			w.fail("%s: cannot tell which %s (of %s) this call parses with; call it on a variable assigned from new(T) or a field of a known struct, or give the sub-block parser its own function",
				w.src.pos(call.Pos()), f.Sel.Name, strings.Join(names, ", "))
			return nil
		}
		return cands
	}
	return nil
}

func (w *optionWalker) switchesOnTokens(f fn) bool {
	if f.body == nil {
		return false
	}
	s := newScope(w.src, f)
	found := false
	ast.Inspect(f.body, func(n ast.Node) bool {
		if sw, ok := n.(*ast.SwitchStmt); ok && s.isTokenSwitch(sw) {
			found = true
		}
		return !found
	})
	return found
}

// goldenOptionPaths returns the keyword paths a Caddyfile uses: for each
// line of a directive's block, the block's path plus the line's tokens,
// every prefix of them, so a keyword read in argument position ("alert
// webhook") counts as well.
func goldenOptionPaths(name, text string) (map[string]bool, error) {
	blocks, err := caddyfile.Parse(name, []byte(text))
	if err != nil {
		return nil, err
	}
	paths := map[string]bool{}
	for i, sb := range blocks {
		var base []string
		if i == 0 && len(sb.Keys) == 0 {
			base = []string{globalPath}
		}
		for _, seg := range sb.Segments {
			addSegmentPaths(paths, base, seg)
		}
	}
	return paths, nil
}

func addSegmentPaths(paths map[string]bool, base []string, seg caddyfile.Segment) {
	sameLine := func(a, b caddyfile.Token) bool { return b.Line == a.Line+a.NumLineBreaks() }
	stack := [][]string{base}
	for i := 0; i < len(seg); {
		if seg[i].Text == "}" {
			if len(stack) > 1 {
				stack = stack[:len(stack)-1]
			}
			i++
			continue
		}
		cur := stack[len(stack)-1]
		words := []string{seg[i].Text}
		j := i + 1
		for ; j < len(seg) && sameLine(seg[j-1], seg[j]) && seg[j].Text != "{" && seg[j].Text != "}"; j++ {
			words = append(words, seg[j].Text)
		}
		for k := 1; k <= len(words); k++ {
			paths[strings.Join(append(append([]string(nil), cur...), words[:k]...), " ")] = true
		}
		if j < len(seg) && seg[j].Text == "{" && sameLine(seg[j-1], seg[j]) {
			stack = append(stack, append(append([]string(nil), cur...), words[0]))
			j++
		}
		i = j
	}
}

// uncovered lists, sorted, the options no used path ends with (a directive
// may sit inside route or handle).
func uncovered(opts map[string]string, used map[string]string) []string {
	suffixes := map[string]bool{}
	for p := range used {
		words := strings.Fields(p)
		for i := range words {
			suffixes[strings.Join(words[i:], " ")] = true
		}
	}
	var out []string
	for o := range opts {
		if !suffixes[o] {
			out = append(out, o)
		}
	}
	sort.Strings(out)
	return out
}

// The reader above must see every way a parser here is written, or an
// option could be added unseen. A made-up module shows each: inline
// sub-blocks, sub-block parsers as functions, as methods of a field, in
// another package, keywords in argument position, global options; and
// that a Caddyfile missing one of them, or using it at the wrong level,
// is reported.
func TestCaddyfileOptionReaderSeesEveryParserShape(t *testing.T) {
	root := t.TempDir()
	write := func(name, text string) {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "module example.com/m\n\ngo 1.26\n")
	write("p/p.go", `package p

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	"example.com/m/q"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("thing", parseThing)
	httpcaddyfile.RegisterGlobalOption("gopt", func(d *caddyfile.Dispenser, _ any) (any, error) {
		for d.NextBlock(0) {
			switch d.Val() {
			case "g1":
			}
		}
		return nil, nil
	})
}

func parseThing(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	t := new(Thing)
	return t, t.UnmarshalCaddyfile(h.Dispenser)
}

type Thing struct {
	Sub   *Sub
	Other Other
}

type Sub struct{}

type Other struct{}

func (t *Thing) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	for d.NextBlock(0) {
		opt := d.Val()
		switch opt {
		case "alpha", "beta":
		case "inline":
			for d.NextBlock(1) {
				switch d.Val() {
				case "inner":
				}
			}
		case "sub":
			t.Sub = new(Sub)
			return t.Sub.UnmarshalCaddyfile(d)
		case "helper":
			return parseHelper(d)
		case "remote":
			return q.Parse(d)
		case "sink":
			d.NextArg()
			kind := d.Val()
			switch kind {
			case "webhook":
			}
		}
	}
	return nil
}

func (s *Sub) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	switch d.Val() {
	case "deep":
	}
	return nil
}

// Never called: its keyword must not be reported.
func (o Other) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	switch d.Val() {
	case "never":
	}
	return nil
}

func parseHelper(d *caddyfile.Dispenser) error {
	switch d.Val() {
	case "helped":
	}
	return nil
}

// Not a switch on a token.
func mode(s string) bool {
	switch s {
	case "ignored":
	}
	return parseHelper(nil) == nil
}
`)
	write("q/q.go", `package q

import "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

func Parse(d *caddyfile.Dispenser) error {
	switch d.Val() {
	case "far":
	}
	return nil
}
`)
	opts, err := parserOptions(root)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for o := range opts {
		got = append(got, o)
	}
	sort.Strings(got)
	want := []string{
		"(global) gopt", "(global) gopt g1",
		"thing", "thing alpha", "thing beta", "thing helper", "thing helper helped",
		"thing inline", "thing inline inner", "thing remote", "thing remote far",
		"thing sink", "thing sink webhook", "thing sub", "thing sub deep",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("options read from the parsers:\n got %q\nwant %q", got, want)
	}
	src, _ := os.ReadFile(filepath.Join(root, "p/p.go"))
	wantAt := fmt.Sprintf("p/p.go:%d", 1+strings.Count(string(src[:strings.Index(string(src), `case "deep"`)]), "\n"))
	if at := opts["thing sub deep"]; at != wantAt {
		t.Errorf("thing sub deep is at %s, want %s", at, wantAt)
	}

	full := `{
	gopt {
		g1
	}
}
:80 {
	route {
		thing {
			alpha
			beta on
			inline {
				inner
			}
			sub {
				deep
			}
			helper {
				helped
			}
			remote {
				far
			}
			sink webhook http://x
		}
	}
}
`
	check := func(caddyfileText string, want []string) {
		t.Helper()
		paths, err := goldenOptionPaths("Caddyfile", caddyfileText)
		if err != nil {
			t.Fatal(err)
		}
		used := map[string]string{}
		for p := range paths {
			used[p] = "Caddyfile"
		}
		if got := uncovered(opts, used); !reflect.DeepEqual(got, want) {
			t.Errorf("uncovered = %q, want %q in\n%s", got, want, caddyfileText)
		}
	}
	check(full, nil)
	check(strings.Replace(full, "\t\t\t\tdeep\n", "", 1), []string{"thing sub deep"})
	// At the wrong level it does not count.
	check(strings.Replace(full, "\t\t\t\tdeep\n", "", 1)+":81 {\n\tthing {\n\t\tdeep\n\t}\n}\n", []string{"thing sub deep"})
	check(strings.Replace(full, "sink webhook http://x", "sink", 1), []string{"thing sink webhook"})
	check(strings.Replace(full, "\t\tg1\n", "", 1), []string{"(global) gopt g1"})
}
