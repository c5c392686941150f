package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/asap-sidecar/asap-sidecar/config"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("asap", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("asap", httpcaddyfile.Before, "reverse_proxy")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	asap {
//		agent           <urn>
//		key             <private key file>
//		previous_keys   <key file>...
//		trust           <urn> <public key file>
//		delegation      require|optional|off
//		action          <payload type> <scope>
//		max_chain_depth <n>
//		max_token_size  <size>
//		clock_skew      <duration>
//		storage         <dir>
//		durability      strict|relaxed
//		metering        on|off
//		audit           on|off
//		checkpoint_interval <duration>
//		flush_interval  <duration>
//		retention       <duration>
//		sla {
//			availability    <percent>
//			max_latency_p95 <duration>
//			max_error_rate  <percent>
//			support_hours   <text>
//			health_interval <duration>
//			min_samples     <n>
//			health_url      <url>
//			window          <duration>
//		}
//		alert webhook   <url> {
//			secret <secret>
//		}
//		max_body        <size>
//		max_batch       <n>
//		inspect_limit   <size>
//		asap_versions   <version>...
//		default_asap_version <version>
//	}
//
// Values are checked here for form, and then by Validate for range, so
// that `caddy adapt` names the option at fault with its file:line (once
// adapted to JSON the lines are gone), and `caddy validate` of a JSON
// config still names the option.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.Errf("asap takes no arguments on its first line, got %q; put options in a block", d.Val())
	}
	// Where each option was written, so that a value Validate refuses
	// is reported at its file:line: once adapted to JSON, Caddy no
	// longer knows it.
	at := positions{}
	o := &h.Options
	for d.NextBlock(0) {
		opt := d.Val()
		at.note(opt, d)
		var err error
		switch opt {
		case "agent":
			err = oneArg(d, &o.Agent)
		case "key":
			err = oneArg(d, &o.KeyFile)
		case "previous_keys":
			// Repeated lines add to the list.
			ks := d.RemainingArgs()
			if len(ks) == 0 {
				err = argError("missing value: list the key files signed with before the rotation, e.g. previous_keys /etc/asap/agent-2024.key")
			}
			o.PreviousKeys = append(o.PreviousKeys, ks...)
		case "trust":
			var t config.Trust
			if !d.Args(&t.Agent, &t.KeyFile) || d.NextArg() {
				return d.Errf("trust takes <urn> <public key file>")
			}
			o.Trust = append(o.Trust, t)
		case "delegation":
			err = oneArg(d, &o.Delegation)
		case "action":
			var pt, scope string
			if !d.Args(&pt, &scope) || d.NextArg() {
				return d.Errf("action takes <payload type> <scope>")
			}
			if o.Actions == nil {
				o.Actions = map[string]string{}
			}
			o.Actions[pt] = scope
		case "max_chain_depth":
			err = intArg(d, &o.MaxChainDepth)
		case "max_token_size":
			err = sizeArg(d, &o.MaxTokenSize)
		case "clock_skew":
			var skew config.Duration
			if err = durArgZeroOK(d, &skew); err == nil {
				o.ClockSkew = &skew
			}
		case "storage":
			err = oneArg(d, &o.Storage)
		case "durability":
			err = oneArg(d, &o.Durability)
		case "metering":
			err = oneArg(d, &o.Metering)
		case "audit":
			err = oneArg(d, &o.Audit)
		case "checkpoint_interval":
			err = durArg(d, &o.CheckpointInterval)
		case "flush_interval":
			err = durArg(d, &o.FlushInterval)
		case "retention":
			err = durArg(d, &o.Retention)
		case "sla":
			if d.NextArg() {
				return d.Errf("sla takes a block, not %q", d.Val())
			}
			if o.SLA == nil {
				o.SLA = new(config.SLA)
			}
			if err := parseSLA(d, o.SLA, at); err != nil {
				return err // already names the sla option
			}
		case "alert":
			var kind, target string
			if !d.Args(&kind, &target) || d.NextArg() {
				return d.Errf("alert takes webhook <url>")
			}
			if kind != "webhook" {
				return d.Errf("alert: unknown sink %q; use webhook", kind)
			}
			a := config.Alert{Webhook: target}
			for d.NextBlock(1) {
				if d.Val() != "secret" {
					return d.Errf("unknown asap alert option %q; use secret", d.Val())
				}
				if err := oneArg(d, &a.Secret); err != nil {
					return d.Errf("asap option alert secret: %v", err)
				}
			}
			o.Alerts = append(o.Alerts, a)
		case "max_body":
			err = sizeArg(d, &o.MaxBody)
		case "max_batch":
			err = intArg(d, &o.MaxBatch)
		case "inspect_limit":
			err = sizeArg(d, &o.InspectLimit)
		case "asap_versions":
			// Repeated lines add to the list.
			vs := d.RemainingArgs()
			if len(vs) == 0 {
				err = argError("missing value: list the ASAP-Version values to accept, e.g. asap_versions 2.1 2.2")
			}
			o.ASAPVersions = append(o.ASAPVersions, vs...)
		case "default_asap_version":
			err = oneArg(d, &o.DefaultASAPVersion)
		case "fleet":
			if d.NextArg() {
				return d.Errf("fleet takes a block, not %q", d.Val())
			}
			if o.Fleet == nil {
				o.Fleet = new(config.Fleet)
			}
			if err := parseFleet(d, o.Fleet, at); err != nil {
				return err // already names the fleet option
			}
		default:
			return d.Errf("unknown asap option %q", opt)
		}
		if err != nil {
			return d.Errf("asap option %s: %v", opt, err)
		}
	}
	return h.validateAt(at)
}

// positions wrap an error with the file:line of an option ("sla
// availability" for one inside sla).
type positions map[string]func(error) error

func (p positions) note(opt string, d *caddyfile.Dispenser) {
	if _, seen := p[opt]; !seen {
		tok := d.Token()
		p[opt] = func(err error) error { return fmt.Errorf("%w, at %s:%d", err, tok.File, tok.Line) }
	}
}

// validateAt runs Validate on a copy of the options with defaults
// applied (the JSON the adapter writes keeps only what was written), and
// reports each problem with an option written here at that option's
// line. Problems of options left out (agent missing under delegation
// require) have no line: Validate reports them when the config loads.
func (h *Handler) validateAt(at positions) error {
	b, err := json.Marshal(h.Options)
	if err != nil {
		return err
	}
	var o config.Options
	if err := json.Unmarshal(b, &o); err != nil {
		return err
	}
	o.ApplyDefaults()
	verr := o.Validate()
	if verr == nil {
		return nil
	}
	errs := []error{verr}
	if j, ok := verr.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	var out []error
	for _, e := range errs {
		if wrap := at[optionOf(e)]; wrap != nil {
			out = append(out, wrap(e))
		}
	}
	return errors.Join(out...)
}

// optionOf is the option an error of Options.Validate names ("asap:
// option sla window: …" → "sla window").
func optionOf(err error) string {
	rest, ok := strings.CutPrefix(err.Error(), "asap: option ")
	if !ok {
		return ""
	}
	name, _, _ := strings.Cut(rest, ":")
	return name
}

func parseSLA(d *caddyfile.Dispenser, s *config.SLA, at positions) error {
	for d.NextBlock(1) {
		opt := d.Val()
		at.note("sla "+opt, d)
		var err error
		switch opt {
		case "availability":
			err = percentArg(d, &s.Availability)
		case "max_latency_p95":
			err = durArg(d, &s.MaxLatencyP95)
		case "max_error_rate":
			err = percentArg(d, &s.MaxErrorRate)
		case "support_hours":
			err = oneArg(d, &s.SupportHours)
		case "health_interval":
			err = durArg(d, &s.HealthInterval)
		case "min_samples":
			err = intArg(d, &s.MinSamples)
		case "health_url":
			err = oneArg(d, &s.HealthURL)
		case "window":
			err = durArg(d, &s.Window)
		default:
			return d.Errf("unknown asap sla option %q", opt)
		}
		if err != nil {
			return d.Errf("asap option sla %s: %v", opt, err)
		}
	}
	return nil
}

func parseFleet(d *caddyfile.Dispenser, f *config.Fleet, at positions) error {
	for d.NextBlock(1) {
		opt := d.Val()
		at.note("fleet "+opt, d)
		var err error
		switch opt {
		case "nats":
			err = oneArg(d, &f.NATS)
		case "credentials":
			err = oneArg(d, &f.Credentials)
		case "name":
			err = oneArg(d, &f.Name)
		case "on_unreachable":
			err = oneArg(d, &f.OnUnreachable)
		case "max_backlog":
			var n int
			if err = intArg(d, &n); err == nil {
				f.MaxBacklog = int64(n)
			}
		default:
			return d.Errf("unknown asap fleet option %q; use nats, credentials, name, on_unreachable or max_backlog", opt)
		}
		if err != nil {
			return d.Errf("asap option fleet %s: %v", opt, err)
		}
	}
	return nil
}

type argError string

func (e argError) Error() string { return string(e) }

func oneArg(d *caddyfile.Dispenser, dst *string) error {
	if !d.NextArg() {
		return argError("missing value")
	}
	*dst = d.Val()
	if d.NextArg() {
		return argError("takes one value, got another: " + strconv.Quote(d.Val()))
	}
	return nil
}

// The numeric options below must be positive: 0 would silently mean "the
// default" in the config, so an explicit 0 is refused here.
const notPositive = argError("must be greater than 0 (leave the option out for the default)")

func intArg(d *caddyfile.Dispenser, dst *int) error {
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return argError(strconv.Quote(s) + " is not a whole number")
	}
	if n <= 0 {
		return notPositive
	}
	*dst = n
	return nil
}

func durArg(d *caddyfile.Dispenser, dst *config.Duration) error {
	if err := durArgZeroOK(d, dst); err != nil {
		return err
	}
	if *dst <= 0 {
		return notPositive
	}
	return nil
}

func durArgZeroOK(d *caddyfile.Dispenser, dst *config.Duration) error {
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	v, err := config.ParseDuration(s)
	if err != nil {
		return err
	}
	*dst = config.Duration(v)
	return nil
}

func sizeArg(d *caddyfile.Dispenser, dst *config.Size) error {
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	v, err := config.ParseSize(s)
	if err != nil {
		return err
	}
	if v <= 0 {
		return notPositive
	}
	*dst = v
	return nil
}

func percentArg(d *caddyfile.Dispenser, dst **config.Percent) error {
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	v, err := config.ParsePercent(s)
	if err != nil {
		return err
	}
	*dst = &v
	return nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
