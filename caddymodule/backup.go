package caddymodule

import (
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// serveBackup streams a consistent backup of a running database (GET
// /asap/backup[?storage=DIR]) while it keeps taking writes. The body is
// the storage package's backup file, written as Badger produces it, never
// held in memory.
func serveBackup(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Message: "use GET"}
	}
	app, err := runningApp()
	if err != nil {
		return err
	}
	_, d, err := app.apiAgent(r.Context(), r.URL.Query().Get("storage"))
	if err != nil {
		return err
	}
	started := time.Now()
	name := fmt.Sprintf("asap-%s.backup", started.UTC().Format("20060102T150405Z"))
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", name))
	logger := caddy.Log().Named("asap.backup").With(zap.String("storage", d.db.Dir()))
	info, err := d.db.Backup(w)
	if err != nil {
		logger.Error("backup failed", zap.Int64("bytes_sent", info.Bytes), zap.Error(err))
		if info.Bytes == 0 {
			return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err, Message: fmt.Sprintf("backing up: %v", err)}
		}
		// The status is sent: cut the connection, so that the client's
		// copy lacks its end marker and cannot pass for a whole backup.
		panic(http.ErrAbortHandler)
	}
	logger.Info("backup sent", zap.Uint64("version", info.Version), zap.Int64("bytes", info.Bytes),
		zap.Duration("took", time.Since(started)))
	return nil
}
