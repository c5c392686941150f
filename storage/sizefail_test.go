package storage

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Size reports a directory it cannot list as an error, not as an empty
// database, and measures again once the directory is back.
func TestSizeOfADirectoryThatIsGone(t *testing.T) {
	db := openForSync(t)
	back := moveAway(t, db.dir)
	if s, err := db.Size(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Size of a missing directory = %+v, %v; want ErrNotExist", s, err)
	}
	back()
	if s, err := db.Size(); err != nil || s.LSM <= 0 {
		t.Fatalf("Size once the directory is back = %+v, %v", s, err)
	}
}

// A table listed but gone before Size stats it (removed by compaction;
// here a dangling link) is left out, and the rest is measured as before.
func TestSizeSkipsAFileGoneBeforeItIsMeasured(t *testing.T) {
	db := openForSync(t)
	before, err := db.Size()
	if err != nil {
		t.Fatal(err)
	}
	ghost := filepath.Join(db.dir, "999999.sst")
	if err := os.Symlink(filepath.Join(db.dir, "compacted"), ghost); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(ghost)
	if got, err := db.Size(); err != nil || got != before {
		t.Fatalf("Size with a vanished table = %+v, %v; want %+v as without it", got, err, before)
	}
}

// allocated is the space a file takes on disk, less than its length for a
// sparse file (Badger preallocates its logs so), and the length for a
// description that does not come from the system.
func TestAllocatedCountsBlocksNotLength(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sparse")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	info, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if got := allocated(info); got >= info.Size() {
		t.Errorf("a 1 MiB sparse file takes %d bytes, want less than its length", got)
	}
	if got := allocated(plainInfo{size: 12345}); got != 12345 {
		t.Errorf("a file description without system data counts %d bytes, want its length 12345", got)
	}
}

type plainInfo struct{ size int64 }

func (p plainInfo) Name() string       { return "plain" }
func (p plainInfo) Size() int64        { return p.size }
func (p plainInfo) Mode() fs.FileMode  { return 0o600 }
func (p plainInfo) ModTime() time.Time { return time.Time{} }
func (p plainInfo) IsDir() bool        { return false }
func (p plainInfo) Sys() any           { return nil }
