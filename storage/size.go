package storage

import (
	"os"
	"path/filepath"
	"strings"
)

// Size is what the database occupies on disk, in bytes.
type Size struct {
	// LSM is the key tree: its tables (.sst) and the logs of the
	// memtables not yet flushed to tables (.mem).
	LSM int64
	// ValueLog is the value log (.vlog).
	ValueLog int64
}

// Size reads the database's file sizes now: one directory listing and a
// stat per file, cheap enough for every metrics scrape. Badger's own
// Size is refreshed once a minute and leaves out the memtable logs
// where new writes land first. Sizes are the space allocated on disk,
// not the files' lengths: Badger preallocates its logs as sparse files.
func (db *DB) Size() (Size, error) {
	var s Size
	entries, err := os.ReadDir(db.dir)
	if err != nil {
		return s, err
	}
	for _, e := range entries {
		name := e.Name()
		var into *int64
		switch {
		case strings.HasSuffix(name, ".sst"), strings.HasSuffix(name, ".mem"):
			into = &s.LSM
		case strings.HasSuffix(name, ".vlog"):
			into = &s.ValueLog
		default:
			continue
		}
		info, err := os.Stat(filepath.Join(db.dir, name))
		if err != nil {
			continue // removed by compaction or GC since the listing
		}
		*into += allocated(info)
	}
	return s, nil
}
