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

	api  *api.Handler
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
	appIface, err := ctx.App("asap")
	if err != nil {
		return err
	}
	app := appIface.(*App)
	p.api = api.NewHandler(api.PublicMount, func(r *http.Request) (*api.Services, error) {
		return app.services(r.Context(), p.Storage)
	})
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

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (p *PublicAPI) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if !p.api.Owns(r.URL.Path) {
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
	p.api.ServeHTTP(w, r)
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
