package audit

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/asap-sidecar/asap-sidecar/storage"
	"github.com/dgraph-io/badger/v4"
	"golang.org/x/mod/sumdb/note"
)

// rotated is a log whose checkpoints at sizes 3 and 5 were signed with
// key one, and at 8 with key two (same name): a key rotation.
type rotated struct {
	one, two     note.Signer
	oneV, twoV   note.Verifier
	oneKey       ed25519.PrivateKey
	dir          string
	checkpointAt map[uint64][]byte
}

func newRotated(t *testing.T) (*rotated, *Log) {
	t.Helper()
	ctx := context.Background()
	r := &rotated{dir: t.TempDir(), checkpointAt: map[uint64][]byte{}}
	var err error
	_, r.oneKey, _ = ed25519.GenerateKey(rand.Reader)
	_, twoKey, _ := ed25519.GenerateKey(rand.Reader)
	var oneVKey, twoVKey string
	if r.one, oneVKey, err = NewSigner(Origin("urn:asap:agent:demo"), r.oneKey); err != nil {
		t.Fatal(err)
	}
	if r.two, twoVKey, err = NewSigner(Origin("urn:asap:agent:demo"), twoKey); err != nil {
		t.Fatal(err)
	}
	r.oneV, _ = note.NewVerifier(oneVKey)
	r.twoV, _ = note.NewVerifier(twoVKey)
	db := openDB(t, r.dir)
	t.Cleanup(func() { db.Close() })
	l := New(db)
	for _, step := range []struct {
		n int
		s note.Signer
	}{{3, r.one}, {2, r.one}, {3, r.two}} {
		fill(t, db, l, step.n)
		cp, err := l.Checkpoint(ctx, step.s)
		if err != nil {
			t.Fatal(err)
		}
		size, _, _ := l.Size()
		r.checkpointAt[size] = cp
	}
	return r, l
}

func TestKeyHistoryAfterRotation(t *testing.T) {
	r, l := newRotated(t)
	h, err := l.KeyHistory()
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != 2 {
		t.Fatalf("history %+v", h)
	}
	one, two := h[0], h[1]
	if one.VKey != r.one.(KeySigner).VerifierKey() || one.FirstSize != 3 || one.LastSize != 5 ||
		two.VKey != r.two.(KeySigner).VerifierKey() || two.FirstSize != 8 || two.LastSize != 8 {
		t.Fatalf("history %+v", h)
	}
	if one.FirstUsed.IsZero() || one.LastUsed.Before(one.FirstUsed) || two.FirstUsed.Before(one.LastUsed) {
		t.Fatalf("times %+v", h)
	}
	if one.EndorsedBy != two.VKey || two.EndorsedBy != "" {
		t.Fatalf("endorsements: one by %q, two by %q", one.EndorsedBy, two.EndorsedBy)
	}
	// Only the new key is configured now: the old checkpoints verify
	// with the old key, through the history.
	v, err := l.Verify(r.twoV)
	if err != nil || !v.Valid || v.Checkpoints != 3 || v.Size != 8 {
		t.Fatalf("verify with the new key: %+v %v", v, err)
	}
	// previous_keys still configured: the same.
	if v, _ := l.VerifyKeys(r.twoV, r.oneV); !v.Valid || v.Checkpoints != 3 {
		t.Fatalf("verify with both keys: %+v", v)
	}
	// The old key alone cannot vouch for the new one.
	v, _ = l.Verify(r.oneV)
	expectBad(t, v, 5, "checkpoint at size 8 does not verify")
}

// The history cannot be extended behind the sidecar's back: a key written
// into it without an endorsement, an old key's span stretched, and a
// leaked old key signing beyond its span are all refused.
func TestKeyHistoryTampering(t *testing.T) {
	t.Run("stranger's key added", func(t *testing.T) {
		r, l := newRotated(t)
		_, key, _ := ed25519.GenerateKey(rand.Reader)
		stranger, vkey, _ := NewSigner(Origin("urn:asap:agent:demo"), key)
		signed := r.resign(t, 8, stranger)
		_, l = reopenAfter(t, l.db, func(txn *badger.Txn) error {
			u, _ := json.Marshal(KeyUse{VKey: vkey, FirstSize: 8, LastSize: 8})
			if err := txn.Set(keyUseKey(vkey), u); err != nil {
				return err
			}
			return txn.Set(checkpointKey(8), signed)
		})
		v, _ := l.Verify(r.twoV)
		expectBad(t, v, 5, "checkpoint at size 8 does not verify")
	})
	t.Run("old key signs beyond its span", func(t *testing.T) {
		r, l := newRotated(t)
		signed := r.resign(t, 8, r.one)
		_, l = reopenAfter(t, l.db, func(txn *badger.Txn) error { return txn.Set(checkpointKey(8), signed) })
		v, _ := l.Verify(r.twoV)
		expectBad(t, v, 5, "signed checkpoints of sizes 3 to 5 only")
	})
	t.Run("old key's span stretched", func(t *testing.T) {
		r, l := newRotated(t)
		h, _ := l.KeyHistory()
		old := h[0]
		old.LastSize = 8
		signed := r.resign(t, 8, r.one)
		_, l = reopenAfter(t, l.db, func(txn *badger.Txn) error {
			u, _ := json.Marshal(old)
			if err := txn.Set(keyUseKey(old.VKey), u); err != nil {
				return err
			}
			return txn.Set(checkpointKey(8), signed)
		})
		v, _ := l.Verify(r.twoV)
		expectBad(t, v, 0, "checkpoint at size 3 does not verify")
	})
	t.Run("unreadable entry", func(t *testing.T) {
		r, l := newRotated(t)
		_, l = reopenAfter(t, l.db, func(txn *badger.Txn) error {
			return txn.Set(keyUseKey(r.one.(KeySigner).VerifierKey()), []byte("{"))
		})
		if _, err := l.Verify(r.twoV); err == nil || !strings.Contains(err.Error(), "key history entry") {
			t.Fatalf("err = %v", err)
		}
	})
}

// resign signs the stored checkpoint body at size with s instead.
func (r *rotated) resign(t *testing.T, size uint64, s note.Signer) []byte {
	t.Helper()
	body, err := parseUnverified(r.checkpointAt[size])
	if err != nil {
		t.Fatal(err)
	}
	signed, err := note.Sign(&note.Note{Text: string(body.Marshal())}, s)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

// The history is in the order the keys took over the log (first size),
// not the order their clocks say: a key that took over later with its
// clock set back is still listed after the key it replaced.
func TestKeyHistoryIsOrderedByFirstSize(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	l := New(db)
	early := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	uses := []KeyUse{
		// Stored under "a…", so a scan meets it first; its clock read
		// earlier, but it took over at size 8.
		{VKey: "a+00000001+later", FirstSize: 8, LastSize: 9, FirstUsed: early, LastUsed: early},
		{VKey: "b+00000002+first", FirstSize: 3, LastSize: 5, FirstUsed: early.Add(time.Hour), LastUsed: early.Add(time.Hour)},
	}
	if err := db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
		for _, u := range uses {
			b, _ := json.Marshal(u)
			tx.Set(keyUseKey(u.VKey), b)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	h, err := l.KeyHistory()
	if err != nil || len(h) != 2 || h[0].FirstSize != 3 || h[1].FirstSize != 8 {
		t.Fatalf("history %+v, %v; want the key of size 3 before the key of size 8", h, err)
	}
}
