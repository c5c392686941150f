package storage

import (
	"fmt"
	"sort"

	"github.com/dgraph-io/badger/v4"
)

// SpaceSize is how much one key space holds: live keys and the bytes of
// their keys and values (Badger's own per-key overhead not included).
type SpaceSize struct {
	Space Space
	Keys  int
	Bytes int64
	// StaleBytes are the keys and values of overwritten or deleted
	// versions still on disk, until compaction drops them.
	StaleBytes int64
}

// SpaceSizes reads a closed database in dir, read-only, and sums its live
// keys per key space, in space order. It is for capacity planning and the
// disk benchmark; the sidecar must not be running on dir.
func SpaceSizes(dir string) ([]SpaceSize, error) {
	bdb, err := badger.Open(badger.DefaultOptions(dir).WithReadOnly(true).WithLogger(nil))
	if err != nil {
		return nil, fmt.Errorf("storage: opening %s read-only: %w", dir, err)
	}
	defer bdb.Close()
	by := map[Space]*SpaceSize{}
	err = bdb.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{AllVersions: true})
		defer it.Close()
		var last []byte
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			k := item.Key()
			if len(k) == 0 {
				continue
			}
			s := by[Space(k[0])]
			if s == nil {
				s = &SpaceSize{Space: Space(k[0])}
				by[Space(k[0])] = s
			}
			n := int64(len(k)) + item.ValueSize()
			// Versions come newest first: the first of a key is live
			// unless it is a deletion or expired.
			if last != nil && string(last) == string(k) || item.IsDeletedOrExpired() {
				s.StaleBytes += n
			} else {
				s.Keys++
				s.Bytes += n
			}
			last = item.KeyCopy(last[:0])
		}
		return nil
	})
	out := make([]SpaceSize, 0, len(by))
	for _, s := range by {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Space < out[j].Space })
	return out, err
}
