package delegation

import (
	"strings"
	"testing"
	"time"
)

// reasons lists each link's problems by reason, leaf first.
func reasons(e *Explanation) [][]string {
	out := make([][]string, len(e.Links))
	for i, r := range e.Links {
		out[i] = []string{}
		for _, p := range r.Problems {
			out[i] = append(out[i], p.Reason)
		}
	}
	return out
}

func wantReasons(t *testing.T, e *Explanation, want ...[]string) {
	t.Helper()
	got := reasons(e)
	if len(got) != len(want) {
		t.Fatalf("%d link reports, want %d: %v", len(got), len(want), got)
	}
	for i := range want {
		if strings.Join(got[i], " ") != strings.Join(want[i], " ") {
			t.Errorf("link %d problems %v, want %v", i, got[i], want[i])
		}
	}
}

func none() []string { return []string{} }

func TestExplainGoodChain(t *testing.T) {
	f := newFixture(t)
	r := f.root()
	c := f.child(r)
	g := f.sign(with(f.childClaims(c, f.bob, f.carol, "del_gc"), "exp", f.at(20*time.Minute), "x-asap-constraints", map[string]any{"max_tasks": 3}), f.bob)
	e := f.verifier().Explain(join(g, c, r))
	if e.Rejection != nil || e.Chain == nil || len(e.Chain.Links) != 3 {
		t.Fatalf("verdict %v, chain %v", e.Rejection, e.Chain)
	}
	wantReasons(t, e, none(), none(), none())
	for i, want := range []string{KeyCnfJWK, KeyCnfJWK, KeyTrusted} {
		if e.Links[i].KeyFrom != want {
			t.Errorf("link %d key from %q, want %q", i, e.Links[i].KeyFrom, want)
		}
	}
	if e.Links[0].Link.Claims.ID != "del_gc" || e.Links[2].Raw != r {
		t.Errorf("reports out of order: %s, %.20s", e.Links[0].Link.Claims.ID, e.Links[2].Raw)
	}
}

// Where Verify stops at the first broken rule, Explain names each link's.
func TestExplainReportsEveryLinksProblems(t *testing.T) {
	f := newFixture(t)
	t.Run("forged middle link", func(t *testing.T) {
		r := f.root()
		c := f.sign(f.childClaims(r, f.alice, f.bob, "del_child"), f.evil)
		g := f.sign(with(f.childClaims(c, f.bob, f.carol, "del_gc"), "exp", f.at(20*time.Minute), "x-asap-constraints", map[string]any{"max_tasks": 3}), f.bob)
		e := f.verifier().Explain(join(g, c, r))
		wantRejection(t, e.Rejection, ClassSignature, "bad_signature")
		wantReasons(t, e, none(), []string{"bad_signature"}, none())
		if e.Links[1].KeyFrom != "" || e.Links[1].Problems[0].JTI != "del_child" {
			t.Errorf("forged link: key from %q, problem names %q", e.Links[1].KeyFrom, e.Links[1].Problems[0].JTI)
		}
	})
	t.Run("expired root under a forged leaf", func(t *testing.T) {
		r := f.sign(with(f.rootClaims(), "exp", f.at(-time.Hour)), f.self)
		c := f.sign(with(f.childClaims(r, f.alice, f.bob, "del_child"), "exp", f.at(-2*time.Hour)), f.evil)
		e := f.verifier().Explain(join(c, r))
		// Verify checks every signature before any time.
		wantRejection(t, e.Rejection, ClassSignature, "bad_signature")
		wantReasons(t, e, []string{"bad_signature", "expired"}, []string{"expired"})
	})
	t.Run("unknown issuer", func(t *testing.T) {
		r := f.sign(with(f.rootClaims(), "iss", f.evil.urn), f.evil)
		e := f.verifier().Explain(join(f.child(r), r))
		wantRejection(t, e.Rejection, ClassSignature, "untrusted_issuer")
		wantReasons(t, e, none(), []string{"untrusted_issuer"})
	})
	t.Run("attenuation violated", func(t *testing.T) {
		r := f.root()
		c := f.sign(with(f.childClaims(r, f.alice, f.bob, "del_child"), "scp", []string{ScopeDataWrite}, "x-asap-constraints", map[string]any{"max_tasks": 50}), f.alice)
		e := f.verifier().Explain(join(c, r))
		wantRejection(t, e.Rejection, ClassScope, "scope_escalation")
		// The rules tying a child to its parent stop at the first broken one.
		wantReasons(t, e, []string{"scope_escalation"}, none())
	})
	t.Run("unreadable parent", func(t *testing.T) {
		r := f.root()
		e := f.verifier().Explain(join(f.child(r), "not-a-token"))
		wantRejection(t, e.Rejection, ClassMalformed, e.Links[1].Problems[0].Reason)
		if e.Links[1].Link != nil || len(e.Links[1].Problems) != 1 {
			t.Fatalf("unreadable link: %+v", e.Links[1])
		}
		wantReasons(t, e, []string{"parent_unreadable"}, e.Links[1].reasons())
	})
	t.Run("same id twice", func(t *testing.T) {
		r := f.root()
		c := f.sign(f.childClaims(r, f.alice, f.bob, "del_root"), f.alice)
		e := f.verifier().Explain(join(c, r))
		wantRejection(t, e.Rejection, ClassMalformed, "chain_loop")
		wantReasons(t, e, none(), []string{"chain_loop"})
	})
	t.Run("cnf.jkt", func(t *testing.T) {
		r := f.sign(with(f.rootClaims(), "cnf", map[string]any{"jkt": Thumbprint(f.alice.pub)}), f.self)
		c := signEd(t, map[string]any{"alg": "Ed25519", "typ": "JWT", "jwk": jwkMap(f.alice.pub)}, f.childClaims(r, f.alice, f.bob, "del_child"), f.alice.priv)
		e := f.verifier().Explain(join(c, r))
		if e.Rejection != nil || e.Links[0].KeyFrom != KeyCnfJKT {
			t.Fatalf("verdict %v, key from %q", e.Rejection, e.Links[0].KeyFrom)
		}
	})
	t.Run("empty", func(t *testing.T) {
		e := f.verifier().Explain("  ")
		wantRejection(t, e.Rejection, ClassMalformed, "missing_token")
		if len(e.Links) != 0 {
			t.Fatalf("%d reports for no token", len(e.Links))
		}
	})
}

func (r LinkReport) reasons() []string {
	var out []string
	for _, p := range r.Problems {
		out = append(out, p.Reason)
	}
	return out
}

// Explain's verdict is Verify's, and every rejection Verify names a link
// for shows among that link's problems.
func TestExplainAgreesWithVerify(t *testing.T) {
	f := newFixture(t)
	whole := map[string]bool{"missing_token": true, "token_too_large": true, "chain_too_deep": true}
	for _, tc := range verifyCases() {
		t.Run(tc.name, func(t *testing.T) {
			f.tb = t
			v := f.verifier()
			if tc.tweak != nil {
				tc.tweak(v)
			}
			value := tc.value(f)
			_, want := v.Verify(value)
			e := v.Explain(value)
			if (want == nil) != (e.Rejection == nil) || want != nil && want.Reason != e.Rejection.Reason {
				t.Fatalf("Explain's verdict %v, Verify's %v", e.Rejection, want)
			}
			var found bool
			for i, r := range e.Links {
				if want == nil && len(r.Problems) > 0 {
					t.Errorf("accepted chain, but link %d has problems %v", i, r.reasons())
				}
				for _, p := range r.Problems {
					if want != nil && p.Reason == want.Reason && (want.JTI == "" || p.JTI == want.JTI) {
						found = true
					}
				}
			}
			if want != nil && !whole[want.Reason] && !found {
				t.Errorf("Verify rejects %s (%s) at %q, but no link report says so: %v", want.Reason, want.Detail, want.JTI, reasons(e))
			}
		})
	}
}
