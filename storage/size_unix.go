//go:build unix

package storage

import (
	"os"
	"syscall"
)

// allocated is the disk space a file takes up.
func allocated(info os.FileInfo) int64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return int64(st.Blocks) * 512
	}
	return info.Size()
}
