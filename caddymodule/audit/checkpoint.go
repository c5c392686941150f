package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/transparency-dev/formats/log"
	"golang.org/x/mod/sumdb/note"

	"github.com/asap-sidecar/asap-sidecar/storage"
)

// Origin is the checkpoint origin line (and signer name) of an agent's log.
func Origin(agent string) string { return agent + "/audit" }

// signer signs notes with an Ed25519 key under the signed-note key hash
// rules of golang.org/x/mod/sumdb/note.
type signer struct {
	name string
	hash uint32
	key  ed25519.PrivateKey
	vkey string
}

func (s *signer) VerifierKey() string { return s.vkey }

func (s *signer) Name() string                    { return s.name }
func (s *signer) KeyHash() uint32                 { return s.hash }
func (s *signer) Sign(msg []byte) ([]byte, error) { return ed25519.Sign(s.key, msg), nil }

// NewSigner returns a note signer for key under name, and the verifier key
// (vkey) clients check its checkpoints with.
func NewSigner(name string, key ed25519.PrivateKey) (note.Signer, string, error) {
	vkey, err := note.NewEd25519VerifierKey(name, key.Public().(ed25519.PublicKey))
	if err != nil {
		return nil, "", err
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, "", err
	}
	return &signer{name: name, hash: v.KeyHash(), key: key, vkey: vkey}, vkey, nil
}

// Checkpoint signs the log's current size and root with s (its name is the
// origin) and stores it, unless the latest checkpoint already covers this
// size. It returns the signed note. When s is a KeySigner, its key's span
// in the key history grows in the same transaction.
func (l *Log) Checkpoint(ctx context.Context, s note.Signer) ([]byte, error) {
	size, root, err := l.Size()
	if err != nil {
		return nil, err
	}
	if latest, lsize, err := l.LatestCheckpoint(); err != nil {
		return nil, err
	} else if latest != nil && lsize == size && signedBy(latest, s) {
		return latest, nil
	}
	body := log.Checkpoint{Origin: s.Name(), Size: size, Hash: root}.Marshal()
	signed, err := note.Sign(&note.Note{Text: string(body)}, s)
	if err != nil {
		return nil, fmt.Errorf("audit: signing checkpoint: %w", err)
	}
	now := time.Now()
	err = l.db.Commit(ctx, storage.Strict, func(tx *storage.Tx) error {
		tx.Set(checkpointKey(size), signed)
		if ks, ok := s.(KeySigner); ok {
			return recordKeyUse(tx, ks, size, now)
		}
		return nil
	})
	return signed, err
}

// signedBy reports whether a signed note carries a signature of s (its
// name and key hash; a new key under the same name needs a new note).
func signedBy(signed []byte, s note.Signer) bool {
	_, sigs, ok := bytes.Cut(signed, []byte("\n\n"))
	if !ok {
		return false
	}
	for _, line := range strings.Split(string(sigs), "\n") {
		rest, ok := strings.CutPrefix(line, "— "+s.Name()+" ")
		if !ok {
			continue
		}
		raw, err := base64.StdEncoding.DecodeString(rest)
		if err == nil && len(raw) >= 4 && binary.BigEndian.Uint32(raw) == s.KeyHash() {
			return true
		}
	}
	return false
}

// openText is the text part of a signed note (before the blank line).
func openText(signed []byte) []byte {
	for i := 0; i+1 < len(signed); i++ {
		if signed[i] == '\n' && signed[i+1] == '\n' {
			return signed[:i+1]
		}
	}
	return signed
}

// LatestCheckpoint returns the newest stored checkpoint and its size (nil
// when there is none).
func (l *Log) LatestCheckpoint() ([]byte, uint64, error) {
	var out []byte
	var size uint64
	err := l.db.View(func(r *storage.Reader) error {
		return r.Scan(checkpointsPref, true, func(k, v []byte) (bool, error) {
			s, err := seqOf(checkpointsPref, k)
			if err != nil {
				return false, err
			}
			out, size = append([]byte(nil), v...), s
			return false, nil
		})
	})
	return out, size, err
}

// StoredCheckpoint returns the checkpoint stored at size (nil when none
// was signed at that size).
func (l *Log) StoredCheckpoint(size uint64) ([]byte, error) {
	var out []byte
	err := l.db.View(func(r *storage.Reader) error {
		v, err := r.Get(checkpointKey(size))
		if errors.Is(err, storage.ErrNotFound) {
			return nil
		}
		out = v
		return err
	})
	return out, err
}

// checkpoints lists stored checkpoints by size.
func (l *Log) checkpoints() (map[uint64][]byte, error) {
	out := map[uint64][]byte{}
	err := l.db.View(func(r *storage.Reader) error {
		return r.Scan(checkpointsPref, false, func(k, v []byte) (bool, error) {
			size, err := seqOf(checkpointsPref, k)
			out[size] = append([]byte(nil), v...)
			return err == nil, err
		})
	})
	return out, err
}

// ParseCheckpoint opens a signed checkpoint with verifier v.
func ParseCheckpoint(signed []byte, v note.Verifier) (*log.Checkpoint, error) {
	n, err := note.Open(signed, note.VerifierList(v))
	if err != nil {
		return nil, err
	}
	var c log.Checkpoint
	if _, err := c.Unmarshal([]byte(n.Text)); err != nil {
		return nil, err
	}
	if c.Origin != v.Name() {
		return nil, errors.New("checkpoint origin is not the signer's name")
	}
	return &c, nil
}

// checkpointBody is the checkpoint's text: origin, size, root.
type checkpointBody = log.Checkpoint
