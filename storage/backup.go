package storage

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
)

// A backup file is Badger's own backup stream (DB.Backup: frames of a
// little-endian uint64 length and a protobuf KVList) between a header line
// and an end marker. Badger's stream alone has no end: cut at a frame
// boundary, it would load as a smaller database without a word. The end
// marker is a length no frame can have, followed by the snapshot version,
// the stream's length and its SHA-256, so a restore takes nothing short or
// damaged.
//
//	"asap-sidecar backup 1\n"
//	frames...
//	0xFFFFFFFFFFFFFFFF | version u64 | stream bytes u64 | sha256 [32]  (little-endian)
const backupMagic = "asap-sidecar backup 1\n"

const (
	endMarker = ^uint64(0)
	// maxFrame bounds a frame's length before Badger allocates it: its
	// frames stay near 100 MiB (flushThreshold), so anything far larger is
	// damage, not data.
	maxFrame   = 1 << 30
	trailerLen = 8 + 8 + 32
)

// ErrBadBackup is wrapped by every error about a backup file's contents.
var ErrBadBackup = errors.New("storage: not a complete asap-sidecar backup")

// BackupInfo describes a backup.
type BackupInfo struct {
	// Version is the snapshot's read timestamp: the backup holds every
	// write committed at or before it, and none after.
	Version uint64
	// Bytes is the size of the backup file.
	Bytes int64
}

// Backup writes a consistent snapshot of the whole database to w while it
// stays open for writes: Badger streams every key at one read timestamp,
// TTLs (usage retention) included as absolute expiry times, so a restored
// event expires when the original would have. Nothing is buffered beyond
// one frame.
func (db *DB) Backup(w io.Writer) (BackupInfo, error) {
	cw := &countWriter{w: w}
	if _, err := io.WriteString(cw, backupMagic); err != nil {
		return BackupInfo{Bytes: cw.n}, err
	}
	h := sha256.New()
	start := cw.n
	// Badger's DB.Backup streams key ranges from several goroutines, each
	// with its own read transaction opened when it starts: a write landing
	// in between is in one range and not another, so the file is not one
	// point in time (TestBackupUnderWritesIsASnapshot caught it). One
	// goroutine reads every range in one transaction.
	stream := db.bdb.NewStream()
	stream.LogPrefix = "storage.Backup"
	stream.NumGo = 1
	version, err := stream.Backup(io.MultiWriter(cw, h), 0)
	if err != nil {
		return BackupInfo{Bytes: cw.n}, fmt.Errorf("storage: backing up %s: %w", db.dir, err)
	}
	var end [8 + trailerLen]byte
	binary.LittleEndian.PutUint64(end[0:], endMarker)
	binary.LittleEndian.PutUint64(end[8:], version)
	binary.LittleEndian.PutUint64(end[16:], uint64(cw.n-start))
	copy(end[24:], h.Sum(nil))
	if _, err := cw.Write(end[:]); err != nil {
		return BackupInfo{Bytes: cw.n}, err
	}
	return BackupInfo{Version: version, Bytes: cw.n}, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// CheckBackup reads a whole backup from r and reports whether it is
// complete and undamaged, without loading it anywhere.
func CheckBackup(r io.Reader) (BackupInfo, error) {
	fr, err := newFrameReader(r)
	if err != nil {
		return BackupInfo{}, err
	}
	if _, err := io.Copy(io.Discard, fr); err != nil {
		return BackupInfo{}, err
	}
	return fr.finish()
}

// Restore loads the backup read from r into a new database in opts.Dir,
// which must not exist or be empty: Badger's Load adds to whatever is
// there, so a restore over live data would mix two databases. Should the
// backup turn out short or damaged, Restore removes what it wrote and
// leaves the directory as it found it.
func Restore(opts Options, r io.Reader) (info BackupInfo, err error) {
	if opts.ReadOnly {
		return BackupInfo{}, errors.New("storage: a restore writes; open it without ReadOnly")
	}
	created, err := prepareEmptyDir(opts.Dir)
	if err != nil {
		return BackupInfo{}, err
	}
	defer func() {
		if err != nil {
			cleanDir(opts.Dir, created)
		}
	}()
	fr, err := newFrameReader(r)
	if err != nil {
		return BackupInfo{}, err
	}
	db, err := Open(opts)
	if err != nil {
		return BackupInfo{}, err
	}
	// Badger reads until EOF, which the frame reader gives only after a
	// valid end marker; a short or damaged stream fails the Load.
	loadErr := db.bdb.Load(fr, 256)
	switch {
	case fr.err != nil:
		loadErr = fr.err
	case loadErr != nil:
		loadErr = fmt.Errorf("%w: loading it into %s: %v (damaged?)", ErrBadBackup, opts.Dir, loadErr)
	default:
		info, loadErr = fr.finish()
	}
	if cerr := db.Close(); loadErr == nil && cerr != nil {
		loadErr = fmt.Errorf("storage: closing the restored database: %w", cerr)
	}
	if loadErr != nil {
		return BackupInfo{}, loadErr
	}
	return info, nil
}

// prepareEmptyDir makes sure dir exists and is empty, and says whether it
// created it.
func prepareEmptyDir(dir string) (bool, error) {
	if dir == "" {
		return false, errors.New("storage: no directory to restore into")
	}
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return false, fmt.Errorf("storage: creating %s: %w", dir, err)
		}
		return true, nil
	case err != nil:
		return false, fmt.Errorf("storage: reading %s: %w", dir, err)
	case len(entries) > 0:
		return false, fmt.Errorf("storage: %s is not empty (%d entries, e.g. %s): a restore loads into a new database only, so that it cannot mix with another; restore into a new directory, or remove this one's contents first if they are not needed", dir, len(entries), entries[0].Name())
	}
	return false, nil
}

// cleanDir undoes a failed restore: dir was empty (or absent) before it.
func cleanDir(dir string, created bool) {
	if created {
		os.RemoveAll(dir)
		return
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		os.RemoveAll(filepath.Join(dir, e.Name()))
	}
}

// frameReader passes a backup's Badger stream through, frame by frame, and
// reports EOF only after a valid end marker.
type frameReader struct {
	r io.Reader
	h hash.Hash
	// head is the current frame's length prefix still to hand out; left
	// is how many of its body bytes are still to come.
	head   []byte
	lenBuf [8]byte
	left   uint64
	n      uint64 // stream bytes so far (without header or end marker)
	info   BackupInfo
	done   bool
	err    error
}

func newFrameReader(r io.Reader) (*frameReader, error) {
	magic := make([]byte, len(backupMagic))
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != backupMagic {
		if err == nil || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: it does not start with %q (an empty, truncated or other file?)", ErrBadBackup, backupMagic[:len(backupMagic)-1])
		}
		return nil, readError(err)
	}
	return &frameReader{r: r, h: sha256.New(), info: BackupInfo{Bytes: int64(len(backupMagic))}}, nil
}

// readError is a failure to read the backup, which says nothing about
// whether the backup itself is whole.
func readError(err error) error { return fmt.Errorf("storage: reading the backup: %w", err) }

func (f *frameReader) Read(p []byte) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	if f.done {
		return 0, io.EOF
	}
	if len(f.head) == 0 && f.left == 0 {
		if err := f.next(); err != nil {
			f.err = err
			if f.done {
				f.err = nil
			}
			return 0, err
		}
	}
	if len(f.head) > 0 {
		n := copy(p, f.head)
		f.head = f.head[n:]
		return n, nil
	}
	if uint64(len(p)) > f.left {
		p = p[:f.left]
	}
	n, err := f.r.Read(p)
	f.h.Write(p[:n])
	f.left -= uint64(n)
	f.n += uint64(n)
	f.info.Bytes += int64(n)
	switch {
	case err == io.EOF && f.left > 0:
		f.err = fmt.Errorf("%w: it ends inside a frame (truncated)", ErrBadBackup)
	case err == io.EOF:
		return n, nil
	case err != nil:
		// The backup may be fine: reading it failed.
		f.err = readError(err)
	}
	return n, f.err
}

// next reads the next frame's length, or the end marker (then io.EOF).
func (f *frameReader) next() error {
	if _, err := io.ReadFull(f.r, f.lenBuf[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: it ends before its end marker (truncated)", ErrBadBackup)
		}
		return readError(err)
	}
	f.info.Bytes += 8
	size := binary.LittleEndian.Uint64(f.lenBuf[:])
	if size == endMarker {
		return f.end()
	}
	if size > maxFrame {
		return fmt.Errorf("%w: a frame claims %d bytes (damaged)", ErrBadBackup, size)
	}
	f.h.Write(f.lenBuf[:])
	f.n += 8
	f.head = f.lenBuf[:]
	f.left = size
	return nil
}

func (f *frameReader) end() error {
	var t [trailerLen]byte
	if _, err := io.ReadFull(f.r, t[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: its end marker is cut short (truncated)", ErrBadBackup)
		}
		return readError(err)
	}
	f.info.Bytes += trailerLen
	if got := binary.LittleEndian.Uint64(t[8:]); got != f.n {
		return fmt.Errorf("%w: the end marker counts %d bytes, the stream had %d (damaged)", ErrBadBackup, got, f.n)
	}
	if !bytes.Equal(t[16:], f.h.Sum(nil)) {
		return fmt.Errorf("%w: its SHA-256 does not match (damaged)", ErrBadBackup)
	}
	var extra [1]byte
	if n, _ := io.ReadFull(f.r, extra[:]); n > 0 {
		return fmt.Errorf("%w: there is data after its end marker", ErrBadBackup)
	}
	f.info.Version = binary.LittleEndian.Uint64(t[0:])
	f.done = true
	return io.EOF
}

// finish is the backup's description once the reader has reached EOF.
func (f *frameReader) finish() (BackupInfo, error) {
	if f.err != nil {
		return BackupInfo{}, f.err
	}
	if !f.done {
		return BackupInfo{}, fmt.Errorf("%w: it was not read to its end", ErrBadBackup)
	}
	return f.info, nil
}
