// Package storage owns the sidecar's one embedded Badger database: the key
// spaces every feature writes into, a group-commit pipeline that lets
// concurrent writers share one transaction and one fsync, and helpers for the
// range scans queries are built from.
package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"go.uber.org/zap"
)

// Options configures Open. Zero values take the documented defaults.
type Options struct {
	// Dir is the directory Badger keeps its files in. Required.
	Dir string
	// Logger receives Badger's own log lines and the pipeline's errors.
	Logger *zap.Logger
	// FlushInterval is how often relaxed writes are synced to disk.
	// Default 1s.
	FlushInterval time.Duration
	// MaxBatch caps how many writes share one transaction. Default 256.
	MaxBatch int
	// GCInterval is how often the value log is garbage collected so that
	// expired (TTL) and deleted records give their space back. Default 10m.
	GCInterval time.Duration
	// ReadOnly opens an existing database for reading only (Badger's
	// ReadOnly mode, a shared lock): no file in Dir is written, writes fail
	// with ErrReadOnly, and a process holding the database read-write
	// keeps others out. A database that was not closed cleanly cannot be
	// opened this way (ErrNotClosedCleanly): its write-ahead log must first
	// be replayed by a read-write open.
	ReadOnly bool
	// Observer, when set, hears about the pipeline's work, for metrics
	// kept outside this package. Its methods run on the pipeline's
	// goroutines and must be quick.
	Observer Observer
}

// Observer is told what the commit pipeline does.
type Observer interface {
	// CommitGroup: one transaction committed with this many writers.
	CommitGroup(writers int)
	// Synced: one sync of committed writes to disk took d.
	Synced(d time.Duration)
}

// DB is the shared database handle. It is safe for concurrent use.
type DB struct {
	bdb    *badger.DB
	dir    string
	logger *zap.Logger
	opts   Options

	queue chan *pending
	// syncQ carries committed strict groups to the syncer.
	syncQ chan []*pending
	// closeMu guards closed so no writer enqueues after Close drained the queue.
	closeMu sync.RWMutex
	closed  bool
	stop    chan struct{}
	done    sync.WaitGroup
	// dirty is set when relaxed writes were committed but not yet synced.
	dirtyMu sync.Mutex
	dirty   bool
	// syncFn makes everything committed so far durable: the log syncer's
	// Sync, unless a test in this package replaced it (see deps).
	syncFn func() error
	logs   *logSyncer
	// vlogThreshold is Badger's ValueThreshold: values this large or
	// larger are written to the value log.
	vlogThreshold int64
	// flushTicker starts the flush loop's ticker.
	flushTicker func(time.Duration) (<-chan time.Time, func())
	// readOnly: opened with Options.ReadOnly, no pipeline running.
	readOnly bool

	// commitMu is held by whoever commits a group: the commit loop, or a
	// waiting writer that found the pipeline idle (see CommitThen).
	commitMu sync.Mutex
	// queued counts writes submitted to the commit loop and not yet
	// committed. A writer that swaps it from 0 owns the idle pipeline.
	queued atomic.Int64
	// unsynced counts strict writes committed and not yet released by a
	// sync. A writer that swaps it from 0 syncs on its own goroutine.
	unsynced atomic.Int64
	// syncEnded is signalled after each strict sync has released its
	// writers (see holdForSync).
	syncEnded chan struct{}
}

// deps are what the pipeline depends on outside itself: the fsync and the
// clock of the flush loop. Open uses the real ones; tests in this package
// pass fakes to open so that durability is proven, not assumed.
type deps struct {
	// sync replaces the pipeline's fsync; it gets the real one and the
	// Badger handle, so that a fake can observe what is committed and
	// then call the real sync.
	sync func(real func() error, bdb *badger.DB) error
	// flushTicker returns the channel the flush loop wakes up on, for a
	// period of FlushInterval, and a function that stops it.
	flushTicker func(period time.Duration) (<-chan time.Time, func())
}

func realTicker(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTicker(d)
	return t.C, t.Stop
}

// ErrClosed is returned by writes submitted after Close.
var ErrClosed = errors.New("storage: database is closed")

// ErrReadOnly is returned by writes to a database opened ReadOnly.
var ErrReadOnly = errors.New("storage: database is open read-only")

// ErrNotClosedCleanly is returned by a ReadOnly open of a database whose
// write-ahead log still needs replaying.
var ErrNotClosedCleanly = errors.New("storage: database was not closed cleanly")

// ErrNotFound is returned by Tx.Get for a missing key.
var ErrNotFound = badger.ErrKeyNotFound

// Open opens (creating if needed) the database in opts.Dir and starts the
// commit pipeline. Badger holds a lock on the directory until Close, so a
// second Open of the same directory in another process fails with a clear
// error.
func Open(opts Options) (*DB, error) { return open(opts, deps{}) }

func open(opts Options, d deps) (*DB, error) {
	if opts.Dir == "" {
		return nil, errors.New("storage: no directory given; set the storage option")
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = time.Second
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 256
	}
	if opts.GCInterval <= 0 {
		opts.GCInterval = 10 * time.Minute
	}
	if opts.ReadOnly {
		// Badger would create an empty directory (and then fail): a
		// mistyped path should say so.
		if _, err := os.Stat(filepath.Join(opts.Dir, badger.ManifestFilename)); err != nil {
			return nil, fmt.Errorf("storage: %s holds no database: %w", opts.Dir, err)
		}
	} else if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("storage: creating %s: %w", opts.Dir, err)
	}
	bopts := badger.DefaultOptions(opts.Dir).
		WithLogger(badgerLogger{opts.Logger.Sugar()}).
		// The pipeline is the only writer and fsyncs explicitly once per
		// group, so Badger itself need not sync every commit.
		WithSyncWrites(false).
		// One goroutine applies every write in order, so optimistic
		// conflict detection would only cost time.
		WithDetectConflicts(false).
		// A sidecar shares its host with the agent: keep Badger's memory
		// far below its server defaults (64 MiB x 5 memtables, 256 MiB cache).
		WithMemTableSize(16 << 20).
		WithNumMemtables(3).
		// No block compression: under sustained writes the compaction
		// builders' compression buffers (pooled, each kept up to 400 MiB)
		// grew RSS past 4 GiB in a 10-minute soak, and compressing costs
		// CPU the agent needs. Uncompressed tables are read straight from
		// the mmap, so the block cache goes too.
		WithCompression(options.None).
		WithBlockCacheSize(0).
		WithIndexCacheSize(16 << 20).
		WithNumCompactors(2).
		WithValueLogFileSize(64 << 20).
		WithReadOnly(opts.ReadOnly)
	bdb, err := badger.Open(bopts)
	// Badger flattens the errors it wraps (y.Wrapf formats with %+v), so
	// only the text tells this one apart.
	if opts.ReadOnly && err != nil && strings.Contains(err.Error(), badger.ErrTruncateNeeded.Error()) {
		return nil, fmt.Errorf("%w: %s needs its write-ahead log replayed by a read-write open first (%v)", ErrNotClosedCleanly, opts.Dir, err)
	}
	if err != nil {
		return nil, fmt.Errorf("storage: opening Badger in %s: %w (is another sidecar using this directory?)", opts.Dir, err)
	}
	if err := checkFormat(bdb, opts.Dir, opts.ReadOnly); err != nil {
		bdb.Close()
		return nil, err
	}
	db := &DB{
		bdb:    bdb,
		dir:    opts.Dir,
		logger: opts.Logger,
		opts:   opts,
		queue:  make(chan *pending, 4*opts.MaxBatch),
		syncQ:  make(chan []*pending, 1024),
		stop:   make(chan struct{}),

		syncEnded: make(chan struct{}, 1),

		logs:          newLogSyncer(opts.Dir),
		vlogThreshold: bopts.ValueThreshold,
		flushTicker:   realTicker,
	}
	db.syncFn = db.logs.Sync
	if opts.ReadOnly {
		// Nothing is written, so there is nothing to sync, collect or
		// commit: no pipeline goroutines.
		db.readOnly = true
		db.syncFn = func() error { return nil }
		return db, nil
	}
	if d.sync != nil {
		db.syncFn = func() error { return d.sync(db.logs.Sync, bdb) }
	}
	if d.flushTicker != nil {
		db.flushTicker = d.flushTicker
	}
	if o := opts.Observer; o != nil {
		sync := db.syncFn
		db.syncFn = func() error {
			start := time.Now()
			err := sync()
			o.Synced(time.Since(start))
			return err
		}
	}
	db.done.Add(4)
	go db.commitLoop()
	go db.syncLoop()
	go db.flushLoop()
	go db.gcLoop()
	return db, nil
}

// Dir is the directory the database lives in.
func (db *DB) Dir() string { return db.dir }

// Close finishes every write already submitted, syncs, and closes Badger.
func (db *DB) Close() error {
	db.closeMu.Lock()
	if db.closed {
		db.closeMu.Unlock()
		return nil
	}
	db.closed = true
	close(db.stop)
	db.closeMu.Unlock()
	db.done.Wait()
	syncErr := db.syncFn()
	db.logs.Close()
	closeErr := db.bdb.Close()
	return errors.Join(syncErr, closeErr)
}

// View runs fn in a read-only snapshot of the database.
func (db *DB) View(fn func(r *Reader) error) error {
	return db.bdb.View(func(txn *badger.Txn) error { return fn(&Reader{txn: txn}) })
}

// Sync forces everything committed so far to disk.
func (db *DB) Sync() error { return db.syncFn() }

func (db *DB) flushLoop() {
	defer db.done.Done()
	ticks, stop := db.flushTicker(db.opts.FlushInterval)
	defer stop()
	for {
		select {
		case <-db.stop:
			return
		case <-ticks:
			db.dirtyMu.Lock()
			dirty := db.dirty
			db.dirty = false
			db.dirtyMu.Unlock()
			if !dirty {
				continue
			}
			// The flag is cleared before the sync starts, so a relaxed
			// commit landing during it marks the next tick's sync.
			if err := db.syncFn(); err != nil {
				db.logger.Error("syncing relaxed writes", zap.Error(err))
				// Not durable yet: the next tick tries again.
				db.dirtyMu.Lock()
				db.dirty = true
				db.dirtyMu.Unlock()
			}
		}
	}
}

func (db *DB) gcLoop() {
	defer db.done.Done()
	t := time.NewTicker(db.opts.GCInterval)
	defer t.Stop()
	for {
		select {
		case <-db.stop:
			return
		case <-t.C:
			// Rewrite value log files until none is worth it.
			for db.bdb.RunValueLogGC(0.5) == nil {
				// GC moved live values to the newest value log file.
				db.logs.vlogWritten.Store(true)
				select {
				case <-db.stop:
					return
				default:
				}
			}
		}
	}
}

// Reader reads inside a snapshot given to View.
type Reader struct {
	txn *badger.Txn
}

// Get returns a copy of the value at key, or ErrNotFound.
func (r *Reader) Get(key []byte) ([]byte, error) {
	item, err := r.txn.Get(key)
	if err != nil {
		return nil, err
	}
	return item.ValueCopy(nil)
}

// Scan calls fn for every key with the given prefix, in key order (reverse
// order when reverse is set), until fn returns false or an error. Key and
// value are only valid during the call.
func (r *Reader) Scan(prefix []byte, reverse bool, fn func(key, val []byte) (bool, error)) error {
	return scan(r.txn, prefix, nil, reverse, fn)
}

// ScanFrom is Scan starting at seek (inclusive) instead of the first key of
// the prefix. With reverse, seek is the largest key visited.
func (r *Reader) ScanFrom(prefix, seek []byte, reverse bool, fn func(key, val []byte) (bool, error)) error {
	return scan(r.txn, prefix, seek, reverse, fn)
}

func scan(txn *badger.Txn, prefix, seek []byte, reverse bool, fn func(key, val []byte) (bool, error)) error {
	opts := badger.DefaultIteratorOptions
	opts.Prefix = prefix
	opts.Reverse = reverse
	opts.PrefetchValues = false
	it := txn.NewIterator(opts)
	defer it.Close()
	start := seek
	if start == nil {
		start = prefix
		if reverse {
			// The largest key with this prefix sorts before prefix+0xFF...
			start = append(append([]byte{}, prefix...), 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF)
		}
	}
	for it.Seek(start); it.ValidForPrefix(prefix); it.Next() {
		item := it.Item()
		var cont bool
		err := item.Value(func(v []byte) error {
			var ferr error
			cont, ferr = fn(item.Key(), v)
			return ferr
		})
		if err != nil {
			return err
		}
		if !cont {
			return nil
		}
	}
	return nil
}

// Submit hands fn to the commit pipeline and returns without waiting. fn
// runs on the pipeline's goroutine inside a transaction shared with other
// writers; its writes commit atomically, or not at all if fn returns an
// error. Use Wait on the result to learn the outcome.
func (db *DB) Submit(d Durability, fn func(tx *Tx) error) *Pending {
	return db.SubmitThen(d, fn, nil)
}

// SubmitThen is Submit with a callback that the pipeline calls once the
// write is done (see Durability), with its outcome, before waiters are
// released. It runs on the pipeline's goroutine: keep it short. fn may run
// more than once (when a group is split), then never its effects outside
// tx: those belong in then.
func (db *DB) SubmitThen(d Durability, fn func(tx *Tx) error, then func(error)) *Pending {
	p := &pending{fn: fn, durability: d, done: make(chan struct{}), then: then}
	if db.readOnly {
		p.finish(ErrReadOnly)
		return (*Pending)(p)
	}
	db.closeMu.RLock()
	defer db.closeMu.RUnlock()
	if db.closed {
		p.finish(ErrClosed)
		return (*Pending)(p)
	}
	db.enqueue(p)
	return (*Pending)(p)
}

func (db *DB) enqueue(p *pending) {
	db.queued.Add(1)
	db.queue <- p
}

// Commit submits fn and waits until its writes are committed, and with
// Strict durability also synced to disk.
func (db *DB) Commit(ctx context.Context, d Durability, fn func(tx *Tx) error) error {
	return db.CommitThen(ctx, d, fn, nil)
}

// CommitThen is SubmitThen followed by Wait. A writer that waits anyway
// and finds the pipeline idle — nothing queued, nothing being committed —
// commits its own write on its goroutine, and syncs it there too when no
// strict write is waiting for the syncer: handing it to the commit loop
// and the syncer and being woken by them costs two goroutine hand-offs,
// about a fifth of a lone strict write's time. Under load the pipeline is
// never idle, and writes take the commit loop and group commit as before.
// Commit order is still submission order: a write only skips the queue
// when the queue is empty.
func (db *DB) CommitThen(ctx context.Context, d Durability, fn func(tx *Tx) error, then func(error)) error {
	if db.readOnly {
		return db.SubmitThen(d, fn, then).Wait(ctx)
	}
	p := &pending{fn: fn, durability: d, done: make(chan struct{}), then: then}
	db.closeMu.RLock()
	switch {
	case db.closed:
		p.finish(ErrClosed)
	case db.queued.CompareAndSwap(0, 1):
		db.commitMu.Lock()
		strict := db.commitGroup([]*pending{p})
		db.commitMu.Unlock()
		db.queued.Add(-1)
		if len(strict) > 0 && db.unsynced.CompareAndSwap(0, int64(len(strict))) {
			db.syncAndRelease([][]*pending{strict})
		} else {
			db.toSyncer(strict)
		}
	default:
		db.enqueue(p)
	}
	db.closeMu.RUnlock()
	return (*Pending)(p).Wait(ctx)
}

// Durability says when a submitted write counts as done.
type Durability int

const (
	// Strict writes are done once synced to disk.
	Strict Durability = iota
	// Relaxed writes are done once committed; the flush loop syncs them
	// within FlushInterval.
	Relaxed
)

// ParseDurability maps the Caddyfile words to a Durability.
func ParseDurability(s string) (Durability, error) {
	switch s {
	case "", "strict":
		return Strict, nil
	case "relaxed":
		return Relaxed, nil
	}
	return Strict, fmt.Errorf("unknown durability %q: use strict or relaxed", s)
}

func (d Durability) String() string {
	if d == Relaxed {
		return "relaxed"
	}
	return "strict"
}

// Pending is a submitted write.
type Pending pending

type pending struct {
	fn         func(tx *Tx) error
	then       func(error)
	durability Durability
	done       chan struct{}
	err        error
}

// Wait blocks until the write is done (see Durability) or ctx ends. The
// write itself is not cancelled by ctx.
func (p *Pending) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Done is closed when the write is done.
func (p *Pending) Done() <-chan struct{} { return p.done }

// Err is the write's outcome; only meaningful after Done is closed.
func (p *Pending) Err() error { return p.err }

type badgerLogger struct{ s *zap.SugaredLogger }

func (l badgerLogger) Errorf(f string, a ...any)   { l.s.Errorf("badger: "+f, a...) }
func (l badgerLogger) Warningf(f string, a ...any) { l.s.Warnf("badger: "+f, a...) }
func (l badgerLogger) Infof(f string, a ...any)    { l.s.Debugf("badger: "+f, a...) }
func (l badgerLogger) Debugf(f string, a ...any)   { l.s.Debugf("badger: "+f, a...) }
