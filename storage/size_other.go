//go:build !unix

package storage

import "os"

// allocated is the disk space a file takes up; without block counts,
// its length.
func allocated(info os.FileInfo) int64 { return info.Size() }
