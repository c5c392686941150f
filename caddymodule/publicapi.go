package caddymodule

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/api"
)

func init() {
	caddy.RegisterModule(new(PublicAPI))
	httpcaddyfile.RegisterHandlerDirective("asap_api", parsePublicAPI)
	httpcaddyfile.RegisterDirectiveOrder("asap_api", httpcaddyfile.Before, "reverse_proxy")
}

// PublicAPI mounts the operator APIs on a site at the reference's paths
// (/usage, …) for operators who want them outside the admin endpoint.
// Every call needs the configured bearer credential; anything else under
// those paths gets 401, and other paths go on to the next handler.
type PublicAPI struct {
	// Bearer is the credential callers send as "Authorization: Bearer
	// <credential>". Placeholders such as {env.ASAP_API_TOKEN} are
	// expanded at load. Required.
	Bearer string `json:"bearer,omitempty"`
	// Storage names the database when several asap handlers use
	// different ones.
	Storage string `json:"storage,omitempty"`

	app  *App
	hash [32]byte
}

// CaddyModule returns the Caddy module information.
func (*PublicAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.asap_api",
		New: func() caddy.Module { return new(PublicAPI) },
	}
}

// Provision expands the credential and finds the asap app.
func (p *PublicAPI) Provision(ctx caddy.Context) error {
	p.Bearer = caddy.NewReplacer().ReplaceKnown(p.Bearer, "")
	// Compare digests, so the comparison takes the same time whatever
	// the lengths.
	p.hash = sha256.Sum256([]byte(p.Bearer))
	app, err := ctx.App("asap")
	if err != nil {
		return err
	}
	p.app = app.(*App)
	return nil
}

// Validate refuses an anonymous public API.
func (p *PublicAPI) Validate() error {
	if strings.TrimSpace(p.Bearer) == "" {
		return errors.New("asap_api: option bearer: a credential is required; the public API is never anonymous (use {env.NAME} to keep it out of the file)")
	}
	if len(p.Bearer) < 16 {
		return errors.New("asap_api: option bearer: use a credential of at least 16 characters")
	}
	return nil
}

func isAPIPath(p string) bool {
	return p == "/usage" || strings.HasPrefix(p, "/usage/") ||
		p == "/asap/delegations" || strings.HasPrefix(p, "/asap/delegations/") ||
		p == "/audit" || strings.HasPrefix(p, "/audit/") ||
		p == "/sla" || strings.HasPrefix(p, "/sla/") || strings.HasPrefix(p, "/agents/")
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (p *PublicAPI) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if !isAPIPath(r.URL.Path) {
		return next.ServeHTTP(w, r)
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || strings.TrimSpace(token) == "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="asap"`)
		api.Error(w, http.StatusUnauthorized, "Authentication required")
		return nil
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(token)))
	if subtle.ConstantTimeCompare(got[:], p.hash[:]) != 1 {
		w.Header().Set("WWW-Authenticate", `Bearer realm="asap", error="invalid_token"`)
		api.Error(w, http.StatusUnauthorized, "Invalid authentication token")
		return nil
	}
	rt, d, err := p.app.apiAgent(r.Context(), p.Storage)
	if err != nil {
		var ae caddy.APIError
		if errors.As(err, &ae) {
			api.Error(w, ae.HTTPStatus, "%s", ae.Message)
			return nil
		}
		return err
	}
	switch {
	case strings.HasPrefix(r.URL.Path, "/usage"):
		api.Usage(w, r, r.URL.Path, rt.usage(d))
	case strings.HasPrefix(r.URL.Path, "/audit"):
		api.Audit(w, r, r.URL.Path, auditService{rt, d})
	case strings.HasPrefix(r.URL.Path, "/sla"), strings.HasPrefix(r.URL.Path, "/agents/"):
		api.SLA(w, r, r.URL.Path, slaServiceOf(p.app, d))
	default:
		api.Delegations(w, r, r.URL.Path, delegationService{rt, d})
	}
	return nil
}

func parsePublicAPI(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	p := new(PublicAPI)
	err := p.UnmarshalCaddyfile(h.Dispenser)
	return p, err
}

// UnmarshalCaddyfile reads:
//
//	asap_api {
//		bearer  <credential>
//		storage <dir>
//	}
func (p *PublicAPI) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	// Without this, an argument hides the block from NextBlock and both
	// would be dropped without a word.
	if d.NextArg() {
		return d.Errf("asap_api takes no arguments on its first line, got %q; put options in a block", d.Val())
	}
	for d.NextBlock(0) {
		opt := d.Val()
		var err error
		switch opt {
		case "bearer":
			err = oneArg(d, &p.Bearer)
		case "storage":
			err = oneArg(d, &p.Storage)
		default:
			return d.Errf("unknown asap_api option %q", opt)
		}
		if err != nil {
			return d.Errf("asap_api option %s: %v", opt, err)
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*PublicAPI)(nil)
	_ caddy.Validator             = (*PublicAPI)(nil)
	_ caddyhttp.MiddlewareHandler = (*PublicAPI)(nil)
	_ caddyfile.Unmarshaler       = (*PublicAPI)(nil)
)
