package api

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
)

// Services are the backends of the operator APIs for one database: what
// a request's routes read and write.
type Services struct {
	Usage       UsageService
	Delegations DelegationService
	SLA         SLAService
	Audit       AuditService
}

// UsageService is what the Usage API needs of a metering store
// (*metering.Store is one).
type UsageService interface {
	Query(f metering.Filter, limit, offset int) ([]metering.Event, error)
	Aggregate(f metering.Filter, groupBy string) (any, error)
	Summarize(f metering.Filter) (metering.Summary, error)
	Stats() (metering.Stats, error)
	Purge(now time.Time) (int, error)
	// Record stores agent-reported events durably, all or none.
	Record(ctx context.Context, events []*metering.Event) error
}

// Resolver finds the services a request is about (the database named by
// ?storage=, or the only one). An error it returns is answered with the
// status of a *ResolveError, else 500.
type Resolver func(r *http.Request) (*Services, error)

// ResolveError is a Resolver's failure as the client should see it.
type ResolveError struct {
	Status int
	Detail string
}

func (e *ResolveError) Error() string { return e.Detail }

// route is one operator API endpoint: a method and a path pattern as the
// reference serves them (Go ServeMux syntax), and the function serving it.
type route struct {
	method, path string
	serve        func(w http.ResponseWriter, r *http.Request, s *Services)
}

// routes is the one table of every operator API endpoint.
var routes = []route{
	{"GET", "/usage", usageList},
	{"POST", "/usage", usageRecord},
	{"POST", "/usage/batch", usageBatch},
	{"GET", "/usage/aggregate", usageAggregate},
	{"GET", "/usage/summary", usageSummary},
	{"GET", "/usage/agents", usageGroups(metering.ByAgent)},
	{"GET", "/usage/consumers", usageGroups(metering.ByConsumer)},
	{"GET", "/usage/stats", usageStats},
	{"POST", "/usage/purge", usagePurge},
	{"POST", "/usage/validate", usageValidate},
	{"GET", "/usage/export", usageExport},

	{"GET", "/sla", slaStatus},
	{"GET", "/sla/history", slaHistory},
	{"GET", "/sla/breaches", slaBreaches},
	{"GET", "/sla/events", slaEvents},
	{"GET", "/sla/subscribe", slaSubscribe},
	{"GET", "/agents/{id}/sla", agentSLA},

	{"GET", "/audit", auditList},
	{"GET", "/audit/verify", auditVerify},
	{"GET", "/audit/export", auditExport},
	{"GET", "/audit/checkpoint", auditCheckpoint},
	{"GET", "/audit/keys", auditKeys},
	{"GET", "/audit/proof/inclusion", inclusionProof},
	{"GET", "/audit/proof/consistency", consistencyProof},
	{"GET", "/audit/{id}", auditEntry},

	{"GET", "/asap/delegations", listDelegations},
	{"POST", "/asap/delegations", createDelegation},
	{"GET", "/asap/delegations/{id}", getDelegation},
	{"DELETE", "/asap/delegations/{id}", revokeDelegation},
}

// Mount is where a Handler serves the table.
type Mount int

const (
	// PublicMount serves the reference's own paths (/usage/summary,
	// /asap/delegations/{id}), as the asap_api handler does.
	PublicMount Mount = iota
	// AdminMount serves them under /asap on Caddy's admin endpoint
	// (/asap/usage/summary); /asap/delegations is the reference's own
	// path and stays as it is.
	AdminMount
)

// path is where m serves a route of the table.
func (m Mount) path(p string) string {
	if m == AdminMount && !strings.HasPrefix(p, "/asap/") {
		return "/asap" + p
	}
	return p
}

// Handler serves every route of the table at its mount. Unknown paths
// answer 404 and known paths with another method 405 with Allow, both as
// {"detail": …}.
type Handler struct {
	mux     *http.ServeMux
	paths   *http.ServeMux // each route's path for any method
	allowed map[string][]string
}

// NewHandler builds the handler over the routes table; resolve finds each
// matched request's services.
func NewHandler(m Mount, resolve Resolver) *Handler {
	h := &Handler{mux: http.NewServeMux(), paths: http.NewServeMux(), allowed: map[string][]string{}}
	for _, rt := range routes {
		p, serve := m.path(rt.path), rt.serve
		h.mux.HandleFunc(rt.method+" "+p, func(w http.ResponseWriter, r *http.Request) {
			s, err := resolve(r)
			if err != nil {
				var re *ResolveError
				if errors.As(err, &re) {
					Error(w, re.Status, "%s", re.Detail)
				} else {
					Error(w, http.StatusInternalServerError, "%v", err)
				}
				return
			}
			serve(w, r, s)
		})
		if _, ok := h.allowed[p]; !ok {
			h.paths.HandleFunc(p, func(http.ResponseWriter, *http.Request) {})
		}
		h.allowed[p] = append(h.allowed[p], rt.method)
	}
	return h
}

// Owns reports whether path is an API route (for any method): a mount in
// front of other routes passes everything else on.
func (h *Handler) Owns(p string) bool {
	_, pattern := h.paths.Handler(&http.Request{Method: http.MethodGet, URL: &url.URL{Path: trimSlash(p)}})
	return pattern != ""
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if p := trimSlash(r.URL.Path); path.Clean(p) != p {
		// No route has empty or dot segments; ServeMux would redirect.
		Error(w, http.StatusNotFound, "Not Found")
		return
	} else if p != r.URL.Path {
		// The reference's clients sometimes add a trailing slash; the
		// route is the same.
		r2 := r.Clone(r.Context())
		r2.URL.Path, r2.URL.RawPath = p, ""
		r = r2
	}
	// ServeMux serves HEAD with GET routes; the reference does not.
	if _, pattern := h.mux.Handler(r); pattern != "" && r.Method != http.MethodHead {
		h.mux.ServeHTTP(w, r)
		return
	}
	if _, pattern := h.paths.Handler(r); pattern != "" {
		methods := h.allowed[pattern]
		w.Header().Set("Allow", strings.Join(methods, ", "))
		Error(w, http.StatusMethodNotAllowed, "method not allowed; use %s", strings.Join(methods, ", "))
		return
	}
	Error(w, http.StatusNotFound, "Not Found")
}

func trimSlash(p string) string {
	if len(p) > 1 {
		return strings.TrimSuffix(p, "/")
	}
	return p
}

// Endpoint is one route of the table as a mount serves it.
type Endpoint struct{ Method, Path string }

// Endpoints lists every route of the table at mount m, in table order.
func Endpoints(m Mount) []Endpoint {
	out := make([]Endpoint, len(routes))
	for i, rt := range routes {
		out[i] = Endpoint{rt.method, m.path(rt.path)}
	}
	return out
}
