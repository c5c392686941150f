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
		it := txn.NewIterator(badger.IteratorOptions{})
		defer it.Close()
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
			s.Keys++
			s.Bytes += int64(len(k)) + item.ValueSize()
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
