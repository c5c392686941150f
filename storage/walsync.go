package storage

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// logSyncer makes every write Badger has committed durable by fdatasync
// on Badger's log files: the memtable write-ahead logs (NNNNN.mem) and
// the value log (NNNNNN.vlog).
//
// Why not Badger's own Sync: it holds the DB lock for the whole msync of
// the memtable log, and every commit takes that lock, so a commit waited
// for the previous group's fsync (measured: 567 µs a commit during a sync,
// 77 µs outside one) and group commit could not overlap the two. It also
// syncs only the current memtable and value log file, so writes that
// landed in a file just before Badger rotated it were not made durable
// until the file was flushed. fdatasync of the file is what msync does on
// Linux (vfs_fsync_range), without the lock.
//
// The value log only takes values at or above Badger's ValueThreshold
// (1 MiB: the sidecar's records are far smaller) and value-log GC
// rewrites, so it is synced only after the pipeline staged such a value or
// GC ran (vlogWritten): an fdatasync of an untouched file still costs a
// disk cache flush, which measured 100-160 µs here, on every strict group.
//
// Badger numbers both kinds of file sequentially and only ever appends to
// the newest one, so the syncer remembers the newest file it synced and, on
// each sync, syncs that file and every newer one; a file seen for the first
// time also gets its directory entry synced.
type logSyncer struct {
	dir string
	// fsync is fdatasync; a test records which files it was called on.
	fsync func(*os.File) error
	mu    sync.Mutex // Sync is called by the strict syncer and the flush loop
	mem   logSeq
	vl    logSeq
	// vlogWritten is set when the value log may have taken writes since
	// its last sync.
	vlogWritten atomic.Bool
	// dirOwed: a log file was adopted whose directory entry has not been
	// synced yet; every sync tries until one succeeds.
	dirOwed bool
}

// logSeq follows one sequence of log files.
type logSeq struct {
	ext   string
	width int
	fid   int      // the newest file synced so far
	f     *os.File // open handle on fid; nil before the first sync
}

func newLogSyncer(dir string) *logSyncer {
	return &logSyncer{dir: dir, fsync: fdatasync, mem: logSeq{ext: ".mem", width: 5}, vl: logSeq{ext: ".vlog", width: 6}}
}

// Sync makes every write committed before it started durable.
func (s *logSyncer) Sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	memErr := s.syncSeq(&s.mem)
	var vlErr error
	if s.vl.f == nil || s.vlogWritten.Swap(false) {
		if vlErr = s.syncSeq(&s.vl); vlErr != nil {
			s.vlogWritten.Store(true) // not durable yet: the next sync retries
		}
	}
	var dirErr error
	if s.dirOwed {
		// The new files' names must survive a crash too.
		if dirErr = syncDir(s.dir); dirErr == nil {
			s.dirOwed = false
		}
	}
	return errors.Join(memErr, vlErr, dirErr)
}

// syncSeq syncs the newest file synced last time (Badger may have
// appended to it since) and, when Badger has started a newer one, every
// file after it.
func (s *logSyncer) syncSeq(q *logSeq) error {
	if q.f != nil {
		if err := s.fsync(q.f); err != nil {
			return fmt.Errorf("storage: syncing %s: %w", q.f.Name(), err)
		}
		if _, err := os.Stat(s.path(q, q.fid+1)); errors.Is(err, fs.ErrNotExist) {
			return nil // the usual case: no rotation since the last sync
		}
	}
	// First sync, or Badger rotated: every file after the last one synced
	// (on the first sync, every one there is: a memtable log left by an
	// earlier run may not be flushed yet).
	fids, err := s.list(q)
	if err != nil {
		return err
	}
	s.dirOwed = true
	for _, fid := range fids {
		if q.f != nil && fid <= q.fid {
			continue
		}
		f, err := os.Open(s.path(q, fid))
		if errors.Is(err, fs.ErrNotExist) {
			continue // flushed to a synced table and deleted meanwhile
		}
		if err != nil {
			return fmt.Errorf("storage: opening %s: %w", s.path(q, fid), err)
		}
		if err := s.fsync(f); err != nil {
			f.Close()
			return fmt.Errorf("storage: syncing %s: %w", f.Name(), err)
		}
		if q.f != nil {
			q.f.Close()
		}
		q.f, q.fid = f, fid
	}
	return nil
}

func (s *logSyncer) path(q *logSeq, fid int) string {
	return filepath.Join(s.dir, fmt.Sprintf("%0*d%s", q.width, fid, q.ext))
}

// list returns the numbers of q's files in the directory, ascending.
func (s *logSyncer) list(q *logSeq) ([]int, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("storage: listing %s: %w", s.dir, err)
	}
	var fids []int
	for _, e := range entries { // ReadDir sorts by name; the numbers are zero-padded
		if name, ok := strings.CutSuffix(e.Name(), q.ext); ok {
			if fid, err := strconv.Atoi(name); err == nil {
				fids = append(fids, fid)
			}
		}
	}
	return fids, nil
}

// Close releases the open log handles.
func (s *logSyncer) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, q := range []*logSeq{&s.mem, &s.vl} {
		if q.f != nil {
			q.f.Close()
			q.f = nil
		}
	}
}

func fdatasync(f *os.File) error { return unix.Fdatasync(int(f.Fd())) }

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("storage: opening %s to sync it: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("storage: syncing directory %s: %w", dir, err)
	}
	return nil
}
