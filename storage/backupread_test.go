package storage

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
)

// envelope wraps raw frame bodies in a backup file's header, length
// prefixes and a correct end marker, as Backup would.
func envelope(version uint64, bodies ...[]byte) []byte {
	var stream []byte
	for _, b := range bodies {
		stream = binary.LittleEndian.AppendUint64(stream, uint64(len(b)))
		stream = append(stream, b...)
	}
	sum := sha256.Sum256(stream)
	out := append([]byte(backupMagic), stream...)
	out = binary.LittleEndian.AppendUint64(out, endMarker)
	out = binary.LittleEndian.AppendUint64(out, version)
	out = binary.LittleEndian.AppendUint64(out, uint64(len(stream)))
	return append(out, sum[:]...)
}

// smallBackup is a backup of a database holding a few keys.
func smallBackup(t *testing.T) ([]byte, BackupInfo) {
	t.Helper()
	db := openTest(t, t.TempDir())
	defer db.Close()
	for i := range 20 {
		key := SpaceTask.KeyString("a", fmt.Sprintf("k%02d", i))
		if err := db.Commit(testCtx(t), Relaxed, func(tx *Tx) error { tx.Set(key, make([]byte, 50)); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	return backupOf(t, db)
}

// A file whose envelope is whole (length, checksum) but whose frames are
// not Badger's is refused by Restore as a bad backup naming the target,
// and the restore leaves nothing behind.
func TestRestoreOfAStreamBadgerCannotLoad(t *testing.T) {
	file := envelope(7, []byte{0xff, 0xff, 0xff})
	dir := filepath.Join(t.TempDir(), "restored")
	_, err := Restore(Options{Dir: dir}, bytes.NewReader(file))
	if !errors.Is(err, ErrBadBackup) || !strings.Contains(err.Error(), "loading it into "+dir) || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("Restore of frames Badger cannot decode: %v; want ErrBadBackup naming %s", err, dir)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the failed restore left %s behind: %v", dir, err)
	}
}

// A read error in the header or at a frame's length prefix is that read
// error, from CheckBackup and from Restore, and not a verdict on the
// backup (which may be fine); the restore leaves its directory empty.
func TestBackupReadErrorsBeforeAFrame(t *testing.T) {
	file, _ := smallBackup(t)
	broken := errors.New("input/output error")
	for _, at := range []int{5, len(backupMagic), len(backupMagic) + 3} {
		if _, err := CheckBackup(&failingReader{b: file[:at], err: broken}); !errors.Is(err, broken) || errors.Is(err, ErrBadBackup) || !strings.Contains(err.Error(), "reading the backup") {
			t.Errorf("CheckBackup, read error after %d bytes: %v; want the read error alone", at, err)
		}
		dir := t.TempDir()
		if _, err := Restore(Options{Dir: dir}, &failingReader{b: file[:at], err: broken}); !errors.Is(err, broken) || errors.Is(err, ErrBadBackup) {
			t.Errorf("Restore, read error after %d bytes: %v; want the read error alone", at, err)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("Restore, read error after %d bytes: left %d files", at, len(entries))
		}
	}
}

// However a reader hands out the bytes — one at a time, in halves, or
// with the last bytes together with io.EOF — a whole backup checks and
// restores with the description Backup gave, and one cut at a frame
// boundary is still refused as truncated.
func TestBackupReadThroughSplittingReaders(t *testing.T) {
	file, wrote := smallBackup(t)
	readers := map[string]func(io.Reader) io.Reader{
		"one byte":  iotest.OneByteReader,
		"halves":    iotest.HalfReader,
		"data+EOF":  iotest.DataErrReader,
		"plain":     func(r io.Reader) io.Reader { return r },
		"one+EOF":   func(r io.Reader) io.Reader { return iotest.DataErrReader(iotest.OneByteReader(r)) },
		"halves+EO": func(r io.Reader) io.Reader { return iotest.DataErrReader(iotest.HalfReader(r)) },
	}
	cut := file[:len(file)-8-trailerLen] // the frames without the end marker
	for name, wrap := range readers {
		if got, err := CheckBackup(wrap(bytes.NewReader(file))); err != nil || got != wrote {
			t.Errorf("%s: CheckBackup = %+v, %v; Backup reported %+v", name, got, err, wrote)
		}
		if got, err := Restore(Options{Dir: t.TempDir()}, wrap(bytes.NewReader(file))); err != nil || got != wrote {
			t.Errorf("%s: Restore = %+v, %v; Backup reported %+v", name, got, err, wrote)
		}
		if _, err := CheckBackup(wrap(bytes.NewReader(cut))); !errors.Is(err, ErrBadBackup) || !strings.Contains(err.Error(), "truncated") {
			t.Errorf("%s: CheckBackup of a backup cut at a frame boundary: %v; want ErrBadBackup, truncated", name, err)
		}
	}
}

// The frame reader's outcome is final: after an error every Read gives
// that error again and finish reports it; after the end marker every Read
// gives io.EOF; and a reader not read to its end describes no backup.
func TestFrameReaderOutcomeIsFinal(t *testing.T) {
	file, wrote := smallBackup(t)

	fr, err := newFrameReader(bytes.NewReader(file[:len(file)-20]))
	if err != nil {
		t.Fatal(err)
	}
	_, first := io.Copy(io.Discard, fr)
	if !errors.Is(first, ErrBadBackup) {
		t.Fatalf("reading a cut backup: %v", first)
	}
	buf := make([]byte, 64)
	if n, again := fr.Read(buf); n != 0 || again != first {
		t.Errorf("Read after the error: %d, %v; want 0 and the same error, %v", n, again, first)
	}
	if _, err := fr.finish(); err != first {
		t.Errorf("finish after the error: %v; want %v", err, first)
	}

	fr, err = newFrameReader(bytes.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fr.finish(); !errors.Is(err, ErrBadBackup) || !strings.Contains(err.Error(), "not read to its end") {
		t.Errorf("finish before reading: %v; want ErrBadBackup, not read to its end", err)
	}
	if _, err := io.Copy(io.Discard, fr); err != nil {
		t.Fatal(err)
	}
	if n, err := fr.Read(buf); n != 0 || err != io.EOF {
		t.Errorf("Read after the end: %d, %v; want 0, io.EOF", n, err)
	}
	if got, err := fr.finish(); err != nil || got != wrote {
		t.Errorf("finish = %+v, %v; Backup reported %+v", got, err, wrote)
	}
}

// A restore into a symlink to a missing directory (a volume not mounted)
// fails naming the target, and creates nothing at the link's end.
func TestRestoreIntoADanglingSymlink(t *testing.T) {
	file, _ := smallBackup(t)
	parent := t.TempDir()
	target := filepath.Join(parent, "unmounted", "db")
	link := filepath.Join(parent, "db")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	_, err := Restore(Options{Dir: link}, bytes.NewReader(file))
	if err == nil || !strings.Contains(err.Error(), "creating "+link) {
		t.Fatalf("Restore into a dangling symlink: %v; want an error creating %s", err, link)
	}
	if _, err := os.Stat(filepath.Dir(target)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the failed restore created the link's target: %v", err)
	}
}

// When the database cannot be opened in the target (here Badger's file
// names there are longer than the system allows), Restore returns that
// error and removes the directory it created.
func TestRestoreWhereBadgerCannotOpen(t *testing.T) {
	file, _ := smallBackup(t)
	dir := t.TempDir()
	for len(dir) < 4090-201 {
		dir = filepath.Join(dir, strings.Repeat("d", 200))
	}
	dir = filepath.Join(dir, strings.Repeat("e", 4090-len(dir)-1))
	if len(dir) != 4090 {
		t.Fatalf("built a path of %d bytes", len(dir))
	}
	_, err := Restore(Options{Dir: dir}, bytes.NewReader(file))
	if err == nil || !strings.Contains(err.Error(), "opening Badger in "+dir) || !strings.Contains(err.Error(), "file name too long") {
		t.Fatalf("Restore into %d-byte path: %v; want Badger's open error", len(dir), err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the failed restore left the directory it created: %v", err)
	}
}
