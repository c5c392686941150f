package caddymodule

import (
	"io"
	"net/http"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
)

// negotiateVersion is the first step for a POST on /asap or /asap/stream,
// as the reference's version middleware is the outermost step of its
// server: before the body is read or a token looked at, the request's
// ASAP-Version list is matched against asap_versions. A list naming none
// of them is answered -32000 here and never forwarded (refused, with the
// error of writing that answer). Else the writer returned stamps the
// negotiated version on whatever answer goes out, the agent's or the
// sidecar's own, and the agent is asked in that version alone, so that
// it answers in the version the client is told.
func (h *Handler) negotiateVersion(w http.ResponseWriter, r *http.Request) (_ http.ResponseWriter, refused bool, err error) {
	values := r.Header.Values(protocol.VersionHeader)
	version, ok := h.versions.Negotiate(values)
	if !ok {
		if r.ContentLength != 0 {
			// As for 413: the body is not read, and closing the
			// connection keeps the server from draining it before the
			// answer goes out.
			w.Header().Set("Connection", "close")
		}
		// The reference labels this answer with its default version.
		return nil, true, h.reject(withVersion(w, h.versions.Default), http.StatusOK, h.versions.Incompatible(values))
	}
	r.Header.Set(protocol.VersionHeader, version)
	return withVersion(w, version), false, nil
}

// versionWriter sets ASAP-Version on the answer it carries just before
// the header goes out, replacing any value the agent sent (reverse_proxy
// adds the agent's headers to ours, so setting it beforehand would give
// two).
type versionWriter struct {
	// By value: one allocation a request.
	caddyhttp.ResponseWriterWrapper
	version string
	stamped bool
}

func withVersion(w http.ResponseWriter, version string) *versionWriter {
	return &versionWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, version: version}
}

func (vw *versionWriter) stamp() {
	if !vw.stamped {
		vw.stamped = true
		vw.Header().Set(protocol.VersionHeader, vw.version)
	}
}

func (vw *versionWriter) WriteHeader(code int) {
	// Informational answers (103 Early Hints) are not the answer.
	if code >= 200 || code == http.StatusSwitchingProtocols {
		vw.stamp()
	}
	vw.ResponseWriter.WriteHeader(code)
}

func (vw *versionWriter) Write(p []byte) (int, error) {
	vw.stamp()
	return vw.ResponseWriter.Write(p)
}

// ReadFrom and FlushError may send the header first too.
func (vw *versionWriter) ReadFrom(r io.Reader) (int64, error) {
	vw.stamp()
	return vw.ResponseWriterWrapper.ReadFrom(r)
}

func (vw *versionWriter) FlushError() error {
	vw.stamp()
	return http.NewResponseController(vw.ResponseWriter).Flush()
}

// Interface guards
var (
	_ http.ResponseWriter = (*versionWriter)(nil)
	_ io.ReaderFrom       = (*versionWriter)(nil)
)
