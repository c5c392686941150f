package caddymodule

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Tests of the capture that holds and inspects the agent's answers, killing
// mutants that survived the suite (found by gremlins).

// Informational answers (100 Continue, 103 Early Hints) reach the client
// when the agent sends them, not with the final answer, and the final
// status the client gets is the agent's.
func TestInformationalAnswersGoStraightOn(t *testing.T) {
	final := `{"jsonrpc":"2.0","error":{"code":-32603,"message":"Internal error"},"id":"r1"}`
	for _, code := range []int{http.StatusContinue, http.StatusEarlyHints} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			seen := make(chan struct{})
			var once sync.Once
			var early atomic.Bool
			up := &countingUpstream{answer: func(w http.ResponseWriter, _ *http.Request, _ []byte) {
				w.Header().Set("Link", "</app.css>; rel=preload")
				w.WriteHeader(code)
				select {
				case <-seen:
					early.Store(true)
				case <-time.After(5 * time.Second):
				}
				w.Header().Del("Link")
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusInternalServerError)
				_, _ = io.WriteString(w, final)
			}}
			srv := httptest.NewServer(up)
			defer srv.Close()
			s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo")

			var mu sync.Mutex
			var interim []int
			var link string
			trace := &httptrace.ClientTrace{Got1xxResponse: func(c int, h textproto.MIMEHeader) error {
				mu.Lock()
				interim = append(interim, c)
				link = h.Get("Link")
				mu.Unlock()
				once.Do(func() { close(seen) })
				return nil
			}}
			req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace),
				http.MethodPost, s.url+"/asap", strings.NewReader(rpc("r1", envelope("01JINFORMATIONAL0000000001", "echo", `{}`))))
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !early.Load() {
				t.Errorf("the client did not get the agent's %d before the agent's final answer", code)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(interim) != 1 || interim[0] != code || link != "</app.css>; rel=preload" {
				t.Errorf("interim answers %v (Link %q), want one %d with the agent's Link", interim, link, code)
			}
			if resp.StatusCode != http.StatusInternalServerError || string(b) != final {
				t.Errorf("final answer %d %s, want the agent's 500 %s", resp.StatusCode, b, final)
			}
		})
	}
}

// An answer of unknown length is held (and checked) when it may be JSON,
// and streamed as it arrives when it says it is something else.
func TestUnknownLengthAnswersByContentType(t *testing.T) {
	t.Run("text/plain streams", func(t *testing.T) {
		read := make(chan struct{})
		up := &countingUpstream{answer: func(w http.ResponseWriter, _ *http.Request, _ []byte) {
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(http.StatusOK)
			_, _ = io.WriteString(w, "one\n")
			w.(http.Flusher).Flush()
			select {
			case <-read: // the client got line one
			case <-time.After(5 * time.Second):
			}
			_, _ = io.WriteString(w, "two\n")
		}}
		srv := httptest.NewServer(up)
		defer srv.Close()
		s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo")
		resp, err := client.Post(s.url+"/asap", "application/json", strings.NewReader(rpc("r1", envelope("01JPLAINSTREAM000000000001", "echo", `{}`))))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		rd := bufio.NewReader(resp.Body)
		done := make(chan string, 1)
		go func() {
			line, _ := rd.ReadString('\n')
			done <- line
		}()
		select {
		case line := <-done:
			if line != "one\n" {
				t.Fatalf("first line %q (status %d), want the agent's \"one\"", line, resp.StatusCode)
			}
		case <-time.After(4 * time.Second):
			t.Fatal("line one did not reach the client while the agent was still answering")
		}
		close(read)
		rest, _ := io.ReadAll(rd)
		if resp.StatusCode != http.StatusOK || string(rest) != "two\n" {
			t.Fatalf("rest %d %q", resp.StatusCode, rest)
		}
	})
	t.Run("no Content-Type is held and checked", func(t *testing.T) {
		up := &countingUpstream{answer: func(w http.ResponseWriter, _ *http.Request, _ []byte) {
			w.Header()["Content-Type"] = nil // no type, and none sniffed
			w.WriteHeader(http.StatusOK)
			_, _ = io.WriteString(w, "not a JSON-RPC answer")
			w.(http.Flusher).Flush() // no Content-Length either
		}}
		srv := httptest.NewServer(up)
		defer srv.Close()
		s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo")
		resp, b := post(t, s.url+"/asap", rpc("r1", envelope("01JNOTYPE00000000000000001", "echo", `{}`)))
		if a := decodeAnswer(t, b); resp.StatusCode != http.StatusBadGateway || a.Error == nil || a.Error.Data["reason"] != "invalid_agent_answer" {
			t.Fatalf("untyped garbage: %d %s, want 502 invalid_agent_answer", resp.StatusCode, b)
		}
	})
}

// An answer of exactly inspect_limit bytes is still held and checked
// whole; one byte more is streamed to the client unchanged.
func TestAnswerOfExactlyInspectLimitIsChecked(t *testing.T) {
	var size atomic.Int64
	up := &countingUpstream{answer: func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		n := int(size.Load())
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", fmt.Sprint(n))
		w.WriteHeader(http.StatusOK)
		// In two writes: what the sidecar holds grows across them.
		_, _ = io.WriteString(w, strings.Repeat("x", n/2))
		w.(http.Flusher).Flush()
		_, _ = io.WriteString(w, strings.Repeat("x", n-n/2))
	}}
	srv := httptest.NewServer(up)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo\ninspect_limit 1KiB")

	size.Store(1024)
	resp, b := post(t, s.url+"/asap", rpc("r1", envelope("01JEXACTLIMIT0000000000001", "echo", `{}`)))
	if a := decodeAnswer(t, b); resp.StatusCode != http.StatusBadGateway || a.Error == nil || a.Error.Data["reason"] != "invalid_agent_answer" {
		t.Fatalf("garbage of exactly inspect_limit: %d %.80s, want 502 invalid_agent_answer", resp.StatusCode, b)
	}
	size.Store(1025)
	resp, b = post(t, s.url+"/asap", rpc("r2", envelope("01JEXACTLIMIT0000000000002", "echo", `{}`)))
	if resp.StatusCode != http.StatusOK || string(b) != strings.Repeat("x", 1025) {
		t.Fatalf("answer one byte over inspect_limit: %d %d bytes %.80s, want the agent's 1025 bytes", resp.StatusCode, len(b), b)
	}
}

// The capture buffer: an answer up to the limit is held until released;
// a larger one reaches the client whole while the copy kept for
// inspection stops at the limit, however the answer is split into writes.
func TestCaptureKeepsAtMostInspectLimit(t *testing.T) {
	const limit = 16
	for _, tc := range []struct {
		name   string
		hold   bool
		writes []int
	}{
		{"held, exactly the limit in one write", true, []int{16}},
		{"held, exactly the limit in two writes", true, []int{10, 6}},
		{"held, one over in one write", true, []int{17}},
		{"held, one over in two writes", true, []int{10, 7}},
		{"held, far over in many writes", true, []int{5, 5, 5, 5, 5}},
		{"streamed, exactly the limit", false, []int{8, 8}},
		{"streamed, over in many writes", false, []int{6, 6, 6}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			c := newCapture(rec, tc.hold, limit)
			c.Header().Set("Content-Type", "application/json")
			var all []byte
			for i, n := range tc.writes {
				p := []byte(strings.Repeat(string(rune('a'+i)), n))
				if k, err := c.Write(p); k != n || err != nil {
					t.Fatalf("write %d: %d %v", i, k, err)
				}
				all = append(all, p...)
			}
			heldWhole := tc.hold && len(all) <= limit
			if heldWhole {
				if rec.Body.Len() != 0 {
					t.Fatalf("%d bytes reached the client before release", rec.Body.Len())
				}
			} else if rec.Body.String() != string(all) {
				t.Fatalf("client got %q, want %q as it was written", rec.Body.String(), all)
			}
			want := all
			if len(want) > limit {
				want = want[:limit]
			}
			if got := c.inspected(); string(got) != string(want) {
				t.Fatalf("inspected %q (%d bytes), want %q: at most the limit", got, len(got), want)
			}
			if err := c.release(nil); err != nil {
				t.Fatal(err)
			}
			if rec.Body.String() != string(all) || rec.Code != http.StatusOK {
				t.Fatalf("after release the client has %d %q, want %q", rec.Code, rec.Body.String(), all)
			}
		})
	}
}

// A stream read whole that carries no answer leaves its call failed; one
// cut at inspect_limit may have answered past the cut, so it is not
// counted failed.
func TestStreamWithoutAnswerAtInspectLimit(t *testing.T) {
	var size atomic.Int64
	up := &countingUpstream{answer: func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		// An SSE comment: no event, so no answer.
		_, _ = io.WriteString(w, ": "+strings.Repeat("k", int(size.Load())-4)+"\n\n")
	}}
	srv := httptest.NewServer(up)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo\ninspect_limit 1KiB")
	for _, tc := range []struct {
		size   int64
		envID  string
		status string
	}{
		{1024, "01JSTREAMLIMIT000000000001", "failed"},
		{1025, "01JSTREAMLIMIT000000000002", "completed"},
	} {
		size.Store(tc.size)
		resp, b := post(t, s.url+"/asap/stream", rpc("r", envelope(tc.envID, "echo", `{}`)))
		if resp.StatusCode != http.StatusOK || int64(len(b)) != tc.size {
			t.Fatalf("%d-byte stream: client got %d, %d bytes", tc.size, resp.StatusCode, len(b))
		}
		waitFor(t, func() bool { _, ok := usageEvents(t, runningDB(t))[tc.envID]; return ok })
		if ev := usageEvents(t, runningDB(t))[tc.envID]; ev.Status != tc.status {
			t.Fatalf("%d-byte stream without an answer (inspect_limit 1024) recorded %q, want %q", tc.size, ev.Status, tc.status)
		}
	}
}
