package audit

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/wire"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

// KeyUse is one key the log's checkpoints were signed with, and when: the
// log's key history. It is written in the transaction that stores a
// checkpoint, so every stored checkpoint lies within the span of the key
// that signed it, and verification after a key rotation checks each
// checkpoint with the key of its time.
//
// The database alone is no reason to trust a key: whoever can write it
// could add their own. So the signer of each new checkpoint endorses the
// other keys of its name, their span included, and verification accepts
// a history key only under an endorsement by a trusted key (or by a key
// it already accepted).
type KeyUse struct {
	// VKey is the signed-note verifier key (name+hash+key).
	VKey string `json:"vkey"`
	// FirstUsed and LastUsed are when the key signed its first and its
	// latest checkpoint.
	FirstUsed time.Time `json:"first_used"`
	LastUsed  time.Time `json:"last_used"`
	// FirstSize and LastSize are the tree sizes of those checkpoints.
	FirstSize uint64 `json:"first_size"`
	LastSize  uint64 `json:"last_size"`
	// EndorsedBy is the vkey of the key that signed Endorsement, over
	// VKey and its span (endorsement).
	EndorsedBy  string `json:"endorsed_by,omitempty"`
	Endorsement []byte `json:"endorsement,omitempty"`
}

// endorsement is the message a key signs to vouch for another's span.
func (u *KeyUse) endorsement() []byte {
	return fmt.Appendf(nil, "asap audit key history\n%s\n%d\n%d\n", u.VKey, u.FirstSize, u.LastSize)
}

// vkeyName is the key name of a verifier key (the text before its '+').
func vkeyName(vkey string) string {
	name, _, _ := strings.Cut(vkey, "+")
	return name
}

var keysPref = storage.SpaceAudit.Prefix([]byte("k"))

func keyUseKey(vkey string) []byte { return storage.SpaceAudit.Key([]byte("k"), []byte(vkey)) }

// KeySigner is a note signer that names its verifier key; Checkpoint
// records the keys of such signers in the log's key history. NewSigner's
// signers are KeySigners.
type KeySigner interface {
	note.Signer
	VerifierKey() string
}

// recordKeyUse extends s's span in the key history to a checkpoint of
// size signed at now, and has s endorse the other keys of its name whose
// span it has not endorsed yet.
func recordKeyUse(tx *storage.Tx, s KeySigner, size uint64, now time.Time) error {
	vkey := s.VerifierKey()
	var stale []KeyUse
	err := tx.Scan(keysPref, false, func(k, v []byte) (bool, error) {
		var u KeyUse
		if err := json.Unmarshal(v, &u); err != nil {
			return false, fmt.Errorf("audit: the key history entry %q is unreadable: %w", k[len(keysPref):], err)
		}
		if u.VKey != vkey && vkeyName(u.VKey) == s.Name() && u.EndorsedBy != vkey {
			stale = append(stale, u)
		}
		return true, nil
	})
	if err != nil {
		return err
	}
	for _, u := range stale {
		if u.Endorsement, err = s.Sign(u.endorsement()); err != nil {
			return fmt.Errorf("audit: endorsing the previous key %s: %w", u.VKey, err)
		}
		u.EndorsedBy = vkey
		b, err := json.Marshal(u)
		if err != nil {
			return err
		}
		tx.Set(keyUseKey(u.VKey), b)
	}
	return extendKeyUse(tx, vkey, size, now)
}

// extendKeyUse writes vkey's record, its span extended to size.
func extendKeyUse(tx *storage.Tx, vkey string, size uint64, now time.Time) error {
	k := keyUseKey(vkey)
	now = wire.Time(now)
	u := KeyUse{VKey: vkey, FirstUsed: now, FirstSize: size, LastSize: size}
	b, err := tx.Get(k)
	switch {
	case errors.Is(err, storage.ErrNotFound):
	case err != nil:
		return err
	default:
		if err := json.Unmarshal(b, &u); err != nil {
			return fmt.Errorf("audit: the key history entry of %s is unreadable: %w", vkey, err)
		}
		u.FirstSize, u.LastSize = min(u.FirstSize, size), max(u.LastSize, size)
		// A key back in use after a rotation widens its span; the old
		// endorsement no longer covers it (the next key renews it).
		u.EndorsedBy, u.Endorsement = "", nil
	}
	u.LastUsed = now
	b, err = json.Marshal(u)
	if err != nil {
		return err
	}
	tx.Set(k, b)
	return nil
}

// KeyHistory lists every key that signed a checkpoint of the log, by the
// size it first signed at.
func (l *Log) KeyHistory() ([]KeyUse, error) {
	out := []KeyUse{}
	err := l.db.View(func(r *storage.Reader) error {
		return r.Scan(keysPref, false, func(k, v []byte) (bool, error) {
			var u KeyUse
			if err := json.Unmarshal(v, &u); err != nil {
				return false, fmt.Errorf("audit: the key history entry %q is unreadable: %w", k[len(keysPref):], err)
			}
			out = append(out, u)
			return true, nil
		})
	})
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].FirstSize != out[j].FirstSize {
			return out[i].FirstSize < out[j].FirstSize
		}
		return out[i].FirstUsed.Before(out[j].FirstUsed)
	})
	return out, err
}

// keyring resolves the signature of a checkpoint of size: a trusted key
// (the configured key and previous keys) verifies at any size; a key of
// the history, under a trusted key's name, only within its span.
type keyring struct {
	trusted []note.Verifier
	history []historyKey
	size    uint64
}

type historyKey struct {
	v   note.Verifier
	use KeyUse
}

func newKeyring(trusted []note.Verifier, history []KeyUse) (*keyring, error) {
	k := &keyring{trusted: trusted}
	vouch := map[string]note.Verifier{} // vkeys whose endorsements count
	for _, v := range trusted {
		for _, u := range history {
			if vkeyName(u.VKey) == v.Name() && k.isTrusted(u.VKey) {
				vouch[u.VKey] = v
			}
		}
	}
	parsed := make([]note.Verifier, len(history))
	for i, u := range history {
		v, err := note.NewVerifier(u.VKey)
		if err != nil {
			return nil, fmt.Errorf("audit: the key history holds an unusable key %q: %w", u.VKey, err)
		}
		parsed[i] = v
	}
	// Accept endorsed keys until nothing changes: a key endorsed by an
	// accepted key is accepted (rotations A→B→C endorse A by B, B by C).
	accepted := make([]bool, len(history))
	for grew := true; grew; {
		grew = false
		for i, u := range history {
			by, ok := vouch[u.EndorsedBy]
			if accepted[i] || !ok || by.Name() != parsed[i].Name() || !by.Verify(u.endorsement(), u.Endorsement) {
				continue
			}
			accepted[i], grew = true, true
			k.history = append(k.history, historyKey{parsed[i], u})
			vouch[u.VKey] = parsed[i]
		}
	}
	return k, nil
}

// isTrusted reports whether vkey is one of the trusted keys.
func (k *keyring) isTrusted(vkey string) bool {
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return false
	}
	for _, t := range k.trusted {
		if t.Name() == v.Name() && t.KeyHash() == v.KeyHash() {
			return true
		}
	}
	return false
}

func (k *keyring) Verifier(name string, hash uint32) (note.Verifier, error) {
	for _, v := range k.trusted {
		if v.Name() == name && v.KeyHash() == hash {
			return v, nil
		}
	}
	for _, h := range k.history {
		if h.v.Name() != name || h.v.KeyHash() != hash {
			continue
		}
		if h.use.FirstSize <= k.size && k.size <= h.use.LastSize {
			return h.v, nil
		}
		return nil, fmt.Errorf("it is signed by key %s+%08x, which signed checkpoints of sizes %d to %d only (in use %s to %s)",
			name, hash, h.use.FirstSize, h.use.LastSize, h.use.FirstUsed.Format(time.RFC3339), h.use.LastUsed.Format(time.RFC3339))
	}
	return nil, &note.UnknownVerifierError{Name: name, KeyHash: hash}
}

// openCheckpoint opens a signed checkpoint with the keys of k at its size.
func (k *keyring) openCheckpoint(signed []byte, size uint64) (*checkpointBody, error) {
	k.size = size
	n, err := note.Open(signed, k)
	if err != nil {
		return nil, err
	}
	var c checkpointBody
	if _, err := c.Unmarshal([]byte(n.Text)); err != nil {
		return nil, err
	}
	if c.Origin != n.Sigs[0].Name {
		return nil, errors.New("checkpoint origin is not the signer's name")
	}
	if c.Size != size {
		return nil, fmt.Errorf("the checkpoint stored at size %d says size %d", size, c.Size)
	}
	return &c, nil
}
