package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/api"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/wire"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// AdminAPI serves the operator API under /asap/ on Caddy's admin endpoint,
// which is private (localhost) by default. It keeps no state: each request
// reaches the running config's asap app.
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.asap",
		New: func() caddy.Module { return new(AdminAPI) },
	}
}

// Routes returns the admin routes: the status, and every operator API
// route of the api package's one table under /asap/.
func (AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/asap/status", Handler: caddy.AdminHandlerFunc(serveStatus)},
		// Only here, never on the public asap_api mount: a backup is the
		// whole database.
		{Pattern: "/asap/backup", Handler: caddy.AdminHandlerFunc(serveBackup)},
		{Pattern: "/asap/", Handler: caddy.AdminHandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			adminAPI.ServeHTTP(w, r)
			return nil
		})},
	}
}

// adminAPI serves the API routes for the running config, on the database
// named by ?storage=DIR when there are several.
var adminAPI = api.NewHandler(api.AdminMount, func(r *http.Request) (*api.Services, error) {
	app, err := runningApp()
	if err != nil {
		return nil, resolveError(err)
	}
	return app.services(r.Context(), r.URL.Query().Get("storage"))
})

// runningApp is the asap app of the config that is running now.
func runningApp() (*App, error) {
	app, err := caddy.ActiveContext().AppIfConfigured("asap")
	if err != nil {
		return nil, caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: err,
			Message: "no asap handler is configured; add an asap block to the Caddyfile"}
	}
	return app.(*App), nil
}

// services are the API backends of the database a request is about.
func (a *App) services(ctx context.Context, storage string) (*api.Services, error) {
	rt, d, err := a.apiAgent(ctx, storage)
	if err != nil {
		return nil, resolveError(err)
	}
	return &api.Services{
		Usage:       rt.usage(d),
		Delegations: delegationService{rt, d},
		SLA:         slaServiceOf(a, d),
		Audit:       auditService{rt, d},
	}, nil
}

// resolveError turns the app's caddy.APIError into the API's answer.
func resolveError(err error) error {
	var ae caddy.APIError
	if errors.As(err, &ae) {
		return &api.ResolveError{Status: ae.HTTPStatus, Detail: ae.Message}
	}
	return err
}

// Status is the answer of GET /asap/status.
type Status struct {
	Version       string        `json:"version"`
	CaddyVersion  string        `json:"caddy_version"`
	StartedAt     time.Time     `json:"started_at"`
	UptimeSeconds float64       `json:"uptime_seconds"`
	Agents        []AgentStatus `json:"agents"`
}

// AgentStatus describes one asap handler.
type AgentStatus struct {
	Agent   string `json:"agent"`
	Storage string `json:"storage"`
	// StorageOpenedAt does not change across reloads: they share the
	// open database.
	StorageOpenedAt time.Time `json:"storage_opened_at"`
	Durability      string    `json:"durability"`
	Delegation      string    `json:"delegation"`
	metering.Counts
	Rejected uint64 `json:"requests_rejected"`
	// AuditEntries is the audit log's size; AuditKey the note verifier
	// key its checkpoints are signed with.
	AuditEntries uint64 `json:"audit_entries"`
	AuditKey     string `json:"audit_key,omitempty"`
	// LastHealth and LastManifest are the last active health check and
	// manifest fetch (null before the first: they start with the first
	// request, which shows the route to the agent).
	LastHealth   *ProbeResult `json:"last_health"`
	LastManifest *ProbeResult `json:"last_manifest"`
	// Fleet is the storage's fleet membership; absent outside fleet mode.
	Fleet *FleetStatus `json:"fleet,omitempty"`
}

func serveStatus(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Message: "use GET"}
	}
	app, err := runningApp()
	if err != nil {
		return err
	}
	st := Status{
		Version:       Version,
		CaddyVersion:  CaddyVersion(),
		StartedAt:     wire.Time(processStart),
		UptimeSeconds: time.Since(processStart).Seconds(),
		Agents:        []AgentStatus{},
	}
	for _, rt := range app.agentList() {
		as := AgentStatus{
			Agent:        rt.Agent,
			Storage:      rt.Storage,
			Durability:   rt.Durability,
			Delegation:   rt.Delegation,
			Rejected:     rt.rejected.Load(),
			LastHealth:   rt.probes.lastOf(probeHealth),
			LastManifest: rt.probes.lastOf(probeManifest),
		}
		d, err := rt.store.Wait(r.Context(), storeWait)
		if err != nil {
			return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: err, Message: "storage not available"}
		}
		as.StorageOpenedAt = wire.Time(d.openedAt)
		if d.fleet != nil {
			as.Fleet = d.fleet.status()
		}
		if as.AuditEntries, _, err = d.audit.Size(); err != nil {
			return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err, Message: fmt.Sprintf("reading the audit log: %v", err)}
		}
		if k := rt.auditSigner(d); k.err == nil {
			as.AuditKey = k.vkey
		}
		if as.Counts, err = metering.CountsOf(d.db, rt.Agent); err != nil {
			return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err, Message: fmt.Sprintf("reading counters: %v", err)}
		}
		st.Agents = append(st.Agents, as)
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(st)
}

// Interface guard
var _ caddy.AdminRouter = AdminAPI{}
