package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/api"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
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

// Routes returns the admin routes.
func (AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/asap/status", Handler: caddy.AdminHandlerFunc(serveStatus)},
		{Pattern: "/asap/usage", Handler: serveUsage},
		{Pattern: "/asap/usage/", Handler: serveUsage},
		{Pattern: "/asap/sla", Handler: serveSLA},
		{Pattern: "/asap/sla/", Handler: serveSLA},
		{Pattern: "/asap/agents/", Handler: serveSLA},
		{Pattern: "/asap/audit", Handler: serveAudit},
		{Pattern: "/asap/audit/", Handler: serveAudit},
		{Pattern: "/asap/delegations", Handler: serveDelegations},
		{Pattern: "/asap/delegations/", Handler: serveDelegations},
	}
}

// runningApp is the asap app of the config that is running now.
func runningApp() (*App, error) {
	app, err := caddy.ActiveContext().AppIfConfigured("asap")
	if err != nil {
		return nil, caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: err,
			Message: "no asap handler is configured; add an asap block to the Caddyfile"}
	}
	return app.(*App), nil
}

// apiRoute serves one operator API of the running config, for the
// handler whose database the request is about (?storage=DIR when there
// are several). The API sees the reference's path: /asap is cut off,
// except for /asap/delegations, which keeps its name.
func apiRoute(serve func(w http.ResponseWriter, r *http.Request, path string, app *App, rt *agentRuntime, d *database)) caddy.AdminHandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		app, err := runningApp()
		if err != nil {
			return err
		}
		rt, d, err := app.apiAgent(r.Context(), r.URL.Query().Get("storage"))
		if err != nil {
			return err
		}
		path := r.URL.Path
		if !strings.HasPrefix(path, "/asap/delegations") {
			path = strings.TrimPrefix(path, "/asap")
		}
		serve(w, r, path, app, rt, d)
		return nil
	}
}

var (
	serveUsage = apiRoute(func(w http.ResponseWriter, r *http.Request, path string, _ *App, rt *agentRuntime, d *database) {
		api.Usage(w, r, path, rt.usage(d))
	})
	serveSLA = apiRoute(func(w http.ResponseWriter, r *http.Request, path string, app *App, _ *agentRuntime, d *database) {
		api.SLA(w, r, path, slaServiceOf(app, d))
	})
	serveAudit = apiRoute(func(w http.ResponseWriter, r *http.Request, path string, _ *App, rt *agentRuntime, d *database) {
		api.Audit(w, r, path, auditService{rt, d})
	})
	serveDelegations = apiRoute(func(w http.ResponseWriter, r *http.Request, path string, _ *App, rt *agentRuntime, d *database) {
		api.Delegations(w, r, path, delegationService{rt, d})
	})
)

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
}

func serveStatus(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Message: "use GET"}
	}
	app, err := runningApp()
	if err != nil {
		return err
	}
	_, caddyVersion := caddy.Version()
	st := Status{
		Version:       Version,
		CaddyVersion:  caddyVersion,
		StartedAt:     processStart.UTC(),
		UptimeSeconds: time.Since(processStart).Seconds(),
		Agents:        []AgentStatus{},
	}
	for _, rt := range app.agentList() {
		as := AgentStatus{
			Agent:      rt.Agent,
			Storage:    rt.Storage,
			Durability: rt.Durability,
			Delegation: rt.Delegation,
			Rejected:   rt.rejected.Load(),
		}
		d, err := rt.store.Wait(r.Context(), storeWait)
		if err != nil {
			return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: err, Message: "storage not available"}
		}
		as.StorageOpenedAt = d.openedAt.UTC()
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
