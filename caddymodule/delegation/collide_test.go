package delegation

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/asap-sidecar/asap-sidecar/storage"
)

// attackChains: the victim (carol) holds self → carol, jti del_victim,
// max_tasks 2. The attacker alice holds self → alice with her key bound
// (cnf), and mints alice → bob reusing the victim's jti.
func (f *fixture) attackChains(t *testing.T) (victim, attack *Chain) {
	t.Helper()
	vt := f.sign(with(f.rootClaims(), "aud", f.carol.urn, "jti", "del_victim", "x-asap-constraints", map[string]any{"max_tasks": 2}, "cnf", nil), f.self)
	ar := f.sign(with(f.rootClaims(), "jti", "del_attacker"), f.self)
	ac := f.sign(with(f.childClaims(ar, f.alice, f.bob, "del_victim"), "x-asap-constraints", map[string]any{"max_tasks": 2}), f.alice)
	return mustVerify(t, f.verifier(), vt), mustVerify(t, f.verifier(), join(ac, ar))
}

// stage reserves a slot on c and commits it as the handler does.
func (e *ledgerEnv) stage(t *testing.T, c *Chain, now time.Time) *Rejection {
	t.Helper()
	res, rej := e.l.Reserve(c, now)
	if rej != nil {
		return rej
	}
	if err := e.db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error { return res.Stage(tx, now) }); err != nil {
		t.Fatal(err)
	}
	res.Finish()
	return nil
}

// SPEC §2a: a delegate choosing a colliding jti cannot spend another
// consumer's max_tasks. Counts are per token hash, also after a restart.
func TestLedgerCollidingJTIHasItsOwnCount(t *testing.T) {
	f := newFixture(t)
	e := newLedgerEnv(t)
	victim, attack := f.attackChains(t)
	for i := 0; i < 2; i++ {
		if rej := e.stage(t, attack, f.t0); rej != nil {
			t.Fatalf("attacker's own task %d: %v", i, rej)
		}
	}
	wantRejection(t, e.stage(t, attack, f.t0), ClassLimit, "max_tasks_reached")
	if got := used(t, e.l, victim.Leaf().Hash); got != 0 {
		t.Fatalf("the attacker's tasks were counted on the victim's token: %d", got)
	}
	e.reopen(t)
	for i := 0; i < 2; i++ {
		if rej := e.stage(t, victim, f.t0); rej != nil {
			t.Fatalf("victim's task %d refused after the attacker spent a colliding jti: %v", i, rej)
		}
	}
	wantRejection(t, e.stage(t, victim, f.t0), ClassLimit, "max_tasks_reached")
	e.reopen(t)
	for _, c := range []*Chain{victim, attack} {
		if got := used(t, e.l, c.Leaf().Hash); got != 2 {
			t.Errorf("after reopen %s of %s used %d, want 2", c.Leaf().Claims.ID, c.Leaf().Claims.Issuer, got)
		}
		wantRejection(t, e.stage(t, c, f.t0), ClassLimit, "max_tasks_reached")
	}
	// Two trusted issuers using one jti for one delegate: two counts too.
	mine := mustVerify(t, f.verifier(), f.sign(with(f.rootClaims(), "jti", "del_same", "x-asap-constraints", map[string]any{"max_tasks": 1}), f.self))
	theirs := mustVerify(t, f.verifier(), f.sign(with(f.rootClaims(), "jti", "del_same", "iss", f.partner.urn, "x-asap-constraints", map[string]any{"max_tasks": 1}), f.partner))
	if rej := e.stage(t, mine, f.t0); rej != nil {
		t.Fatal(rej)
	}
	if rej := e.stage(t, theirs, f.t0); rej != nil {
		t.Fatalf("partner's token with a colliding jti: %v", rej)
	}
}

// Revoking one issuer's (issuer, jti) leaves the same jti of another
// issuer valid; bare revocation hits every issuer, and both survive a
// restart.
func TestLedgerRevokeFromOneIssuer(t *testing.T) {
	f := newFixture(t)
	e := newLedgerEnv(t)
	ctx := context.Background()
	victim, attack := f.attackChains(t)
	for _, c := range []*Chain{victim, attack} {
		if rej := e.stage(t, c, f.t0); rej != nil {
			t.Fatal(rej)
		}
	}
	rev, err := e.l.RevokeFrom(ctx, f.alice.urn, "del_victim", f.t0)
	if err != nil {
		t.Fatal(err)
	}
	want := []TokenRef{{f.alice.urn, "del_victim", attack.Leaf().Hash}}
	if rev.Issuer != f.alice.urn || rev.JTI != "del_victim" || !reflect.DeepEqual(rev.IDs, []string{"del_victim"}) || !reflect.DeepEqual(rev.Tokens, want) {
		t.Errorf("revocation %+v, want the attacker's token only (%+v)", rev, want)
	}
	check := func(stage string) {
		t.Helper()
		wantRejection(t, e.l.CheckRevoked(attack), ClassRevoked, "revoked")
		if rej := e.l.CheckRevoked(victim); rej != nil {
			t.Fatalf("%s: revoking the attacker's (issuer, jti) revoked the victim: %v", stage, rej)
		}
		if _, ok := e.l.IsRevoked(f.self.urn, "del_victim"); ok {
			t.Errorf("%s: IsRevoked(self, del_victim)", stage)
		}
		if _, ok := e.l.IsRevoked("", "del_victim"); ok {
			t.Errorf("%s: del_victim revoked for every issuer", stage)
		}
		if at, ok := e.l.IsRevoked(f.alice.urn, "del_victim"); !ok || !at.Equal(f.t0) {
			t.Errorf("%s: IsRevoked(alice, del_victim) = %v %v", stage, at, ok)
		}
	}
	check("before reopen")
	e.reopen(t)
	check("after reopen")
	if rej := e.stage(t, victim, f.t0); rej != nil {
		t.Fatalf("victim after the attacker's revocation: %v", rej)
	}

	// Issuers and ids are untrusted: no (issuer, jti) reaches another's
	// revocation through the key encoding.
	for _, p := range [][2]string{{"urn:x\x00del", "1"}, {"urn:x", "\x00del\x001"}, {"urn:x\x01", "del"}} {
		if _, err := e.l.RevokeFrom(ctx, p[0], p[1], f.t0); err != nil {
			t.Fatal(err)
		}
	}
	e.reopen(t)
	for _, p := range [][2]string{{"urn:x", "del\x001"}, {"urn:x", "del"}, {"urn:x\x00del\x00", "1"}, {"urn:x\x00", "del\x001"}} {
		if _, ok := e.l.IsRevoked(p[0], p[1]); ok {
			t.Errorf("(%q, %q) revoked by a colliding key", p[0], p[1])
		}
	}
	if _, ok := e.l.IsRevoked("urn:x", "\x00del\x001"); !ok {
		t.Error("a revocation with NULs was lost")
	}
	if _, err := e.l.RevokeFrom(ctx, "", "del_victim", f.t0); err == nil {
		t.Error("RevokeFrom without an issuer")
	}
}

// Revoking a bare jti revokes it for every issuer, including a token first
// presented after the revocation, and names the tokens seen with it.
func TestLedgerRevokeBareJTIEveryIssuer(t *testing.T) {
	f := newFixture(t)
	e := newLedgerEnv(t)
	victim, attack := f.attackChains(t)
	for _, c := range []*Chain{victim, attack} {
		if rej := e.stage(t, c, f.t0); rej != nil {
			t.Fatal(rej)
		}
	}
	var audited *Revocation
	rev, err := e.l.Revoke(context.Background(), "del_victim", f.t0, func(tx *storage.Tx, r *Revocation) error { audited = r; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if audited != rev {
		t.Error("the audit callback did not get the revocation")
	}
	got := map[TokenRef]bool{}
	for _, r := range rev.Tokens {
		got[r] = true
	}
	if len(rev.Tokens) != 2 || !got[TokenRef{f.self.urn, "del_victim", victim.Leaf().Hash}] || !got[TokenRef{f.alice.urn, "del_victim", attack.Leaf().Hash}] {
		t.Errorf("affected tokens %+v, want both tokens seen with del_victim", rev.Tokens)
	}
	later := mustVerify(t, f.verifier(), f.sign(with(f.rootClaims(), "jti", "del_victim", "iss", f.partner.urn), f.partner))
	e.reopen(t)
	for _, c := range []*Chain{victim, attack, later} {
		rej := e.l.CheckRevoked(c)
		wantRejection(t, rej, ClassRevoked, "revoked")
		if rej.JTI != "del_victim" {
			t.Errorf("names %q", rej.JTI)
		}
	}
	if _, ok := e.l.IsRevoked(f.partner.urn, "del_victim"); !ok {
		t.Error("IsRevoked(partner, del_victim) after a bare revocation")
	}
	if known, err := e.l.Known("del_victim"); err != nil || !known {
		t.Errorf("Known(del_victim) = %v %v", known, err)
	}
	if known, err := e.l.Known("del_never"); err != nil || known {
		t.Errorf("Known(del_never) = %v %v", known, err)
	}
}

// A scoped revocation cascades to descendants minted here under that
// issuer's token, and not under another issuer's token with the same id.
func TestLedgerRevokeFromCascades(t *testing.T) {
	f := newFixture(t)
	e := newLedgerEnv(t)
	now := time.Now()
	v := f.verifier()
	v.Now = func() time.Time { return now }
	root, _ := mintRecorded(t, e.l, Grant{Issuer: f.self.urn, Delegate: f.alice.urn, Scopes: []string{ScopeAll}, TTL: time.Hour,
		CnfJWK: PublicJWK(f.alice.pub), Now: now}, f.self.priv)
	rootChain := mustVerify(t, v, root.Chain)
	child, _ := mintRecorded(t, e.l, Grant{Issuer: f.alice.urn, Delegate: f.bob.urn, Scopes: []string{ScopeAll}, Parent: rootChain, Now: now}, f.alice.priv)
	childChain := mustVerify(t, v, child.Chain)
	if rec, _ := e.l.Get(child.Claims.ID); rec.ParentIssuer != f.self.urn || rec.TokenHash != HashOf(child.Token) {
		t.Fatalf("record %+v", rec)
	}
	// The partner issues a token with the root's id.
	twin := mustVerify(t, v, f.sign(with(f.rootClaims(), "iss", f.partner.urn, "jti", root.Claims.ID, "iat", now.Unix(), "exp", now.Add(time.Hour).Unix()), f.partner))

	rev, err := e.l.RevokeFrom(context.Background(), f.partner.urn, root.Claims.ID, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(rev.IDs) != 1 || len(rev.Tokens) != 0 {
		t.Errorf("revoking the partner's twin cascaded: %+v", rev)
	}
	wantRejection(t, e.l.CheckRevoked(twin), ClassRevoked, "revoked")
	for _, c := range []*Chain{rootChain, childChain} {
		if rej := e.l.CheckRevoked(c); rej != nil {
			t.Fatalf("the partner's revocation hit our token: %v", rej)
		}
	}
	if rec, _ := e.l.Get(root.Claims.ID); rec.RevokedAt != nil {
		t.Error("our record marked revoked")
	}

	rev, err = e.l.RevokeFrom(context.Background(), f.self.urn, root.Claims.ID, now)
	if err != nil {
		t.Fatal(err)
	}
	wantRefs := []TokenRef{{f.self.urn, root.Claims.ID, HashOf(root.Token)}, {f.alice.urn, child.Claims.ID, HashOf(child.Token)}}
	if !reflect.DeepEqual(rev.IDs, []string{root.Claims.ID, child.Claims.ID}) || !reflect.DeepEqual(rev.Tokens, wantRefs) {
		t.Errorf("revocation %+v", rev)
	}
	e.reopen(t)
	wantRejection(t, e.l.CheckRevoked(childChain), ClassRevoked, "revoked")
	if _, ok := e.l.IsRevoked(f.alice.urn, child.Claims.ID); !ok {
		t.Error("the minted child is not revoked")
	}
	for _, id := range []string{root.Claims.ID, child.Claims.ID} {
		if rec, _ := e.l.Get(id); rec.RevokedAt == nil {
			t.Errorf("record %s not marked revoked", id)
		}
	}
}

// A token is recorded as seen once: the first staged use writes the
// record; later uses (also after a restart) do not; a use given back
// leaves it to the next one.
func TestLedgerSeenRecordedOnce(t *testing.T) {
	f := newFixture(t)
	e := newLedgerEnv(t)
	ch := f.limitedChain(t, -1, -1, -1)
	ctx := context.Background()
	leaf := ch.Leaf()
	key := seenKey(leaf.Claims.Issuer, leaf.Claims.ID, leaf.Hash)
	present := func() bool {
		t.Helper()
		err := e.db.View(func(r *storage.Reader) error { _, err := r.Get(key); return err })
		return err == nil
	}
	del := func() {
		t.Helper()
		if err := e.db.Commit(ctx, storage.Strict, func(tx *storage.Tx) error { tx.Delete(key); return nil }); err != nil {
			t.Fatal(err)
		}
	}

	// Given back unstaged: nothing written, the next use writes it.
	res, rej := e.l.Reserve(ch, f.t0)
	if rej != nil {
		t.Fatal(rej)
	}
	res.Release()
	if present() {
		t.Fatal("a released reservation wrote the seen record")
	}
	if rej := e.stage(t, ch, f.t0); rej != nil {
		t.Fatal(rej)
	}
	if !present() {
		t.Fatal("the first staged use did not record the token")
	}
	seen, err := e.l.SeenTokens("", leaf.Claims.ID)
	if err != nil || len(seen) != 1 {
		t.Fatalf("SeenTokens = %v %v", seen, err)
	}
	if s := seen[0]; s.Issuer != f.bob.urn || s.Hash != leaf.Hash || s.Delegate != f.carol.urn || s.ExpiresAt.Unix() != int64(*leaf.Claims.Expiry) {
		t.Errorf("seen record %+v", s)
	}
	if s, _ := e.l.SeenTokens(f.alice.urn, leaf.Claims.ID); len(s) != 0 {
		t.Errorf("seen under another issuer: %+v", s)
	}
	// Remove it behind the ledger's back: a later use must not write again.
	del()
	for i := 0; i < 3; i++ {
		if rej := e.stage(t, ch, f.t0); rej != nil {
			t.Fatal(rej)
		}
	}
	if present() {
		t.Error("a token already recorded was written again")
	}
	// After a restart the ledger reads whether it was recorded.
	root := ch.Root()
	rootKey := seenKey(root.Claims.Issuer, root.Claims.ID, root.Hash)
	e.reopen(t)
	if rej := e.stage(t, ch, f.t0); rej != nil {
		t.Fatal(rej)
	}
	if !present() {
		t.Error("after a restart, an unrecorded token was not recorded")
	}
	key = rootKey
	del()
	if rej := e.stage(t, ch, f.t0); rej != nil {
		t.Fatal(rej)
	}
	if present() {
		t.Error("after a restart, a recorded token was written again")
	}
}
