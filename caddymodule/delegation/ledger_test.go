package delegation

import (
	"context"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asap-sidecar/asap-sidecar/storage"
	"github.com/dgraph-io/badger/v4"
)

// ledgerEnv is a ledger on a real database in a temporary directory.
type ledgerEnv struct {
	dir string
	db  *storage.DB
	l   *Ledger
}

func newLedgerEnv(t *testing.T) *ledgerEnv {
	t.Helper()
	e := &ledgerEnv{dir: t.TempDir()}
	e.open(t)
	t.Cleanup(func() { e.db.Close() })
	return e
}

func (e *ledgerEnv) open(t *testing.T) {
	t.Helper()
	e.db = openDB(t, e.dir)
	l, err := OpenLedger(e.db)
	if err != nil {
		t.Fatal(err)
	}
	e.l = l
}

// reopen closes the database and opens it again with a new Ledger.
func (e *ledgerEnv) reopen(t *testing.T) {
	t.Helper()
	if err := e.db.Close(); err != nil {
		t.Fatal(err)
	}
	e.open(t)
}

// limitedChain is a verified 3-link chain self → alice (max root) →
// bob (max child) → carol (max leaf); a limit < 0 leaves it out.
func (f *fixture) limitedChain(t *testing.T, root, child, leaf int) *Chain {
	t.Helper()
	cons := func(n int) any {
		if n < 0 {
			return nil
		}
		return map[string]any{"max_tasks": n}
	}
	r := f.sign(with(f.rootClaims(), "x-asap-constraints", cons(root)), f.self)
	c := f.sign(with(f.childClaims(r, f.alice, f.bob, "del_child"), "x-asap-constraints", cons(child)), f.alice)
	g := f.sign(with(f.childClaims(c, f.bob, f.carol, "del_leaf"), "x-asap-constraints", cons(leaf), "exp", f.at(20*time.Minute)), f.bob)
	return mustVerify(t, f.verifier(), join(g, c, r))
}

// used is the task count of the token whose hash is hash.
func used(t *testing.T, l *Ledger, hash string) int64 {
	t.Helper()
	n, err := l.UsedByHash(hash)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// hashOf maps the jti of the chains' links to their token hash (HashOf
// the jti itself for an id in none of them).
func hashOf(chains ...*Chain) func(jti string) string {
	m := map[string]string{}
	for _, c := range chains {
		for _, l := range c.Links {
			m[l.Claims.ID] = l.Hash
		}
	}
	return func(jti string) string {
		if h, ok := m[jti]; ok {
			return h
		}
		return HashOf(jti)
	}
}

func TestLedgerReserveAllOrNone(t *testing.T) {
	f := newFixture(t)
	e := newLedgerEnv(t)
	// root (10) → child (2) → leaf (2), and a sibling leaf (2) under the
	// same child.
	ch := f.limitedChain(t, 10, 2, 2)
	sibling := f.sign(with(f.childClaims(ch.Links[1].Raw, f.bob, f.carol, "del_sibling"), "exp", f.at(20*time.Minute),
		"x-asap-constraints", map[string]any{"max_tasks": 2}), f.bob)
	ch2 := mustVerify(t, f.verifier(), join(sibling, ch.Links[1].Raw, ch.Links[2].Raw))
	h := hashOf(ch, ch2)
	wantUsed := func(want map[string]int64) {
		t.Helper()
		for jti, n := range want {
			if got := used(t, e.l, h(jti)); got != n {
				t.Errorf("Used(%s) = %d, want %d", jti, got, n)
			}
		}
	}

	// The sibling spends the shared child's two slots.
	var held []*Reservation
	for i := 0; i < 2; i++ {
		res, rej := e.l.Reserve(ch2, f.t0)
		if rej != nil {
			t.Fatalf("reserve %d: %v", i, rej)
		}
		held = append(held, res)
	}
	// The leaf has room, the child has none: refused, nothing taken from
	// the leaf or the root. A parent's limit bounds its descendants.
	res, rej := e.l.Reserve(ch, f.t0)
	if res != nil {
		t.Fatal("a reservation beside a rejection")
	}
	wantRejection(t, rej, ClassLimit, "max_tasks_reached")
	if rej.JTI != "del_child" {
		t.Errorf("rejection names %q, want the spent link", rej.JTI)
	}
	wantUsed(map[string]int64{"del_leaf": 0, "del_sibling": 2, "del_child": 2, "del_root": 2})

	// Release gives the slots back, on every link.
	held[0].Release()
	wantUsed(map[string]int64{"del_leaf": 0, "del_sibling": 1, "del_child": 1, "del_root": 1})
	held[0].Release() // twice is harmless
	held[0].Finish()  // and Finish after Release too
	wantUsed(map[string]int64{"del_sibling": 1, "del_child": 1, "del_root": 1})

	res, rej = e.l.Reserve(ch, f.t0)
	if rej != nil {
		t.Fatalf("after release: %v", rej)
	}
	wantUsed(map[string]int64{"del_leaf": 1, "del_sibling": 1, "del_child": 2, "del_root": 2})
	// Now the sibling has room but the child again has none.
	_, rej = e.l.Reserve(ch2, f.t0)
	wantRejection(t, rej, ClassLimit, "max_tasks_reached")
	if rej.JTI != "del_child" {
		t.Errorf("names %q", rej.JTI)
	}
	wantUsed(map[string]int64{"del_leaf": 1, "del_sibling": 1, "del_child": 2, "del_root": 2})

	res.Finish()
	res.Release() // after Finish: the task ran, the slot stays taken
	held[1].Finish()
	wantUsed(map[string]int64{"del_leaf": 1, "del_sibling": 1, "del_child": 2, "del_root": 2})
	var nilRes *Reservation
	nilRes.Release()
	nilRes.Finish()
}

func TestLedgerUnlimitedAndZero(t *testing.T) {
	f := newFixture(t)
	e := newLedgerEnv(t)
	ch := f.limitedChain(t, -1, -1, -1)
	for i := 0; i < 100; i++ {
		res, rej := e.l.Reserve(ch, f.t0)
		if rej != nil {
			t.Fatalf("unlimited chain refused at %d: %v", i, rej)
		}
		res.Finish()
	}
	if got := used(t, e.l, ch.Leaf().Hash); got != 100 {
		t.Errorf("Used = %d, want 100 (counted even without a limit)", got)
	}
	zero := f.limitedChain(t, 0, 0, 0)
	e2 := newLedgerEnv(t)
	_, rej := e2.l.Reserve(zero, f.t0)
	wantRejection(t, rej, ClassLimit, "max_tasks_reached")
	if rej.JTI != "del_leaf" {
		t.Errorf("names %q", rej.JTI)
	}
	if got := used(t, e.l, HashOf("never-seen")); got != 0 {
		t.Errorf("Used of an unknown id = %d", got)
	}
}

func TestLedgerStagePersists(t *testing.T) {
	f := newFixture(t)
	e := newLedgerEnv(t)
	ch := f.limitedChain(t, 10, 3, 3)
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		res, rej := e.l.Reserve(ch, f.t0)
		if rej != nil {
			t.Fatal(rej)
		}
		if err := e.db.Commit(ctx, storage.Strict, func(tx *storage.Tx) error { return res.Stage(tx, f.t0) }); err != nil {
			t.Fatal(err)
		}
		res.Finish()
	}
	// One reserved but never staged (in flight, then released).
	res, rej := e.l.Reserve(ch, f.t0)
	if rej == nil {
		res.Release()
		t.Fatal("a 4th task under max_tasks 3")
	}
	e.reopen(t)
	for jti, want := range map[string]int64{"del_leaf": 3, "del_child": 3, "del_root": 3} {
		if got := used(t, e.l, hashOf(ch)(jti)); got != want {
			t.Errorf("after reopen Used(%s) = %d, want %d", jti, got, want)
		}
	}
	_, rej = e.l.Reserve(ch, f.t0)
	wantRejection(t, rej, ClassLimit, "max_tasks_reached")
	if rej.JTI != "del_leaf" {
		t.Errorf("names %q", rej.JTI)
	}
	// The root still has room under another child.
	_, rej = e.l.Reserve(&Chain{Links: ch.Links[2:]}, f.t0)
	if rej != nil {
		t.Fatalf("root alone: %v", rej)
	}
	if got := used(t, e.l, ch.Root().Hash); got != 4 {
		t.Errorf("Used(root) = %d, want 4 (3 persisted + 1 in flight)", got)
	}
}

// Stage may run again in a fresh transaction; within one transaction two
// reservations add up.
func TestLedgerStageTwoInOneTx(t *testing.T) {
	f := newFixture(t)
	e := newLedgerEnv(t)
	ch := f.limitedChain(t, -1, -1, -1)
	r1, _ := e.l.Reserve(ch, f.t0)
	r2, _ := e.l.Reserve(ch, f.t0)
	err := e.db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
		if err := r1.Stage(tx, f.t0); err != nil {
			return err
		}
		return r2.Stage(tx, f.t0)
	})
	if err != nil {
		t.Fatal(err)
	}
	r1.Finish()
	r2.Finish()
	e.reopen(t)
	if got := used(t, e.l, ch.Leaf().Hash); got != 2 {
		t.Errorf("Used = %d, want 2", got)
	}
}

// SPEC §3: with max_tasks 5 and 50 parallel requests, exactly 5 pass.
func TestLedgerConcurrentReserveExact(t *testing.T) {
	f := newFixture(t)
	e := newLedgerEnv(t)
	ch := f.limitedChain(t, -1, -1, 5)
	var ok, limited atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			res, rej := e.l.Reserve(ch, f.t0)
			if rej != nil {
				if rej.Class == ClassLimit && rej.Reason == "max_tasks_reached" {
					limited.Add(1)
				}
				return
			}
			ok.Add(1)
			err := e.db.Commit(context.Background(), storage.Relaxed, func(tx *storage.Tx) error { return res.Stage(tx, f.t0) })
			if err != nil {
				t.Error(err)
			}
			res.Finish()
		}()
	}
	close(start)
	wg.Wait()
	if ok.Load() != 5 || limited.Load() != 45 {
		t.Fatalf("%d passed and %d were limited; want exactly 5 and 45", ok.Load(), limited.Load())
	}
	if got := used(t, e.l, ch.Leaf().Hash); got != 5 {
		t.Errorf("Used = %d", got)
	}
	e.reopen(t)
	if got := used(t, e.l, ch.Leaf().Hash); got != 5 {
		t.Errorf("persisted Used = %d, want 5", got)
	}
}

// Slots given back by failed forwards are reusable, also concurrently.
func TestLedgerConcurrentReserveRelease(t *testing.T) {
	f := newFixture(t)
	e := newLedgerEnv(t)
	ch := f.limitedChain(t, 3, 3, 3)
	var wg sync.WaitGroup
	var finished atomic.Int64
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			res, rej := e.l.Reserve(ch, f.t0)
			if rej != nil {
				return
			}
			if i%2 == 0 {
				res.Release()
				return
			}
			finished.Add(1)
			res.Finish()
		}(i)
	}
	wg.Wait()
	if n := finished.Load(); n > 3 {
		t.Fatalf("%d tasks finished under max_tasks 3", n)
	}
	if got := used(t, e.l, ch.Leaf().Hash); got != finished.Load() {
		t.Errorf("Used = %d, finished %d", got, finished.Load())
	}
}

// mintRecorded mints a token and records it as the Delegation API does.
func mintRecorded(t *testing.T, l *Ledger, g Grant, key []byte) (*Minted, *Chain) {
	t.Helper()
	m, err := Mint(g, key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.RecordIssued(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	var links []*Link
	for _, raw := range strings.Split(m.Chain, ",") {
		lk, rej := ParseLink(raw)
		if rej != nil {
			t.Fatal(rej)
		}
		links = append(links, lk)
	}
	return m, &Chain{Links: links}
}

func TestLedgerRecordIssued(t *testing.T) {
	f := newFixture(t)
	e := newLedgerEnv(t)
	now := time.Now().Truncate(time.Second)
	m, _ := mintRecorded(t, e.l, Grant{Issuer: f.self.urn, Delegate: f.alice.urn, Scopes: []string{ScopeTaskExecute, ScopeDataRead},
		TTL: time.Hour, MaxTasks: i64(4), Now: now}, f.self.priv)
	r, err := e.l.Get(m.Claims.ID)
	if err != nil || r == nil {
		t.Fatalf("Get: %v %v", r, err)
	}
	if r.ID != m.Claims.ID || r.Delegator != f.self.urn || r.Delegate != f.alice.urn || !r.CreatedAt.Equal(now) ||
		!r.ExpiresAt.Equal(now.Add(time.Hour)) || len(r.Scopes) != 2 || r.MaxTasks == nil || *r.MaxTasks != 4 ||
		r.ParentID != "" || r.RevokedAt != nil {
		t.Errorf("record %+v", r)
	}
	if !r.Active(time.Now()) || r.Active(now.Add(2*time.Hour)) {
		t.Error("Active")
	}
	if r, err := e.l.Get("del_unknown"); r != nil || err != nil {
		t.Errorf("Get of an id not minted here: %v %v", r, err)
	}
	e.reopen(t)
	if r, err := e.l.Get(m.Claims.ID); err != nil || r == nil || r.ID != m.Claims.ID {
		t.Errorf("record lost on reopen: %v %v", r, err)
	}
}

func TestLedgerRevokeCascades(t *testing.T) {
	f := newFixture(t)
	e := newLedgerEnv(t)
	now := time.Now()
	v := f.verifier()
	v.Now = func() time.Time { return now }

	root, _ := mintRecorded(t, e.l, Grant{Issuer: f.self.urn, Delegate: f.alice.urn, Scopes: []string{ScopeAll}, TTL: time.Hour,
		CnfJWK: PublicJWK(f.alice.pub), Now: now}, f.self.priv)
	rootChain := mustVerify(t, v, root.Chain)
	child, _ := mintRecorded(t, e.l, Grant{Issuer: f.alice.urn, Delegate: f.bob.urn, Scopes: []string{ScopeAll}, Parent: rootChain,
		CnfJWK: PublicJWK(f.bob.pub), Now: now}, f.alice.priv)
	childChain := mustVerify(t, v, child.Chain)
	grand, _ := mintRecorded(t, e.l, Grant{Issuer: f.bob.urn, Delegate: f.carol.urn, Scopes: []string{ScopeTaskExecute}, Parent: childChain, Now: now}, f.bob.priv)
	grandChain := mustVerify(t, v, grand.Chain)
	sibling, _ := mintRecorded(t, e.l, Grant{Issuer: f.alice.urn, Delegate: f.carol.urn, Scopes: []string{ScopeDataRead}, Parent: rootChain, Now: now}, f.alice.priv)
	siblingChain := mustVerify(t, v, sibling.Chain)
	other, _ := mintRecorded(t, e.l, Grant{Issuer: f.self.urn, Delegate: f.bob.urn, Scopes: []string{ScopeAll}, Now: now}, f.self.priv)
	otherChain := mustVerify(t, v, other.Chain)

	if rec, _ := e.l.Get(grand.Claims.ID); rec.ParentID != child.Claims.ID {
		t.Fatalf("ParentID %q", rec.ParentID)
	}
	for _, c := range []*Chain{rootChain, childChain, grandChain, siblingChain, otherChain} {
		if rej := e.l.CheckRevoked(c); rej != nil {
			t.Fatalf("revoked before any revocation: %v", rej)
		}
	}

	// Revoke the middle: it and its descendant, not its parent or sibling.
	at := now.Add(time.Minute).Truncate(time.Microsecond)
	rev, err := e.l.Revoke(context.Background(), child.Claims.ID, at)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(rev.IDs, " ") != child.Claims.ID+" "+grand.Claims.ID {
		t.Errorf("revoked %v", rev.IDs)
	}
	wantRefs := []TokenRef{{f.alice.urn, child.Claims.ID, HashOf(child.Token)}, {f.bob.urn, grand.Claims.ID, HashOf(grand.Token)}}
	if !reflect.DeepEqual(rev.Tokens, wantRefs) {
		t.Errorf("affected tokens %+v, want %+v", rev.Tokens, wantRefs)
	}
	issuer := map[string]string{root.Claims.ID: f.self.urn, child.Claims.ID: f.alice.urn, grand.Claims.ID: f.bob.urn, sibling.Claims.ID: f.alice.urn, other.Claims.ID: f.self.urn}
	for id, want := range map[string]bool{root.Claims.ID: false, child.Claims.ID: true, grand.Claims.ID: true, sibling.Claims.ID: false, other.Claims.ID: false} {
		when, ok := e.l.IsRevoked(issuer[id], id)
		if ok != want {
			t.Errorf("IsRevoked(%s) = %v, want %v", id, ok, want)
		}
		rec, err := e.l.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		if (rec.RevokedAt != nil) != want {
			t.Errorf("Get(%s).RevokedAt = %v, want set=%v", id, rec.RevokedAt, want)
		}
		if want && (!when.Equal(at) || !rec.RevokedAt.Equal(at)) {
			t.Errorf("revoked at %v / %v, want %v", when, rec.RevokedAt, at)
		}
	}
	// The leaf itself revoked.
	rej := e.l.CheckRevoked(childChain)
	wantRejection(t, rej, ClassRevoked, "revoked")
	if rej.JTI != child.Claims.ID || strings.Contains(rej.Detail, "ancestor") {
		t.Errorf("leaf revocation: %v (%s)", rej, rej.JTI)
	}
	// An ancestor revoked (grand's own id also cascaded, so check via the
	// first match: the leaf).
	rej = e.l.CheckRevoked(grandChain)
	wantRejection(t, rej, ClassRevoked, "revoked")
	if rej.JTI != grand.Claims.ID {
		t.Errorf("names %q", rej.JTI)
	}
	if rej := e.l.CheckRevoked(siblingChain); rej != nil {
		t.Errorf("sibling revoked: %v", rej)
	}

	// Revoke the root: everything minted under it.
	rev, err = e.l.Revoke(context.Background(), root.Claims.ID, at.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if len(rev.IDs) != 4 || rev.IDs[0] != root.Claims.ID || len(rev.Tokens) != 4 {
		t.Errorf("revoked %+v", rev)
	}
	// The first revocation time is kept.
	if when, _ := e.l.IsRevoked(f.alice.urn, child.Claims.ID); !when.Equal(at) {
		t.Errorf("re-revocation moved the time to %v", when)
	}
	if rec, _ := e.l.Get(child.Claims.ID); !rec.RevokedAt.Equal(at) {
		t.Errorf("record time moved to %v", rec.RevokedAt)
	}
	rej = e.l.CheckRevoked(siblingChain)
	wantRejection(t, rej, ClassRevoked, "revoked")
	if rej := e.l.CheckRevoked(otherChain); rej != nil {
		t.Errorf("unrelated token revoked: %v", rej)
	}
	// Issued(true) lists only the unrelated token.
	active, err := e.l.Issued(true)
	if err != nil {
		t.Fatal(err)
	}
	if len(active) != 1 || active[0].ID != other.Claims.ID {
		t.Errorf("active %v", active)
	}

	// Revocations survive a restart.
	e.reopen(t)
	for _, id := range []string{root.Claims.ID, child.Claims.ID, grand.Claims.ID, sibling.Claims.ID} {
		if _, ok := e.l.IsRevoked(issuer[id], id); !ok {
			t.Errorf("%s not revoked after reopen", id)
		}
	}
	if when, _ := e.l.IsRevoked(f.alice.urn, child.Claims.ID); !when.Equal(at) {
		t.Errorf("time after reopen %v, want %v", when, at)
	}
	if _, ok := e.l.IsRevoked(f.self.urn, other.Claims.ID); ok {
		t.Error("unrelated token revoked after reopen")
	}
	wantRejection(t, e.l.CheckRevoked(grandChain), ClassRevoked, "revoked")
	if rej := e.l.CheckRevoked(otherChain); rej != nil {
		t.Error(rej)
	}
}

// Revoking an ancestor not minted here (an operator revokes a jti seen in
// traffic) rejects every chain through it, whoever minted the rest.
func TestLedgerRevokeForeignID(t *testing.T) {
	f := newFixture(t)
	e := newLedgerEnv(t)
	r := f.root() // jti del_root, never recorded here
	c := f.child(r)
	ch := mustVerify(t, f.verifier(), join(c, r))
	rev, err := e.l.Revoke(context.Background(), "del_root", f.t0)
	if err != nil {
		t.Fatal(err)
	}
	if len(rev.IDs) != 1 || rev.IDs[0] != "del_root" || rev.Issuer != "" || len(rev.Tokens) != 0 {
		t.Errorf("revoked %+v", rev)
	}
	if rec, err := e.l.Get("del_root"); rec != nil || err != nil {
		t.Errorf("a record appeared for a foreign id: %v %v", rec, err)
	}
	rej := e.l.CheckRevoked(ch)
	wantRejection(t, rej, ClassRevoked, "revoked")
	if rej.JTI != "del_root" || !strings.Contains(rej.Detail, "ancestor") {
		t.Errorf("revoked ancestor: %v (%s)", rej, rej.JTI)
	}
	e.reopen(t)
	wantRejection(t, e.l.CheckRevoked(ch), ClassRevoked, "revoked")
	// Any id shape up to 256 characters.
	for _, id := range []string{"x", "jti with spaces/and:colons", strings.Repeat("j", 256), "ünïcødé"} {
		if _, err := e.l.Revoke(context.Background(), id, f.t0); err != nil {
			t.Errorf("Revoke(%q): %v", id, err)
		}
		if _, ok := e.l.IsRevoked("", id); !ok {
			t.Errorf("%q not revoked", id)
		}
	}
}

func TestLedgerRevokeRefusesBadIDs(t *testing.T) {
	e := newLedgerEnv(t)
	for _, id := range []string{"", strings.Repeat("x", 257), strings.Repeat("x", 300)} {
		rev, err := e.l.Revoke(context.Background(), id, time.Now())
		if err == nil || rev != nil {
			t.Errorf("Revoke of a %d-character id: %v %v", len(id), rev, err)
		}
	}
	if _, ok := e.l.IsRevoked("", ""); ok {
		t.Error("empty id revoked")
	}
}

func TestLedgerIssuedFilters(t *testing.T) {
	f := newFixture(t)
	e := newLedgerEnv(t)
	now := time.Now()
	live, _ := mintRecorded(t, e.l, Grant{Issuer: f.self.urn, Delegate: f.alice.urn, Scopes: []string{ScopeAll}, Now: now}, f.self.priv)
	expired, _ := mintRecorded(t, e.l, Grant{Issuer: f.self.urn, Delegate: f.bob.urn, Scopes: []string{ScopeAll}, TTL: time.Hour, Now: now.Add(-2 * time.Hour)}, f.self.priv)
	long, _ := mintRecorded(t, e.l, Grant{Issuer: f.self.urn, Delegate: f.carol.urn, Scopes: []string{ScopeAll}, TTL: time.Hour, Now: now.Add(-30 * 24 * time.Hour)}, f.self.priv)
	revoked, _ := mintRecorded(t, e.l, Grant{Issuer: f.self.urn, Delegate: f.carol.urn, Scopes: []string{ScopeAll}, Now: now}, f.self.priv)
	if _, err := e.l.Revoke(context.Background(), revoked.Claims.ID, now); err != nil {
		t.Fatal(err)
	}
	all, err := e.l.Issued(false)
	if err != nil {
		t.Fatal(err)
	}
	ids := func(rs []Record) []string {
		var out []string
		for _, r := range rs {
			out = append(out, r.ID)
		}
		return out
	}
	// Newest first (ids are ULIDs in minting order).
	want := []string{revoked.Claims.ID, long.Claims.ID, expired.Claims.ID, live.Claims.ID}
	if strings.Join(ids(all), " ") != strings.Join(want, " ") {
		t.Errorf("Issued(false) = %v, want %v", ids(all), want)
	}
	active, err := e.l.Issued(true)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(ids(active), " ") != live.Claims.ID {
		t.Errorf("Issued(true) = %v, want only %s", ids(active), live.Claims.ID)
	}
	for _, r := range all {
		if r.ID == revoked.Claims.ID && r.RevokedAt == nil {
			t.Error("listed revoked record without revoked_at")
		}
	}
	empty := newLedgerEnv(t)
	if rs, err := empty.l.Issued(false); err != nil || len(rs) != 0 {
		t.Errorf("empty ledger lists %v %v", rs, err)
	}
}

// Counts of expired tokens are pruned from memory now and then, and read
// back from disk should the token come again.
func TestLedgerPrune(t *testing.T) {
	f := newFixture(t)
	e := newLedgerEnv(t)
	old := f.limitedChain(t, -1, -1, 7)
	res, _ := e.l.Reserve(old, f.t0)
	if err := e.db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error { return res.Stage(tx, f.t0) }); err != nil {
		t.Fatal(err)
	}
	res.Finish()
	inflight, _ := e.l.Reserve(&Chain{Links: old.Links[1:]}, f.t0) // del_child stays in flight
	later := f.t0.Add(5 * time.Hour)
	fresh := &Chain{Links: []*Link{{Raw: "fresh", Hash: HashOf("fresh"), Claims: Claims{ID: "fresh", Expiry: ptrDate(later.Add(time.Hour).Unix())}}}}
	for i := 0; i < 1100; i++ {
		r, rej := e.l.Reserve(fresh, later)
		if rej != nil {
			t.Fatal(rej)
		}
		r.Finish()
	}
	e.l.mu.Lock()
	_, leafKept := e.l.used[old.Leaf().Hash]
	_, childKept := e.l.used[old.Links[1].Hash]
	_, freshKept := e.l.used[HashOf("fresh")]
	e.l.mu.Unlock()
	if leafKept || !childKept || !freshKept {
		t.Errorf("after pruning: expired idle kept=%v, in flight kept=%v, live kept=%v", leafKept, childKept, freshKept)
	}
	// Pruned counts come back from disk.
	if got := used(t, e.l, old.Leaf().Hash); got != 1 {
		t.Errorf("Used(del_leaf) = %d after prune, want 1", got)
	}
	inflight.Release()
}

func ptrDate(n int64) *NumericDate { d := NumericDate(n); return &d }

// Broken stored data surfaces as errors, never as a pass.
func TestLedgerCorruptData(t *testing.T) {
	f := newFixture(t)
	e := newLedgerEnv(t)
	ctx := context.Background()
	put := func(key, val []byte) {
		t.Helper()
		if err := e.db.Commit(ctx, storage.Strict, func(tx *storage.Tx) error { tx.Set(key, val); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	// A counter that is not 8 bytes.
	ch := f.limitedChain(t, -1, -1, 5)
	put(countKey(ch.Leaf().Hash), []byte("bad"))
	_, rej := e.l.Reserve(ch, f.t0)
	wantRejection(t, rej, ClassLimit, "limit_unreadable")
	if rej.JTI != "del_leaf" {
		t.Errorf("names %q", rej.JTI)
	}
	if _, err := e.l.UsedByHash(ch.Leaf().Hash); err == nil {
		t.Error("Used of a corrupt counter")
	}
	// Stage reads the counter too.
	ok := f.limitedChain(t, -1, -1, -1)
	res, rej := e.l.Reserve(&Chain{Links: ok.Links[1:]}, f.t0)
	if rej != nil {
		t.Fatal(rej)
	}
	put(countKey(ok.Links[1].Hash), []byte("x"))
	if err := e.db.Commit(ctx, storage.Strict, func(tx *storage.Tx) error { return res.Stage(tx, f.t0) }); err == nil {
		t.Error("Stage over a corrupt counter")
	}
	res.Release()

	// A corrupt issued record.
	put(issuedKey("del_bad"), []byte("{not json"))
	if _, err := e.l.Get("del_bad"); err == nil {
		t.Error("Get of a corrupt record")
	}
	if _, err := e.l.Issued(false); err == nil {
		t.Error("Issued over a corrupt record")
	}
	if _, err := e.l.Revoke(ctx, "del_x", f.t0); err == nil {
		t.Error("Revoke cannot compute descendants, yet succeeded")
	}

	// A corrupt revocation refuses to open: a ledger missing revocations
	// must not start.
	put(revokeAllKey("del_r"), []byte("not a time"))
	if err := e.db.Close(); err != nil {
		t.Fatal(err)
	}
	e.db = openDB(t, e.dir)
	if l, err := OpenLedger(e.db); err == nil || l != nil {
		t.Error("OpenLedger over a corrupt revocation")
	}
}

// A closed database: writes fail and say so.
func TestLedgerClosedDB(t *testing.T) {
	f := newFixture(t)
	e := newLedgerEnv(t)
	m, err := Mint(Grant{Issuer: f.self.urn, Delegate: f.alice.urn, Scopes: []string{ScopeAll}}, f.self.priv)
	if err != nil {
		t.Fatal(err)
	}
	e.db.Close()
	if _, err := e.l.RecordIssued(context.Background(), m); err == nil {
		t.Error("RecordIssued on a closed database")
	}
	if _, err := e.l.Revoke(context.Background(), "del_x", time.Now()); err == nil {
		t.Error("Revoke on a closed database")
	}
	if _, ok := e.l.IsRevoked("", "del_x"); ok {
		t.Error("a failed revocation took effect in memory")
	}
	ch := f.limitedChain(t, -1, -1, 5)
	_, rej := e.l.Reserve(ch, f.t0)
	wantRejection(t, rej, ClassLimit, "limit_unreadable")
	if _, err := e.l.UsedByHash(ch.Leaf().Hash); err == nil {
		t.Error("Used on a closed database")
	}
}

// Tokens of other trusted issuers are not bound by MaxTTL, so a
// revocation must outlive any token: it is stored without a TTL.
func TestLedgerRevocationOutlivesToken(t *testing.T) {
	f := newFixture(t)
	e := newLedgerEnv(t)
	now := time.Now()
	exp := now.Add(2 * 365 * 24 * time.Hour)
	tok := f.sign(with(f.rootClaims(), "iss", f.partner.urn, "iat", now.Unix(), "exp", exp.Unix(), "jti", "del_long"), f.partner)
	v := f.verifier()
	v.Now = nil
	ch := mustVerify(t, v, tok) // a trusted issuer's two-year token verifies
	if _, err := e.l.Revoke(context.Background(), "del_long", now); err != nil {
		t.Fatal(err)
	}
	wantRejection(t, e.l.CheckRevoked(ch), ClassRevoked, "revoked")
	if err := e.db.Close(); err != nil {
		t.Fatal(err)
	}
	bdb, err := badger.Open(badger.DefaultOptions(e.dir).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	var expiresAt uint64
	err = bdb.View(func(txn *badger.Txn) error {
		item, err := txn.Get(revokeAllKey("del_long"))
		if err != nil {
			return err
		}
		expiresAt = item.ExpiresAt()
		return nil
	})
	bdb.Close()
	if err != nil {
		t.Fatal(err)
	}
	e.open(t)
	if expiresAt != 0 && int64(expiresAt) < exp.Unix() {
		t.Fatalf("ledger.go:88,122 stores the revocation of a token valid until %s with a TTL ending %s: once it lapses (and after a restart) the revoked token verifies again",
			exp.UTC().Format(time.DateOnly), time.Unix(int64(expiresAt), 0).UTC().Format(time.DateOnly))
	}
}
