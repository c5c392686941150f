package delegation

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/asap-sidecar/asap-sidecar/storage"
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
