package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// 'asap status' and 'asap healthcheck': what an operator (or a container
// runtime's HEALTHCHECK) asks a running sidecar, through its admin
// endpoint. Both work with the binary alone, so an image with nothing
// but the binary (FROM scratch) can run them.

func statusCommand() *cobra.Command {
	return command(cobra.Command{
		Use:   "status",
		Short: "Print a running sidecar's status (GET /asap/status)",
		Long: `
Prints the running sidecar's /asap/status as indented JSON: version,
uptime and, per asap handler, its agent, storage, task counts, rejected
requests and the last health and manifest probes of the agent.

The admin endpoint may be a TCP address (--address localhost:2019) or a
unix socket (--address unix//run/asap/admin.sock, or the socket's path
alone).`,
		Example: `  asap-caddy asap status --address unix//run/asap/admin.sock
  asap-caddy asap status --config /etc/asap/Caddyfile`,
		Args: cobra.NoArgs,
	}, cmdStatus, func(fs *pflag.FlagSet) {
		addAdminFlags(fs)
		addOutputFlag(fs)
	})
}

func cmdStatus(fl caddycmd.Flags) (int, error) {
	return withOutput(fl, func(w io.Writer) (int, error) {
		st, err := fetchStatus(fl)
		if err != nil {
			return exitFailure, err
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(st); err != nil {
			return exitFailure, err
		}
		return 0, nil
	})
}

// fetchStatus asks the sidecar found by the admin flags for its status.
func fetchStatus(fl caddycmd.Flags) (*Status, error) {
	resp, err := adminRequest(fl, http.MethodGet, "/asap/status", nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var st Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("reading the sidecar's /asap/status: %w (is the admin endpoint a sidecar's, built with the asap modules?)", err)
	}
	return &st, nil
}

func healthcheckCommand() *cobra.Command {
	return command(cobra.Command{
		Use:   "healthcheck [--url URL]",
		Short: "Exit 0 when the running sidecar is healthy (for HEALTHCHECK)",
		Long: `
Checks a running sidecar and exits 0 when it is healthy, 1 otherwise,
saying on stderr what it found or what failed. Made for container health checks: it needs
no curl or shell.

It asks the admin endpoint for /asap/status, which answers only when the
asap app runs and each handler's database is open. With --url it then
GETs that URL too and wants a 2xx answer: pointed at the agent's health
route through the proxy port (http://127.0.0.1:8080/.well-known/asap/health)
it proves that the proxy port serves and the agent behind it is up.

Each request gives up after --timeout.`,
		Example: `  asap-caddy asap healthcheck --config /etc/asap/Caddyfile --url http://127.0.0.1:8080/.well-known/asap/health
  asap-caddy asap healthcheck --address unix//run/asap/admin.sock`,
		Args: cobra.NoArgs,
	}, cmdHealthcheck, func(fs *pflag.FlagSet) {
		addAdminFlags(fs)
		fs.String("url", "", "also GET this URL and want a 2xx answer (the proxy port's health route)")
		fs.Duration("timeout", 5*time.Second, "how long each request may take")
	})
}

func cmdHealthcheck(fl caddycmd.Flags) (int, error) {
	timeout := fl.Duration("timeout")
	if timeout <= 0 {
		return exitFailure, fmt.Errorf("--timeout %s: must be more than 0 (for example 5s)", timeout)
	}
	// Caddy's admin client has no deadline of its own: a sidecar that
	// accepts but never answers must not hang the check.
	type result struct {
		st  *Status
		err error
	}
	done := make(chan result, 1)
	go func() {
		st, err := fetchStatus(fl)
		done <- result{st, err}
	}()
	var st *Status
	select {
	case r := <-done:
		if r.err != nil {
			return exitFailure, fmt.Errorf("unhealthy: %w", r.err)
		}
		st = r.st
	case <-time.After(timeout):
		return exitFailure, fmt.Errorf("unhealthy: the admin endpoint did not answer /asap/status within %s (--timeout)", timeout)
	}
	if len(st.Agents) == 0 {
		return exitFailure, errors.New("unhealthy: the sidecar runs no asap handler (its config has no asap block)")
	}
	agents := make([]string, len(st.Agents))
	for i, a := range st.Agents {
		agents[i] = a.Agent
	}
	msg := fmt.Sprintf("ok: asap-sidecar %s, %d handler(s) (%s)", st.Version, len(st.Agents), strings.Join(agents, ", "))

	if u := fl.String("url"); u != "" {
		status, err := getStatus(u, timeout)
		if err != nil {
			return exitFailure, fmt.Errorf("unhealthy: --url %s: %w", u, err)
		}
		if status < 200 || status > 299 {
			return exitFailure, fmt.Errorf("unhealthy: --url %s answered HTTP %d; want 2xx (is the agent behind the sidecar up?)", u, status)
		}
		msg += fmt.Sprintf("; %s answered %d", u, status)
	}
	fmt.Fprintln(stderr, msg)
	return 0, nil
}

// getStatus GETs u and returns the answer's status code.
func getStatus(u string, timeout time.Duration) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	resp, err := (&http.Client{Transport: &http.Transport{Proxy: nil}}).Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, nil
}

// unixAddress turns an --address that is a socket's path
// (/run/asap/admin.sock) into Caddy's form for it (unix//run/asap/admin.sock);
// other addresses are returned as they are.
func unixAddress(addr string) string {
	if strings.HasPrefix(addr, "/") {
		return "unix/" + addr
	}
	return addr
}
