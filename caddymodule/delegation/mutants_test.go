package delegation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/asap-sidecar/asap-sidecar/storage"
	"github.com/dgraph-io/badger/v4"
)

// The tests in this file pin down behaviour that mutation testing
// (gremlins) showed the other tests left open.

// The cache's size counts both generations: after a rotation the links
// of the old generation are still held, and counted.
func TestCacheLenCountsBothGenerations(t *testing.T) {
	c := newLinkCache(4) // generations of 2
	// 0 1 | rotate: old {0 1} | 2 | 3, rotate: old {2 3}, {0 1} dropped.
	for i, want := range []int{1, 2, 3, 2} {
		c.put(&Link{Hash: fmt.Sprint(i)}, nil)
		if got := c.len(); got != want {
			t.Fatalf("after %d puts len = %d, want %d", i+1, got, want)
		}
	}
	for i, held := range []bool{false, false, true, true} {
		if (c.get(fmt.Sprint(i)) != nil) != held {
			t.Errorf("link %d held = %v, want %v", i, !held, held)
		}
	}
}

// RevokeFrom takes issuers of up to maxClaimLen bytes: the longest issuer
// a token may carry can be revoked.
func TestLedgerRevokeFromLongestIssuer(t *testing.T) {
	e := newLedgerEnv(t)
	iss := strings.Repeat("i", maxClaimLen)
	if _, err := e.l.RevokeFrom(context.Background(), iss, "del_x", time.Now()); err != nil {
		t.Fatalf("RevokeFrom an issuer of %d bytes: %v", len(iss), err)
	}
	if _, ok := e.l.IsRevoked(iss, "del_x"); !ok {
		t.Fatal("not revoked")
	}
	if _, err := e.l.RevokeFrom(context.Background(), iss+"i", "del_x", time.Now()); err == nil {
		t.Fatalf("RevokeFrom an issuer of %d bytes accepted", len(iss)+1)
	}
}

// A revocation for every issuer lists the revoked id, then the tokens
// minted directly under it in id order, then their descendants.
func TestLedgerRevokeListsChildrenInIDOrder(t *testing.T) {
	f := newFixture(t)
	e := newLedgerEnv(t)
	now := time.Now()
	root, rootChain := mintRecorded(t, e.l, Grant{Issuer: f.self.urn, Delegate: f.alice.urn, Scopes: []string{ScopeAll}, TTL: time.Hour,
		CnfJWK: PublicJWK(f.alice.pub), Now: now}, f.self.priv)
	var children []string
	var first *Chain
	for _, d := range []*agent{f.bob, f.carol, f.evil} {
		m, c := mintRecorded(t, e.l, Grant{Issuer: f.alice.urn, Delegate: d.urn, Scopes: []string{ScopeTaskExecute}, Parent: rootChain,
			CnfJWK: PublicJWK(d.pub), Now: now}, f.alice.priv)
		children = append(children, m.Claims.ID)
		if first == nil {
			first = c
		}
	}
	grand, _ := mintRecorded(t, e.l, Grant{Issuer: f.bob.urn, Delegate: f.carol.urn, Scopes: []string{ScopeTaskExecute}, Parent: first, Now: now}, f.bob.priv)
	sort.Strings(children)
	want := append(append([]string{root.Claims.ID}, children...), grand.Claims.ID)
	rev, err := e.l.Revoke(context.Background(), root.Claims.ID, now)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(rev.IDs, want) {
		t.Fatalf("revoked ids %v, want %v", rev.IDs, want)
	}
}

// A revocation whose caller's step (the audit entry) fails is not made:
// nothing is revoked, in memory or on disk. Every step runs when none
// fails.
func TestLedgerRevokeAbortsWhenAlsoFails(t *testing.T) {
	e := newLedgerEnv(t)
	boom := errors.New("audit unavailable")
	var ran []string
	step := func(name string, err error) func(*storage.Tx, *Revocation) error {
		return func(tx *storage.Tx, r *Revocation) error {
			ran = append(ran, name)
			return err
		}
	}
	for _, revoke := range []func(also ...func(*storage.Tx, *Revocation) error) (*Revocation, error){
		func(also ...func(*storage.Tx, *Revocation) error) (*Revocation, error) {
			return e.l.Revoke(context.Background(), "del_a", time.Now(), also...)
		},
		func(also ...func(*storage.Tx, *Revocation) error) (*Revocation, error) {
			return e.l.RevokeFrom(context.Background(), "urn:asap:agent:x", "del_a", time.Now(), also...)
		},
	} {
		ran = nil
		rev, err := revoke(step("first", boom), step("second", nil))
		if !errors.Is(err, boom) || rev != nil {
			t.Fatalf("revocation whose step failed: %v, %v", rev, err)
		}
		if strings.Join(ran, " ") != "first" {
			t.Fatalf("steps run %v; the one after the failure must not run", ran)
		}
	}
	e.reopen(t)
	for _, iss := range []string{"", "urn:asap:agent:x"} {
		if _, ok := e.l.IsRevoked(iss, "del_a"); ok {
			t.Fatalf("IsRevoked(%q, del_a) after failed revocations", iss)
		}
	}

	ran = nil
	if _, err := e.l.Revoke(context.Background(), "del_b", time.Now(), step("first", nil), step("second", nil)); err != nil {
		t.Fatal(err)
	}
	if strings.Join(ran, " ") != "first second" {
		t.Fatalf("steps run %v, want both", ran)
	}
}

// fakeLink is a parsed link with just what the ledger reads: issuer, id,
// expiry, and a hash of its own.
func fakeLink(name string, exp int64) *Link {
	return &Link{Raw: name, Hash: HashOf(name), Claims: Claims{Issuer: "urn:asap:agent:" + name, ID: "del_" + name, Expiry: ptrDate(exp)}}
}

// The in-memory counts are pruned on every 1024th reservation, not more
// often (pruning walks every count), and only those of tokens idle and
// expired for more than an hour go.
func TestLedgerPruneCadenceAndGrace(t *testing.T) {
	e := newLedgerEnv(t)
	now := time.Unix(1_800_000_000, 0)
	exps := map[string]int64{
		"expired-1h1s": now.Unix() - 3601,
		"expired-1h":   now.Unix() - 3600,
		"expired-1s":   now.Unix() - 1,
		"live":         now.Unix() + 10,
	}
	ops := 0
	reserve := func(l *Link) {
		t.Helper()
		r, rej := e.l.Reserve(&Chain{Links: []*Link{l}}, now)
		if rej != nil {
			t.Fatal(rej)
		}
		r.Finish()
		ops++
	}
	held := func() map[string]bool {
		e.l.mu.Lock()
		defer e.l.mu.Unlock()
		out := map[string]bool{}
		for name := range exps {
			_, out[name] = e.l.used[HashOf(name)]
		}
		return out
	}
	for name, exp := range exps {
		reserve(fakeLink(name, exp))
	}
	fresh := fakeLink("fresh", now.Unix()+7200)
	for ops < 1024 {
		for name, ok := range held() {
			if !ok {
				t.Fatalf("count of %s pruned after %d reservations, before the 1024th", name, ops)
			}
		}
		reserve(fresh)
	}
	want := map[string]bool{"expired-1h1s": false, "expired-1h": true, "expired-1s": true, "live": true}
	if got := held(); !reflect.DeepEqual(got, want) {
		t.Fatalf("held after the 1024th reservation %v, want %v", got, want)
	}
}

// expiresAt closes e's database, reads the Badger expiry (Unix seconds, 0
// for none) of keys straight from its files, and opens it again.
func expiresAt(t *testing.T, e *ledgerEnv, keys ...[]byte) []int64 {
	t.Helper()
	if err := e.db.Close(); err != nil {
		t.Fatal(err)
	}
	bdb, err := badger.Open(badger.DefaultOptions(e.dir).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	out := make([]int64, len(keys))
	err = bdb.View(func(txn *badger.Txn) error {
		for i, k := range keys {
			item, err := txn.Get(k)
			if err != nil {
				return fmt.Errorf("key %q: %w", k, err)
			}
			out[i] = int64(item.ExpiresAt())
		}
		return nil
	})
	bdb.Close()
	if err != nil {
		t.Fatal(err)
	}
	e.open(t)
	return out
}

// A token's task count is kept until a day after it expires, its Seen
// record until a week after; both at least an hour.
func TestLedgerStageTTLs(t *testing.T) {
	e := newLedgerEnv(t)
	now := time.Now()
	live := fakeLink("live", now.Add(2*time.Hour).Unix())
	gone := fakeLink("gone", now.Add(-30*24*time.Hour).Unix())
	// Badger's expiry is the time of the write plus the TTL Stage chose
	// then: bounded by the clock before and after the commit.
	var before, after int64
	for _, l := range []*Link{live, gone} {
		r, rej := e.l.Reserve(&Chain{Links: []*Link{l}}, now)
		if rej != nil {
			t.Fatal(rej)
		}
		if l == live {
			before = time.Now().Unix()
		}
		if err := e.db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error { return r.Stage(tx, now) }); err != nil {
			t.Fatal(err)
		}
		r.Finish()
	}
	after = time.Now().Unix() + 1
	key := func(l *Link) []byte { return seenKey(l.Claims.Issuer, l.Claims.ID, l.Hash) }
	got := expiresAt(t, e, countKey(live.Hash), key(live), countKey(gone.Hash), key(gone))
	day, week, hour := int64(24*3600), int64(7*24*3600), int64(3600)
	exp := int64(*live.Claims.Expiry)
	spread := after - before
	for i, w := range []struct {
		what   string
		lo, hi int64
	}{
		{"count of a live token", exp + day - 1, exp + day + spread},
		{"Seen of a live token", exp + week - 1, exp + week + spread},
		{"count of a long expired token", before + hour, after + hour},
		{"Seen of a long expired token", before + hour, after + hour},
	} {
		if got[i] < w.lo || got[i] > w.hi {
			t.Errorf("%s expires at %s, want within %s..%s", w.what, time.Unix(got[i], 0).UTC(), time.Unix(w.lo, 0).UTC(), time.Unix(w.hi, 0).UTC())
		}
	}
}

// A minted token's record is kept until a week after the token expires,
// and at least an hour.
func TestLedgerRecordTTL(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	for _, tc := range []struct {
		exp  time.Time
		want time.Duration
	}{
		{now.Add(2 * time.Hour), 2*time.Hour + 7*24*time.Hour},
		{now.Add(-6 * 24 * time.Hour), 24 * time.Hour},
		{now.Add(-30 * 24 * time.Hour), time.Hour},
	} {
		if got := recordTTL(&Record{ExpiresAt: tc.exp}, now); got != tc.want {
			t.Errorf("recordTTL of a token expiring %v from now = %v, want %v", tc.exp.Sub(now), got, tc.want)
		}
	}

	f := newFixture(t)
	e := newLedgerEnv(t)
	before := time.Now().Unix()
	m, _ := mintRecorded(t, e.l, Grant{Issuer: f.self.urn, Delegate: f.alice.urn, Scopes: []string{ScopeTaskExecute}, TTL: time.Hour}, f.self.priv)
	after := time.Now().Unix() + 1
	got := expiresAt(t, e, issuedKey(m.Claims.ID))[0]
	lo := int64(*m.Claims.Expiry) + 7*24*3600 - (after - before) - 1
	hi := int64(*m.Claims.Expiry) + 7*24*3600 + (after - before) + 1
	if got < lo || got > hi {
		t.Fatalf("record of a token expiring %s is kept until %s, want a week later", time.Unix(int64(*m.Claims.Expiry), 0).UTC(), time.Unix(got, 0).UTC())
	}
}

// Under a parent with max_tasks, a child may take the parent's limit
// itself (inherited, or asked for explicitly) but no more; a limit of 0
// is a limit too. Every such child verifies under its parent.
func TestMintMaxTasksAtTheParentsLimit(t *testing.T) {
	f := newFixture(t)
	v := f.verifier()
	v.Now = func() time.Time { return f.t0.Add(time.Minute) }
	for _, pm := range []int64{0, 5} {
		_, parent := f.mintRoot(t, Grant{TTL: time.Hour, MaxTasks: i64(pm)})
		for _, ask := range []*int64{nil, i64(pm)} {
			m, err := Mint(Grant{Issuer: f.alice.urn, Delegate: f.bob.urn, Scopes: []string{ScopeTaskExecute}, Parent: parent, MaxTasks: ask,
				Now: f.t0.Add(time.Minute)}, f.alice.priv)
			if err != nil {
				t.Fatalf("parent max_tasks %d, child asks %v: %v", pm, ask, err)
			}
			if m.Claims.Constraints == nil || m.Claims.Constraints.MaxTasks == nil || *m.Claims.Constraints.MaxTasks != pm {
				t.Fatalf("parent max_tasks %d, child asks %v: child constraints %+v, want max_tasks %d", pm, ask, m.Claims.Constraints, pm)
			}
			mustVerify(t, v, m.Chain)
		}
		_, err := Mint(Grant{Issuer: f.alice.urn, Delegate: f.bob.urn, Scopes: []string{ScopeTaskExecute}, Parent: parent, MaxTasks: i64(pm + 1),
			Now: f.t0.Add(time.Minute)}, f.alice.priv)
		if !errors.Is(err, ErrInvalidGrant) {
			t.Fatalf("parent max_tasks %d, child asks %d: %v, want refused", pm, pm+1, err)
		}
	}
}

// A child copies its parent's nbf only when the parent opens after the
// child is issued; a parent open from the child's iat on adds no nbf.
func TestMintCopiesParentNbfOnlyWhenLater(t *testing.T) {
	f := newFixture(t)
	v := f.verifier()
	parent := mustVerify(t, v, f.sign(with(f.rootClaims(), "nbf", f.t0.Unix()), f.self))
	for _, tc := range []struct {
		now     time.Time
		wantNbf bool
	}{{f.t0, false}, {f.t0.Add(time.Second), false}, {f.t0.Add(-time.Second), true}} {
		m, err := Mint(Grant{Issuer: f.alice.urn, Delegate: f.bob.urn, Scopes: []string{ScopeTaskExecute}, Parent: parent, Now: tc.now}, f.alice.priv)
		if err != nil {
			t.Fatal(err)
		}
		if got := m.Claims.NotBefore != nil; got != tc.wantNbf {
			t.Fatalf("child issued %v after the parent's nbf: nbf %v, want nbf set %v", tc.now.Sub(f.t0), m.Claims.NotBefore, tc.wantNbf)
		}
		if tc.wantNbf && int64(*m.Claims.NotBefore) != f.t0.Unix() {
			t.Fatalf("child nbf %d, want the parent's %d", *m.Claims.NotBefore, f.t0.Unix())
		}
		mustVerify(t, v, m.Chain)
	}
}

// Dates from 0 to 2^40 seconds inclusive are accepted; outside, refused.
func TestNumericDateRange(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "1099511627776": 1 << 40, "1700000000.9": 1_700_000_000} {
		var d NumericDate
		if err := json.Unmarshal([]byte(in), &d); err != nil || int64(d) != want {
			t.Errorf("date %s: %d, %v; want %d", in, d, err, want)
		}
	}
	for _, in := range []string{"-1", "-0.5", "1099511627777", `"1"`} {
		var d NumericDate
		if err := json.Unmarshal([]byte(in), &d); err == nil {
			t.Errorf("date %s accepted as %d", in, d)
		}
	}
}

// Audience.UnmarshalJSON refuses empty input instead of panicking.
func TestAudienceUnmarshalEmpty(t *testing.T) {
	for _, in := range [][]byte{nil, {}, []byte("  \n")} {
		var a Audience
		if err := a.UnmarshalJSON(in); err == nil {
			t.Errorf("Audience.UnmarshalJSON(%q) accepted: %q", in, a)
		}
	}
}

// truncate keeps a string of exactly n bytes whole, and marks a cut.
func TestTruncateAtTheLimit(t *testing.T) {
	for _, tc := range []struct {
		s    string
		n    int
		want string
	}{{"abc", 3, "abc"}, {"abcd", 3, "abc…"}, {"", 0, ""}, {"ab", 3, "ab"}} {
		if got := truncate(tc.s, tc.n); got != tc.want {
			t.Errorf("truncate(%q, %d) = %q, want %q", tc.s, tc.n, got, tc.want)
		}
	}
	// An untrusted issuer of exactly 64 bytes is named whole.
	f := newFixture(t)
	iss := "urn:asap:agent:" + strings.Repeat("x", 64-len("urn:asap:agent:"))
	_, rej := f.verifier().Verify(f.sign(with(f.rootClaims(), "iss", iss), f.evil))
	wantRejection(t, rej, ClassSignature, "untrusted_issuer")
	if !strings.Contains(rej.Detail, "issuer "+iss+" is not trusted") {
		t.Fatalf("detail %q does not name the 64-byte issuer whole", rej.Detail)
	}
}

// A header of exactly MaxSize bytes is accepted; one byte more is not.
func TestVerifyExactlyMaxSize(t *testing.T) {
	f := newFixture(t)
	r := f.root()
	v := f.verifier()
	v.MaxSize = len(r)
	mustVerify(t, v, r)
	v = f.verifier()
	v.MaxSize = len(r) - 1
	_, rej := v.Verify(r)
	wantRejection(t, rej, ClassMalformed, "token_too_large")
}
