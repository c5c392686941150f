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
