package caddymodule

import (
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
// Every call needs the configured bearer credential or an OAuth2 access
// token; anything else under those paths gets 401 (403 for a token
// without the scope), and other paths go on to the next handler.
type PublicAPI struct {
	// Bearer is the credential callers send as "Authorization: Bearer
	// <credential>". Placeholders such as {env.ASAP_API_TOKEN} are
	// expanded at load. Bearer, OAuth2 or both are required.
	Bearer string `json:"bearer,omitempty"`
	// OAuth2 accepts JWT access tokens from an authorization server.
	OAuth2 *OAuth2 `json:"oauth2,omitempty"`
	// Storage names the database when several asap handlers use
	// different ones.
	Storage string `json:"storage,omitempty"`

	api  *api.Handler
	auth operatorAuth
}

// CaddyModule returns the Caddy module information.
func (*PublicAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.asap_api",
		New: func() caddy.Module { return new(PublicAPI) },
	}
}

// Provision expands the credential, sets up token checking and finds the
// asap app.
func (p *PublicAPI) Provision(ctx caddy.Context) error {
	p.Bearer = caddy.NewReplacer().ReplaceKnown(p.Bearer, "")
	if err := p.auth.provision(ctx, p.Bearer, p.OAuth2); err != nil {
		return err
	}
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

// Cleanup stops the JWKS refresh.
func (p *PublicAPI) Cleanup() error {
	p.auth.cleanup()
	return nil
}

// Validate refuses an anonymous public API.
func (p *PublicAPI) Validate() error {
	if p.OAuth2 != nil && p.Bearer == "" {
		return nil // the oauth2 block was checked in Provision
	}
	if strings.TrimSpace(p.Bearer) == "" {
		return errors.New("asap_api: option bearer or oauth2: a credential is required; the public API is never anonymous (use {env.NAME} to keep it out of the file)")
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
	who, aerr := p.auth.authenticate(r)
	if aerr == nil {
		aerr = p.auth.authorize(r, who)
	}
	if aerr != nil {
		aerr.write(w)
		return nil
	}
	r = r.WithContext(withPrincipal(r.Context(), who))
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
//		oauth2 {
//			jwks_url   <url>
//			key        <public key file>...
//			issuer     <iss>
//			audience   <aud>
//			scope      <scope>
//			refresh    <duration>
//			clock_skew <duration>
//		}
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
		case "oauth2":
			if d.NextArg() {
				return d.Errf("asap_api option oauth2 takes a block, not %q", d.Val())
			}
			if p.OAuth2 == nil {
				p.OAuth2 = new(OAuth2)
			}
			if err := parseOAuth2(d, p.OAuth2); err != nil {
				return err // already names the option
			}
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
	_ caddy.CleanerUpper          = (*PublicAPI)(nil)
	_ caddy.Validator             = (*PublicAPI)(nil)
	_ caddyhttp.MiddlewareHandler = (*PublicAPI)(nil)
	_ caddyfile.Unmarshaler       = (*PublicAPI)(nil)
)
