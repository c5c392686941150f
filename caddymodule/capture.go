package caddymodule

import (
	"bytes"
	"compress/gzip"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// capture sits between reverse_proxy and the client. A JSON answer is
// held in memory (up to limit) so the handler can inspect it, store its
// records and only then release it: that is what strict durability
// promises. Anything else (SSE, other streams, answers over the limit) is
// passed through as it arrives, flushes included, while a bounded copy is
// kept for inspection. Upgrades never reach a capture: the handler passes
// them straight on.
type capture struct {
	*caddyhttp.ResponseWriterWrapper

	hold  bool // hold JSON answers until release
	limit int

	status      int
	wroteHeader bool
	passing     bool // the header went to the client; bytes flow through
	truncated   bool // body holds only the first limit bytes
	body        bytes.Buffer
}

func newCapture(w http.ResponseWriter, hold bool, limit int) *capture {
	return &capture{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, hold: hold, limit: limit}
}

func (c *capture) WriteHeader(code int) {
	if c.wroteHeader {
		return
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		// Informational answers (103 Early Hints) go straight on.
		c.ResponseWriter.WriteHeader(code)
		return
	}
	c.status = code
	c.wroteHeader = true
	if !c.hold || !holdable(c.Header()) {
		c.pass()
	}
}

// holdable reports whether an answer is a document the sidecar holds for
// inspection, as opposed to a stream it must not delay: event streams and
// answers of unknown length that are not JSON pass straight through.
func holdable(h http.Header) bool {
	mt, _, _ := mime.ParseMediaType(h.Get("Content-Type"))
	if mt == "text/event-stream" {
		return false
	}
	if h.Get("Content-Length") != "" {
		return true
	}
	return mt == "" || mt == "application/json" || strings.HasSuffix(mt, "+json")
}

func (c *capture) pass() {
	if c.passing {
		return
	}
	c.passing = true
	c.ResponseWriter.WriteHeader(c.status)
}

func (c *capture) Write(p []byte) (int, error) {
	if !c.wroteHeader {
		c.WriteHeader(http.StatusOK)
	}
	if c.passing {
		c.keep(p)
		return c.ResponseWriter.Write(p)
	}
	if c.body.Len()+len(p) <= c.limit {
		return c.body.Write(p)
	}
	// Too big to hold: send what we have and stream the rest.
	held := c.body.Bytes()
	c.pass()
	if _, err := c.ResponseWriter.Write(held); err != nil {
		return 0, err
	}
	c.keep(p)
	return c.ResponseWriter.Write(p)
}

// keep appends to the inspection copy while it has room.
func (c *capture) keep(p []byte) {
	if c.truncated {
		return
	}
	room := c.limit - c.body.Len()
	if len(p) > room {
		c.body.Write(p[:room])
		c.truncated = true
		return
	}
	c.body.Write(p)
}

// ReadFrom must not reach the client's writer directly (the embedded
// wrapper would), or held bytes would skip the capture.
func (c *capture) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(writerOnly{c}, r)
}

type writerOnly struct{ io.Writer }

// FlushError flushes passed-through answers (SSE chunks reach the client
// as soon as the agent flushes them) and ignores flushes of held ones.
func (c *capture) FlushError() error {
	if !c.wroteHeader {
		c.WriteHeader(http.StatusOK)
	}
	if !c.passing {
		return nil
	}
	return http.NewResponseController(c.ResponseWriter).Flush()
}

// held reports whether the whole answer is still in memory, unsent.
func (c *capture) held() bool { return c.wroteHeader && !c.passing }

// release sends a held answer, replacing its body with body when not nil.
func (c *capture) release(body []byte) error {
	if !c.held() {
		return nil
	}
	if body == nil {
		body = c.body.Bytes()
	} else {
		c.Header().Del("Content-Encoding")
	}
	c.Header().Set("Content-Length", strconv.Itoa(len(body)))
	c.passing = true
	c.ResponseWriter.WriteHeader(c.status)
	_, err := c.ResponseWriter.Write(body)
	return err
}

// inspected is the answer body for inspection: decoded from gzip when the
// agent compressed it (the client still gets the compressed bytes), and
// never more than limit bytes.
func (c *capture) inspected() []byte {
	b := c.body.Bytes()
	if c.Header().Get("Content-Encoding") != "gzip" {
		return b
	}
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil
	}
	// A small compressed answer can expand enormously: read at most limit.
	out, _ := io.ReadAll(io.LimitReader(zr, int64(c.limit)))
	return out
}

// Interface guards
var _ http.ResponseWriter = (*capture)(nil)
