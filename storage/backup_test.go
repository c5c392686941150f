package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/asap-sidecar/asap-sidecar/internal/dirstate"
)

func backupOf(t *testing.T, db *DB) ([]byte, BackupInfo) {
	t.Helper()
	var buf bytes.Buffer
	info, err := db.Backup(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if info.Bytes != int64(buf.Len()) {
		t.Fatalf("Backup reported %d bytes, wrote %d", info.Bytes, buf.Len())
	}
	return buf.Bytes(), info
}

func expiresAt(t *testing.T, db *DB, key []byte) (uint64, error) {
	t.Helper()
	var at uint64
	err := db.bdb.View(func(txn *badger.Txn) error {
		item, err := txn.Get(key)
		if err != nil {
			return err
		}
		at = item.ExpiresAt()
		return nil
	})
	return at, err
}

// A backup restores every live key with its value and its expiry time;
// keys deleted or expired before the backup stay gone.
func TestBackupRestoreKeepsValuesAndTTLs(t *testing.T) {
	db := openTest(t, t.TempDir())
	plain := SpaceTask.KeyString("a", "plain")
	ttl := SpaceUsage.KeyString("a", "ttl")
	gone := SpaceTask.KeyString("a", "deleted")
	expired := SpaceUsage.KeyString("a", "expired")
	if err := db.Commit(testCtx(t), Strict, func(tx *Tx) error {
		tx.Set(plain, []byte("v"))
		tx.SetWithTTL(ttl, []byte("retained"), time.Hour)
		tx.Set(gone, []byte("x"))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Commit(testCtx(t), Strict, func(tx *Tx) error { tx.Delete(gone); return nil }); err != nil {
		t.Fatal(err)
	}
	// An entry whose retention ran out already: no waiting for a TTL.
	if err := db.bdb.Update(func(txn *badger.Txn) error {
		e := badger.NewEntry(expired, []byte("old"))
		e.ExpiresAt = uint64(time.Now().Add(-time.Minute).Unix())
		return txn.SetEntry(e)
	}); err != nil {
		t.Fatal(err)
	}
	wantExp, err := expiresAt(t, db, ttl)
	if err != nil || wantExp == 0 {
		t.Fatalf("source TTL: %d, %v", wantExp, err)
	}
	file, info := backupOf(t, db)
	db.Close()

	dir := filepath.Join(t.TempDir(), "restored")
	got, err := Restore(Options{Dir: dir}, bytes.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	if got != info {
		t.Errorf("Restore reported %+v, Backup %+v", got, info)
	}
	rdb := openTest(t, dir)
	defer rdb.Close()
	if v, err := get(t, rdb, plain); err != nil || string(v) != "v" {
		t.Errorf("plain key: %q, %v", v, err)
	}
	if v, err := get(t, rdb, ttl); err != nil || string(v) != "retained" {
		t.Errorf("TTL key: %q, %v", v, err)
	}
	if exp, err := expiresAt(t, rdb, ttl); err != nil || exp != wantExp {
		t.Errorf("TTL key expires at %d, want %d as in the source (%v)", exp, wantExp, err)
	}
	for _, k := range [][]byte{gone, expired} {
		if _, err := get(t, rdb, k); !errors.Is(err, ErrNotFound) {
			t.Errorf("%q came back: %v", k, err)
		}
	}
	// The restored database takes new writes after the restored ones.
	if err := rdb.Commit(testCtx(t), Strict, func(tx *Tx) error { tx.Set(plain, []byte("v2")); return nil }); err != nil {
		t.Fatal(err)
	}
	if v, _ := get(t, rdb, plain); string(v) != "v2" {
		t.Errorf("write after restore: %q", v)
	}
}

// A backup taken while writers commit holds exactly the commits up to one
// point: every commit writes a pair of keys and moves a high-water mark,
// and the restored database has all pairs up to the mark, whole, and none
// past it.
func TestBackupUnderWritesIsASnapshot(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	stop := make(chan struct{})
	started := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			err := db.Commit(testCtx(t), Relaxed, func(tx *Tx) error {
				tx.Set(SpaceTask.KeyString("a", fmt.Sprintf("%08d", i)), []byte("a"))
				tx.Set(SpaceTask.KeyString("b", fmt.Sprintf("%08d", i)), []byte("b"))
				tx.Set(SpaceMeta.KeyString("mark"), binary.BigEndian.AppendUint64(nil, uint64(i)))
				return nil
			})
			if err != nil {
				t.Error(err)
				return
			}
			if i == 200 {
				close(started)
			}
		}
	}()
	within(t, started, "200 commits")
	file, _ := backupOf(t, db)
	close(stop)
	wg.Wait()

	dir := t.TempDir()
	if _, err := Restore(Options{Dir: dir}, bytes.NewReader(file)); err != nil {
		t.Fatal(err)
	}
	rdb := openTest(t, dir)
	defer rdb.Close()
	mark, err := get(t, rdb, SpaceMeta.KeyString("mark"))
	if err != nil {
		t.Fatal(err)
	}
	n := int(binary.BigEndian.Uint64(mark))
	counts := map[string]int{}
	for _, side := range []string{"a", "b"} {
		err := rdb.View(func(r *Reader) error {
			return r.Scan(SpaceTask.KeyString(side), false, func(key, _ []byte) (bool, error) {
				counts[side]++
				return true, nil
			})
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if n < 200 || counts["a"] != n || counts["b"] != n {
		t.Fatalf("mark %d, %d a keys, %d b keys: not one snapshot", n, counts["a"], counts["b"])
	}
}

// A read-only database (a stopped sidecar's, --db) can be backed up.
func TestBackupOfReadOnlyDatabase(t *testing.T) {
	dir := t.TempDir()
	db := openTest(t, dir)
	key := SpaceTask.KeyString("a", "ro")
	if err := db.Commit(testCtx(t), Strict, func(tx *Tx) error { tx.Set(key, []byte("v")); return nil }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	before := dirstate.Of(t, dir)
	ro, err := Open(Options{Dir: dir, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	file, _ := backupOf(t, ro)
	ro.Close()
	dirstate.Same(t, before, dirstate.Of(t, dir))
	if _, err := CheckBackup(bytes.NewReader(file)); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	if _, err := Restore(Options{Dir: out}, bytes.NewReader(file)); err != nil {
		t.Fatal(err)
	}
	rdb := openTest(t, out)
	defer rdb.Close()
	if v, err := get(t, rdb, key); err != nil || string(v) != "v" {
		t.Errorf("restored: %q, %v", v, err)
	}
}

func TestRestoreRefusesNonEmptyDirectory(t *testing.T) {
	db := openTest(t, t.TempDir())
	file, _ := backupOf(t, db)
	db.Close()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "agent.key"), []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Restore(Options{Dir: dir}, bytes.NewReader(file))
	if err == nil || !strings.Contains(err.Error(), "not empty") || !strings.Contains(err.Error(), "new directory") {
		t.Fatalf("want a refusal naming the non-empty directory, got %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "agent.key")); string(b) != "keep me" {
		t.Error("the refused restore touched the directory")
	}
}

// Every way a backup file can be short or damaged fails the restore, with
// the directory left empty, and fails CheckBackup.
func TestRestoreRejectsShortOrDamagedBackups(t *testing.T) {
	db := openTest(t, t.TempDir())
	for i := 0; i < 500; i++ {
		i := i
		if err := db.Commit(testCtx(t), Relaxed, func(tx *Tx) error {
			tx.Set(SpaceTask.KeyString("a", fmt.Sprint(i)), bytes.Repeat([]byte{byte(i)}, 100))
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	file, _ := backupOf(t, db)
	db.Close()
	endAt := len(file) - 8 - trailerLen // where the frames end
	flip := func(at int) []byte {
		b := bytes.Clone(file)
		b[at] ^= 0x01
		return b
	}
	cases := map[string][]byte{
		"empty":                   nil,
		"another file":            []byte("PK\x03\x04 not a backup at all, but long enough"),
		"header only":             file[:len(backupMagic)],
		"cut in a frame length":   file[:len(backupMagic)+3],
		"cut in a frame":          file[:endAt-10],
		"cut at a frame boundary": file[:endAt],
		"cut in the end marker":   file[:len(file)-5],
		"a flipped value byte":    flip(endAt - 20),
		"a flipped checksum byte": flip(len(file) - 1),
		"a miscounted end marker": flip(endAt + 8 + 8),
		"a frame claiming too much": func() []byte {
			b := bytes.Clone(file)
			binary.LittleEndian.PutUint64(b[len(backupMagic):], maxFrame+1)
			return b
		}(),
		"data after the end": append(bytes.Clone(file), 0),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := CheckBackup(bytes.NewReader(b)); !errors.Is(err, ErrBadBackup) {
				t.Errorf("CheckBackup: want ErrBadBackup, got %v", err)
			}
			parent := t.TempDir()
			for _, dir := range []string{filepath.Join(parent, "new"), parent} {
				_, err := Restore(Options{Dir: dir}, bytes.NewReader(b))
				if !errors.Is(err, ErrBadBackup) {
					t.Fatalf("Restore into %s: want ErrBadBackup, got %v", dir, err)
				}
				entries, _ := os.ReadDir(dir)
				if dir == parent && len(entries) != 0 {
					t.Errorf("the failed restore left %d files in %s", len(entries), dir)
				}
				if _, err := os.Stat(dir); dir != parent && !errors.Is(err, os.ErrNotExist) {
					t.Errorf("the failed restore left the directory it created: %v", err)
				}
			}
		})
	}
	if _, err := CheckBackup(bytes.NewReader(file)); err != nil {
		t.Fatalf("the intact file: %v", err)
	}
}

// budgetWriter fails once it has taken n bytes.
type budgetWriter struct{ n int }

func (w *budgetWriter) Write(p []byte) (int, error) {
	if len(p) > w.n {
		k := w.n
		w.n = 0
		return k, errors.New("disk full")
	}
	w.n -= len(p)
	return len(p), nil
}

// A backup whose writer fails — in the header, in the stream or in the
// end marker — reports the failure rather than a finished backup.
func TestBackupReportsAFailingWriter(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	if err := db.Commit(testCtx(t), Strict, func(tx *Tx) error {
		tx.Set(SpaceTask.KeyString("k"), bytes.Repeat([]byte("v"), 1000))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	file, _ := backupOf(t, db)
	for _, budget := range []int{0, len(backupMagic) + 10, len(file) - 1} {
		if _, err := db.Backup(&budgetWriter{n: budget}); err == nil {
			t.Errorf("a writer failing after %d of %d bytes: the backup reported success", budget, len(file))
		}
	}
}

// Restore refuses what it cannot do before touching anything.
func TestRestoreRefusesBadTargets(t *testing.T) {
	db := openTest(t, t.TempDir())
	file, _ := backupOf(t, db)
	db.Close()
	if _, err := Restore(Options{Dir: t.TempDir(), ReadOnly: true}, bytes.NewReader(file)); err == nil || !strings.Contains(err.Error(), "ReadOnly") {
		t.Errorf("a read-only restore: %v", err)
	}
	if _, err := Restore(Options{}, bytes.NewReader(file)); err == nil || !strings.Contains(err.Error(), "no directory") {
		t.Errorf("a restore without a directory: %v", err)
	}
	notADir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notADir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Restore(Options{Dir: filepath.Join(notADir, "db")}, bytes.NewReader(file)); err == nil {
		t.Error("a restore under a file succeeded")
	}
}

// failingReader returns its bytes, then err instead of the rest.
type failingReader struct {
	b   []byte
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if len(f.b) == 0 {
		return 0, f.err
	}
	n := copy(p, f.b)
	f.b = f.b[n:]
	return n, nil
}

// CheckBackup describes the backup as Backup did (its size and snapshot
// version), and a read error part-way through a backup (a broken pipe,
// a failing disk) is that error from CheckBackup and Restore, never a
// success or a generic "damaged".
func TestCheckBackupInfoAndReadErrors(t *testing.T) {
	db := openTest(t, t.TempDir())
	for i := 0; i < 50; i++ {
		key := SpaceTask.KeyString("a", fmt.Sprintf("k%03d", i))
		if err := db.Commit(testCtx(t), Strict, func(tx *Tx) error { tx.Set(key, make([]byte, 100)); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	file, wrote := backupOf(t, db)
	db.Close()
	got, err := CheckBackup(bytes.NewReader(file))
	if err != nil || got != wrote || got.Version == 0 {
		t.Fatalf("CheckBackup = %+v, %v; Backup reported %+v", got, err, wrote)
	}

	broken := errors.New("connection reset by peer")
	for _, at := range []int{len(file) / 3, len(file) - 10} {
		if _, err := CheckBackup(&failingReader{b: file[:at], err: broken}); !errors.Is(err, broken) {
			t.Errorf("CheckBackup with a read error after %d of %d bytes: %v; want that error", at, len(file), err)
		}
		dir := t.TempDir()
		if _, err := Restore(Options{Dir: dir}, &failingReader{b: file[:at], err: broken}); !errors.Is(err, broken) {
			t.Errorf("Restore with a read error after %d of %d bytes: %v; want that error", at, len(file), err)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("Restore that failed left %d files in %s", len(entries), dir)
		}
	}
}
