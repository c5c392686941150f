// Package dirstate snapshots a directory's files for tests that must show
// an operation left them alone (a read-only open, a refused restore).
package dirstate

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Of is every file under dir: its path, modification time, size and
// content hash.
func Of(t testing.TB, dir string) map[string]string {
	t.Helper()
	st := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		st[p] = fmt.Sprintf("%s %d %x", info.ModTime().Format(time.RFC3339Nano), info.Size(), sha256.Sum256(b))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// Same fails t for every file of before that changed or is gone, and
// every file that appeared; an empty before proves nothing, so it fails
// too.
func Same(t testing.TB, before, after map[string]string) {
	t.Helper()
	if len(before) == 0 {
		t.Fatal("no files to compare")
	}
	for p, s := range before {
		if after[p] != s {
			t.Errorf("%s changed", p)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s appeared", p)
		}
	}
}
