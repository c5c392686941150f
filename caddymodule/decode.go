package caddymodule

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/andybalholm/brotli"
)

// errTooLarge is a body past max_body, compressed or decoded.
var errTooLarge = errors.New("body larger than max_body")

// bodyError is a request body the sidecar cannot inspect: status says
// which answer the client gets.
type bodyError struct {
	status int
	reason string
	detail string
}

func (e *bodyError) Error() string { return e.reason + ": " + e.detail }

// readBody reads an ASAP request body as the agent would read it: a
// Content-Encoding the reference clients use (gzip, deflate, br) is
// decoded, and max applies to the decoded size, so a small compressed body
// cannot expand into a large one. It returns the bytes as sent and the
// decoded bytes (the same slice when the body is not encoded).
func readBody(r *http.Request, w http.ResponseWriter, max int64) (sent, decoded []byte, err error) {
	sent, err = io.ReadAll(http.MaxBytesReader(w, r.Body, max))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, nil, errTooLarge
		}
		return nil, nil, &bodyError{http.StatusBadRequest, "unreadable_body", fmt.Sprintf("the request body could not be read: %v", err)}
	}
	enc := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding")))
	if len(r.Header.Values("Content-Encoding")) > 1 {
		enc = "," // several encodings: refused below
	}
	var dec io.Reader
	switch enc {
	case "", "identity":
		return sent, sent, nil
	case "gzip", "x-gzip":
		zr, err := gzip.NewReader(bytes.NewReader(sent))
		if err != nil {
			return nil, nil, corrupt(enc, err)
		}
		zr.Multistream(false)
		dec = zr
	case "deflate":
		// RFC 9110's deflate is the zlib format; raw deflate is what some
		// clients send, so both are read.
		dec = zlibOrRaw(sent)
	case "br":
		dec = brotli.NewReader(bytes.NewReader(sent))
	default:
		return nil, nil, &bodyError{http.StatusUnsupportedMediaType, "unsupported_encoding",
			fmt.Sprintf("Content-Encoding %q is not supported; send the body uncompressed or with one of gzip, deflate, br", truncateASCII(enc, 32))}
	}
	decoded, err = io.ReadAll(io.LimitReader(dec, max+1))
	if err != nil {
		return nil, nil, corrupt(enc, err)
	}
	if int64(len(decoded)) > max {
		return nil, nil, errTooLarge
	}
	return sent, decoded, nil
}

func corrupt(enc string, err error) *bodyError {
	return &bodyError{http.StatusBadRequest, "bad_encoding",
		fmt.Sprintf("the body is not valid %s (%v); compress it again or send it uncompressed", enc, err)}
}

// zlibOrRaw reads b as zlib-wrapped deflate when it has a zlib header,
// else as raw deflate.
func zlibOrRaw(b []byte) io.Reader {
	if len(b) >= 2 && b[0]&0x0f == 8 && (uint16(b[0])<<8|uint16(b[1]))%31 == 0 {
		zr, err := zlib.NewReader(bytes.NewReader(b))
		if err != nil {
			return errReader{err}
		}
		return zr
	}
	return flate.NewReader(bytes.NewReader(b))
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }
