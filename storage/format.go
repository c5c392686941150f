package storage

import (
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// FormatVersion is the on-disk format this build reads and writes, kept in
// the database under m "format". v1.3.0 writes format 1. A build that
// changes the format raises it and migrates older databases in Open (with
// a test per migration); one that finds a newer format refuses to open it
// rather than misread it.
const FormatVersion = 1

var formatKey = SpaceMeta.KeyString("format")

// ErrNewerFormat is Open's answer for a database written by a newer build.
var ErrNewerFormat = errors.New("storage: the database was written by a newer asap-sidecar")

// checkFormat reads the database's format and records FormatVersion in a
// database that has none (a new one, or one written before v1.3.0, whose
// format is the same); a read-only open writes nothing.
func checkFormat(bdb *badger.DB, dir string, readOnly bool) error {
	var have uint64
	found := false
	err := bdb.View(func(txn *badger.Txn) error {
		item, err := txn.Get(formatKey)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		found = true
		return item.Value(func(v []byte) error {
			have, err = DecodeUint64(v)
			return err
		})
	})
	if err != nil {
		return fmt.Errorf("storage: reading the format of %s: %w", dir, err)
	}
	switch {
	case !found && readOnly:
		return nil
	case !found:
		return bdb.Update(func(txn *badger.Txn) error { return txn.Set(formatKey, EncodeUint64(FormatVersion)) })
	case have > FormatVersion:
		return fmt.Errorf("%w: %s has format %d, this build reads up to %d; run the newer asap-caddy (or restore a backup made for this version)", ErrNewerFormat, dir, have, FormatVersion)
	case have < FormatVersion:
		return fmt.Errorf("storage: %s has format %d and this build has no migration from it to %d", dir, have, FormatVersion)
	}
	return nil
}

// Format is the on-disk format of the open database.
func (db *DB) Format() (uint64, error) {
	var v uint64
	err := db.View(func(r *Reader) error {
		b, err := r.Get(formatKey)
		if errors.Is(err, ErrNotFound) {
			return nil // read-only open of a database from before v1.3.0
		}
		if err != nil {
			return err
		}
		v, err = DecodeUint64(b)
		return err
	})
	return v, err
}
