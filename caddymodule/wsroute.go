package caddymodule

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// routeTransport is an http.RoundTripper that sends a WebSocket handshake
// through the rest of the route (reverse_proxy and whatever else the
// operator put there) instead of dialing the agent itself, so the
// sidecar's connection to the agent uses the operator's upstream,
// transport and headers. When the route switches protocols, the tunnel
// comes back as the response body, the way net/http returns a 101.
type routeTransport struct {
	next caddyhttp.Handler
	// base is the client's handshake: its context carries Caddy's
	// per-request state the route needs.
	base *http.Request
	// tunnel bounds the tunnel's life. It is not the dial's context:
	// reverse_proxy closes the agent's side when its request's context
	// ends, and the dial's ends with the handshake timeout.
	tunnel context.Context
}

func (t routeTransport) RoundTrip(dial *http.Request) (*http.Response, error) {
	req := t.base.Clone(t.tunnel)
	req.Method = http.MethodGet
	req.Body, req.ContentLength, req.GetBody = http.NoBody, 0, nil
	req.Header = dial.Header.Clone()

	local, remote := net.Pipe()
	tw := &tunnelWriter{header: http.Header{}, conn: remote, hijacked: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- t.next.ServeHTTP(tw, req) }()
	select {
	case <-tw.hijacked:
		// reverse_proxy spells the WebSocket headers as browsers do
		// (Sec-WebSocket-Accept), outside Go's canonical form.
		header := make(http.Header, len(tw.header))
		for k, vs := range tw.header {
			for _, v := range vs {
				header.Add(k, v)
			}
		}
		return &http.Response{Status: "101 Switching Protocols", StatusCode: http.StatusSwitchingProtocols,
			Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: header, Body: local, Request: dial}, nil
	case err := <-done:
		local.Close()
		remote.Close()
		if err != nil {
			return nil, err
		}
		status := tw.status
		if status == 0 {
			status = http.StatusOK
		}
		return &http.Response{StatusCode: status, Status: http.StatusText(status), Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: tw.header, Body: io.NopCloser(bytes.NewReader(tw.body.Bytes())), Request: dial}, nil
	case <-dial.Context().Done():
		local.Close()
		remote.Close()
		return nil, dial.Context().Err()
	}
}

// tunnelWriter is the ResponseWriter the route answers a handshake into:
// it keeps a refusal (bounded) and hands one end of a pipe to a Hijack.
type tunnelWriter struct {
	header   http.Header
	status   int
	body     bytes.Buffer
	conn     net.Conn
	once     sync.Once
	hijacked chan struct{}
}

func (w *tunnelWriter) Header() http.Header { return w.header }

func (w *tunnelWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}

func (w *tunnelWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	if room := 1<<16 - w.body.Len(); room > 0 {
		w.body.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

func (w *tunnelWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.status != http.StatusSwitchingProtocols {
		return nil, nil, errors.New("asap: only a protocol switch may take over the sidecar's connection to the agent")
	}
	hijacked := false
	w.once.Do(func() { hijacked = true; close(w.hijacked) })
	if !hijacked {
		return nil, nil, errors.New("asap: connection already taken over")
	}
	return w.conn, bufio.NewReadWriter(bufio.NewReader(w.conn), bufio.NewWriter(w.conn)), nil
}
