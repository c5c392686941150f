package caddymodule

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// notRejections are error reasons the sidecar answers with that are not
// refusals of the client's request: the agent or the storage failed.
var notRejections = []string{"agent_unreachable", "agent_timeout", "invalid_agent_answer", "storage_unavailable", "record_not_durable", "stream_needs_one_call", "fleet_backlog_full"}

// TestRejectionReasonsAreAllKnown reads the source for every reason a
// refusal is built with (protocol.NewError, delegation's reject,
// bodyError) and checks the metrics list has it, so a new reason is not
// silently counted as "other".
func TestRejectionReasonsAreAllKnown(t *testing.T) {
	known := map[string]bool{}
	for _, rs := range rejectionReasons {
		for _, r := range rs {
			known[r] = true
		}
	}
	var files []string
	for _, pattern := range []string{"*.go", "protocol/*.go", "delegation/*.go"} {
		m, _ := filepath.Glob(pattern)
		files = append(files, m...)
	}
	fset := token.NewFileSet()
	found := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(file, func(n ast.Node) bool {
			var reason ast.Expr
			switch n := n.(type) {
			case *ast.CallExpr:
				name := ""
				switch fn := n.Fun.(type) {
				case *ast.Ident:
					name = fn.Name
				case *ast.SelectorExpr:
					name = fn.Sel.Name
				}
				if (name == "NewError" || name == "reject") && len(n.Args) >= 2 {
					reason = n.Args[1]
				}
			case *ast.CompositeLit:
				if id, ok := n.Type.(*ast.Ident); ok && id.Name == "bodyError" && len(n.Elts) >= 2 {
					reason = n.Elts[1]
				}
			case *ast.KeyValueExpr: // Rejection{..., Reason: "..."}
				if k, ok := n.Key.(*ast.Ident); ok && k.Name == "Reason" {
					reason = n.Value
				}
			}
			lit, ok := reason.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			r, _ := strconv.Unquote(lit.Value)
			found++
			if !known[r] && !slices.Contains(notRejections, r) {
				t.Errorf("%s: reason %q is not in rejectionReasons", fset.Position(lit.Pos()), r)
			}
			return true
		})
	}
	if found < 60 {
		t.Fatalf("found only %d reasons in the source; is the scan broken?", found)
	}
}

func TestUnknownRejectionsAreOther(t *testing.T) {
	agent := "urn:asap:agent:other-test"
	rc := newRejectionCounters(agent)
	series := seriesOf(rejectionsTotal)
	for i := range 100 {
		rc.count(-32700, "attacker-chosen-"+strconv.Itoa(i))
	}
	rc.count(-1, "anything")
	if n := seriesOf(rejectionsTotal); n != series {
		t.Fatalf("unknown reasons grew the series from %d to %d", series, n)
	}
	if v := counterValue(rejectionsTotal.WithLabelValues(agent, "parse_error", otherLabel)); v != 100 {
		t.Fatalf("parse_error/other = %v, want 100", v)
	}
	if v := counterValue(rejectionsTotal.WithLabelValues(agent, otherLabel, otherLabel)); v != 1 {
		t.Fatalf("other/other = %v, want 1", v)
	}
}

func seriesOf(c prometheus.Collector) int {
	ch := make(chan prometheus.Metric)
	go func() { c.Collect(ch); close(ch) }()
	n := 0
	for range ch {
		n++
	}
	return n
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	_ = c.Write(&m)
	return m.GetCounter().GetValue()
}
