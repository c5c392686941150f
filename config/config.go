// Package config is the sidecar's typed configuration: one struct that the
// Caddyfile adapter fills and the JSON config decodes into, with defaults
// and validation whose errors name the option at fault.
package config

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
)

// Defaults for options left out.
const (
	DefaultDelegation    = DelegationRequire
	DefaultDurability    = "strict"
	DefaultFlushInterval = time.Second
	DefaultRetention     = 720 * time.Hour
	DefaultMaxBody       = 10 << 20
	DefaultMaxBatch      = 50
	DefaultChainDepth    = 8
	DefaultTokenSize     = 16 << 10
	DefaultClockSkew     = 30 * time.Second
	DefaultInspectLimit  = 4 << 20
	DefaultHealthEvery   = 10 * time.Second
	DefaultMinSamples    = 20
	// DefaultCheckpointEvery is how often a grown audit log is signed.
	DefaultCheckpointEvery = time.Minute
)

// On/off switches (metering, audit).
const (
	MeteringOn  = "on"
	MeteringOff = "off"
)

// Delegation policies.
const (
	DelegationRequire  = "require"
	DelegationOptional = "optional"
	DelegationOff      = "off"
)

// Scopes a payload type can require.
var Scopes = []string{"task.execute", "task.cancel", "data.read", "data.write"}

// Options configures one asap handler. Each field's JSON name is its
// Caddyfile option's name, except for the repeatable options, which
// collect into plural names: action → actions, alert → alerts.
// caddymodule/testdata/caddyfile_adapt shows every option in both forms.
//
// In JSON, durations are strings ("500ms", "720h", "30d") or integer
// nanoseconds, sizes strings ("16KiB", "10MiB", "1MB") or integer bytes,
// and percentages strings ("99.5%") or numbers. Zero values and absent
// fields take the defaults (ApplyDefaults); the ranges are Validate's.
type Options struct {
	// Agent is the URN of the protected agent (urn:asap:agent:name):
	// calls must be addressed to it and its key signs tokens. Required
	// with delegation require or optional; without it there is no SLA
	// tracking and no audit checkpoint. Caddyfile: agent <urn>.
	Agent string `json:"agent,omitempty"`
	// KeyFile is the path of the agent's Ed25519 private key (PEM
	// PKCS#8 or JWK); it signs delegations and audit checkpoints.
	// Default: a key generated once as <storage>/agent.key. Caddyfile:
	// key <file>.
	KeyFile string `json:"key,omitempty"`
	// PreviousKeys are the key files the agent signed with before a
	// rotation (private or public key, PEM or JWK; only the public half
	// is read). Tokens they signed stay valid until they expire; new
	// tokens and checkpoints are signed with KeyFile. Default: none.
	// Caddyfile: previous_keys <file>..., repeated lines add to the list.
	PreviousKeys []string `json:"previous_keys,omitempty"`
	// Trust lists other issuers whose delegation tokens may root a
	// chain here. Default: none, only the agent itself. Caddyfile:
	// trust <urn> <public key file>, once per issuer.
	Trust []Trust `json:"trust,omitempty"`
	// Delegation is the token policy: require (no token, no call),
	// optional (a call without a token is metered as its sender; a token
	// that is present is checked) or off (the header is ignored).
	// Default: require. Caddyfile: delegation require|optional|off.
	Delegation string `json:"delegation,omitempty"`
	// Actions maps payload types to the scope a token needs to send
	// them (task.execute, task.cancel, data.read, data.write), on top of
	// the built-in mapping of SPEC §3; unmapped types need "*". Default:
	// the built-in mapping only. Caddyfile: action <payload type>
	// <scope>, once per payload type (the last one for a type wins).
	Actions map[string]string `json:"actions,omitempty"`
	// MaxChainDepth is the most links a delegation chain may have, 1..64.
	// Default: 8. Caddyfile: max_chain_depth <n>.
	MaxChainDepth int `json:"max_chain_depth,omitempty"`
	// MaxTokenSize is the largest X-ASAP-Delegation-Token header (the
	// whole chain), in bytes, 256B..1MiB. Default: 16KiB. Caddyfile:
	// max_token_size <size>.
	MaxTokenSize Size `json:"max_token_size,omitempty"`
	// ClockSkew is the tolerance for the token times exp, nbf and iat,
	// 0..10m. Nil means the default, 30s; an explicit 0 means none.
	// Caddyfile: clock_skew <duration>.
	ClockSkew *Duration `json:"clock_skew,omitempty"`
	// Storage is the directory of the Badger database, opened once per
	// process and shared by the handlers naming it. Default: Caddy's
	// data directory + /asap. Caddyfile: storage <dir>.
	Storage string `json:"storage,omitempty"`
	// Durability is strict (an answer reaches the client only once its
	// usage and audit records are on disk; concurrent tasks share one
	// fsync) or relaxed (records are written in the background; the last
	// flush_interval of them can be lost on power loss). Default: strict.
	// Caddyfile: durability strict|relaxed.
	Durability string `json:"durability,omitempty"`
	// Metering is on or off: off records no usage events and no task
	// counters (delegation task counts are still kept). Default: on.
	// Caddyfile: metering on|off.
	Metering string `json:"metering,omitempty"`
	// Audit is on or off: off appends no audit entries. Default: on.
	// Caddyfile: audit on|off.
	Audit string `json:"audit,omitempty"`
	// CheckpointInterval is how often the audit log's checkpoint is
	// signed, when the log grew, 1s..24h. Default: 1m. Caddyfile:
	// checkpoint_interval <duration>.
	CheckpointInterval Duration `json:"checkpoint_interval,omitempty"`
	// FlushInterval is how often relaxed writes are synced to disk,
	// 1ms..1m. It is the database's: handlers sharing a storage directory
	// use the first one's, and a reload keeps the open database's.
	// Default: 1s. Caddyfile: flush_interval <duration>.
	FlushInterval Duration `json:"flush_interval,omitempty"`
	// Retention is how long usage events are kept before they expire, at
	// least 1m; the audit log is never pruned. Default: 720h (30 days).
	// Caddyfile: retention <duration> ("30d" works).
	Retention Duration `json:"retention,omitempty"`
	// SLA overrides the targets of the agent manifest's sla and tunes
	// how the SLA is tracked. Nil: the manifest's targets and default
	// tracking. Caddyfile: sla { ... }.
	SLA *SLA `json:"sla,omitempty"`
	// Alerts are where SLA breach and resolution notifications go
	// besides the log, the audit log and the live streams. Default:
	// none. Caddyfile: alert webhook <url>, once per sink.
	Alerts []Alert `json:"alerts,omitempty"`
	// MaxBody is the largest request body, in bytes after decoding
	// gzip, deflate or br, and the largest WebSocket frame, 1KiB..1GiB.
	// A larger body gets 413, a larger frame closes the socket (1009).
	// Default: 10MiB. Caddyfile: max_body <size>.
	MaxBody Size `json:"max_body,omitempty"`
	// MaxBatch is the most calls in one JSON-RPC batch, 1..1000; a
	// larger batch is refused (-32600, batch_too_large). Default: 50 (the
	// reference's limit). Caddyfile: max_batch <n>.
	MaxBatch int `json:"max_batch,omitempty"`
	// InspectLimit bounds the copy of an agent answer kept for metering,
	// in bytes, 1KiB..256MiB. JSON answers up to this size are held
	// until their records are stored; larger ones are streamed and
	// metered from what fit. Default: 4MiB. Caddyfile: inspect_limit
	// <size>.
	InspectLimit Size `json:"inspect_limit,omitempty"`
	// ASAPVersions are the ASAP-Version transport versions accepted on
	// POST /asap and /asap/stream (default: the reference's 2.1 and 2.2).
	// A request whose ASAP-Version list names none of them is answered
	// -32000 and not forwarded. Unset (null) means the default; an empty
	// list is an error. Caddyfile: asap_versions <version>... (repeated
	// lines add up).
	ASAPVersions []string `json:"asap_versions,omitempty"`
	// DefaultASAPVersion is the version of a request without an
	// ASAP-Version header (default 2.2, the reference's); it must be one of
	// ASAPVersions. Caddyfile: default_asap_version <version>.
	DefaultASAPVersion string `json:"default_asap_version,omitempty"`
	// Fleet joins this sidecar to a fleet through NATS JetStream (SPEC
	// §12): revocations made anywhere apply here, max_tasks counts are
	// shared with the replicas of the agent, and records leave through an
	// outbox. Nil: a sidecar on its own, no NATS needed. Like
	// flush_interval it belongs to the database: handlers sharing a
	// storage directory use the first one's, and a reload keeps the open
	// database's. Caddyfile: fleet { ... }.
	Fleet *Fleet `json:"fleet,omitempty"`
}

// Fleet says how a sidecar reaches its fleet.
type Fleet struct {
	// NATS is the URL of the fleet's NATS server (nats://, tls://), or
	// a comma-separated list of a cluster's. Required. Caddyfile: nats
	// <url>.
	NATS string `json:"nats"`
	// Credentials is a NATS credentials file (.creds: a user JWT and its
	// NKey seed). Default: none. Caddyfile: credentials <file>.
	Credentials string `json:"credentials,omitempty"`
	// Name is how this sidecar shows in NATS and in the collector.
	// Default: the host name. Caddyfile: name <name>.
	Name string `json:"name,omitempty"`
	// OnUnreachable is what a token with max_tasks meets while NATS
	// cannot be reached: reject (the call is refused, code -32059 with
	// data.reason fleet_unavailable, and can be retried) or local
	// (counted by this sidecar alone, so replicas together may allow
	// more). Default: reject. Caddyfile: on_unreachable reject|local.
	OnUnreachable string `json:"on_unreachable,omitempty"`
	// MaxBacklog is how many messages (usage events, revocations,
	// checkpoints) may wait in the outbox while NATS is unreachable,
	// 1000..100000000. At the bound, calls are answered 503
	// (fleet_backlog_full) without reaching the agent until NATS takes
	// some: no task runs unrecorded. Default: 1000000 (about 300 MB).
	// Caddyfile: max_backlog <n>.
	MaxBacklog int64 `json:"max_backlog,omitempty"`
}

// What a limited token meets while the fleet's NATS is unreachable.
const (
	FleetReject = "reject"
	FleetLocal  = "local"
)

// Trust is one trusted delegation issuer (Caddyfile: trust <urn> <file>).
type Trust struct {
	// Agent is the issuer's URN, as tokens name it in iss.
	Agent string `json:"agent"`
	// KeyFile is the path of the issuer's Ed25519 public key (PEM PKIX
	// or JWK).
	KeyFile string `json:"key"`
}

// SLA is the service level the sidecar holds the agent to: the targets
// override the manifest's one by one, and the rest tunes tracking.
type SLA struct {
	// Availability is the least share of successful health checks (a
	// call that cannot reach the agent counts as a failed one), a
	// percentage in (0, 100]. Default: the manifest's. Caddyfile:
	// availability <percent>.
	Availability *Percent `json:"availability,omitempty"`
	// MaxLatencyP95 is the most the 95th percentile of task durations
	// may be, at least 1ms. Default: the manifest's max_latency_p95_ms.
	// Caddyfile: max_latency_p95 <duration>.
	MaxLatencyP95 Duration `json:"max_latency_p95,omitempty"`
	// MaxErrorRate is the most the share of failed tasks may be, a
	// percentage in [0, 100]; 0 is a target, not "unset". Default: the
	// manifest's. Caddyfile: max_error_rate <percent>.
	MaxErrorRate *Percent `json:"max_error_rate,omitempty"`
	// SupportHours is shown with the SLA and not enforced. Default: the
	// manifest's. Caddyfile: support_hours <text>.
	SupportHours string `json:"support_hours,omitempty"`
	// HealthInterval is how often the agent's health is checked,
	// 100ms..1h. Default: 10s. Caddyfile: health_interval <duration>.
	HealthInterval Duration `json:"health_interval,omitempty"`
	// MinSamples is how many samples a window needs before a breach can
	// open, 1..1000000 (so one slow call pages no one). Default: 20.
	// Caddyfile: min_samples <n>.
	MinSamples int `json:"min_samples,omitempty"`
	// HealthURL is an http(s) URL checked instead of the agent's
	// /.well-known/asap/health reached through the upstream. Default:
	// that endpoint. Caddyfile: health_url <url>.
	HealthURL string `json:"health_url,omitempty"`
	// Window is the rolling window breaches are judged on, whole
	// minutes within 1m..6h. Default: 1h. Caddyfile: window <duration>.
	Window Duration `json:"window,omitempty"`
}

// Alert is one alert sink (Caddyfile: alert webhook <url>).
type Alert struct {
	// Webhook is an http(s) URL every sla.breach and sla.resolved
	// notification is POSTed to, retried with backoff.
	Webhook string `json:"webhook,omitempty"`
	// Secret signs each delivery with ASAP-Signature: t=<unix>,v1=<hex
	// of HMAC-SHA256(secret, "<t>.<body>")>, so that the receiver can
	// tell it from a forgery. Placeholders such as {env.ASAP_WEBHOOK_SECRET} are
	// expanded. Default: none (unsigned). Caddyfile: secret <secret>,
	// in the alert's block.
	Secret string `json:"secret,omitempty"`
}

// ApplyDefaults fills every unset option with its default; in JSON config a
// numeric option of 0 counts as unset (the Caddyfile refuses explicit
// zeros where they mean nothing). Storage is left to the caller, which
// knows Caddy's data directory.
func (o *Options) ApplyDefaults() {
	if o.Fleet != nil && o.Fleet.OnUnreachable == "" {
		o.Fleet.OnUnreachable = FleetReject
	}
	if o.Delegation == "" {
		o.Delegation = DefaultDelegation
	}
	if o.Durability == "" {
		o.Durability = DefaultDurability
	}
	if o.Metering == "" {
		o.Metering = MeteringOn
	}
	if o.Audit == "" {
		o.Audit = MeteringOn
	}
	setDur(&o.CheckpointInterval, DefaultCheckpointEvery)
	setDur(&o.FlushInterval, DefaultFlushInterval)
	setDur(&o.Retention, DefaultRetention)
	if o.ClockSkew == nil {
		skew := Duration(DefaultClockSkew)
		o.ClockSkew = &skew
	}
	if o.MaxBody == 0 {
		o.MaxBody = DefaultMaxBody
	}
	if o.MaxBatch == 0 {
		o.MaxBatch = DefaultMaxBatch
	}
	if o.MaxChainDepth == 0 {
		o.MaxChainDepth = DefaultChainDepth
	}
	if o.MaxTokenSize == 0 {
		o.MaxTokenSize = DefaultTokenSize
	}
	if o.InspectLimit == 0 {
		o.InspectLimit = DefaultInspectLimit
	}
	if o.ASAPVersions == nil {
		o.ASAPVersions = protocol.SupportedVersions()
	}
	if o.DefaultASAPVersion == "" {
		o.DefaultASAPVersion = protocol.DefaultVersion
	}
	if o.SLA != nil {
		setDur(&o.SLA.HealthInterval, DefaultHealthEvery)
		if o.SLA.MinSamples == 0 {
			o.SLA.MinSamples = DefaultMinSamples
		}
	}
}

func setDur(d *Duration, def time.Duration) {
	if *d == 0 {
		*d = Duration(def)
	}
}

var agentURN = regexp.MustCompile(`^urn:asap:agent:[a-z0-9-]+(:[a-z0-9-]+)?$`)

// Validate checks every option and returns all problems at once, each
// naming its option.
func (o *Options) Validate() error {
	var errs []error
	bad := func(opt, format string, a ...any) {
		errs = append(errs, fmt.Errorf("asap: option %s: %s", opt, fmt.Sprintf(format, a...)))
	}
	if f := o.Fleet; f != nil {
		if f.NATS == "" {
			bad("fleet nats", "required in a fleet block: the URL of the fleet's NATS (nats://host:4222)")
		}
		for _, u := range strings.Split(f.NATS, ",") {
			if u = strings.TrimSpace(u); u == "" {
				continue
			}
			p, err := url.Parse(u)
			if err != nil || p.Host == "" || !slices.Contains([]string{"nats", "tls", "ws", "wss"}, p.Scheme) {
				bad("fleet nats", "%q is not a NATS URL; use nats://host:port (or tls://, ws://, wss://)", u)
			}
		}
		if f.MaxBacklog != 0 && (f.MaxBacklog < 1000 || f.MaxBacklog > 100_000_000) {
			bad("fleet max_backlog", "%d is out of range; use 1000..100000000 messages", f.MaxBacklog)
		}
		switch f.OnUnreachable {
		case "", FleetReject, FleetLocal:
		default:
			bad("fleet on_unreachable", "%q is not a choice; use reject or local", f.OnUnreachable)
		}
	}
	if o.Agent != "" && !agentURN.MatchString(o.Agent) {
		bad("agent", "%q is not an agent URN (urn:asap:agent:name)", o.Agent)
	}
	for i, f := range o.PreviousKeys {
		if f == "" {
			bad("previous_keys", "entry %d is an empty file name", i+1)
		}
	}
	for i, t := range o.Trust {
		if !agentURN.MatchString(t.Agent) {
			bad("trust", "entry %d: %q is not an agent URN", i+1, t.Agent)
		}
		if t.KeyFile == "" {
			bad("trust", "entry %d (%s): no public key file given", i+1, t.Agent)
		}
	}
	switch o.Delegation {
	case DelegationRequire, DelegationOptional:
		if o.Agent == "" {
			bad("agent", "required with delegation %s: tokens are checked against the agent this sidecar guards (or set delegation off)", o.Delegation)
		}
	case DelegationOff:
	default:
		bad("delegation", "%q is not a policy; use require, optional or off", o.Delegation)
	}
	for pt, scope := range o.Actions {
		if strings.TrimSpace(pt) == "" {
			bad("action", "empty payload type")
		}
		if !validScope(scope) {
			bad("action", "%s: unknown scope %q; use one of %s", pt, scope, strings.Join(Scopes, ", "))
		}
	}
	if o.MaxChainDepth < 1 || o.MaxChainDepth > 64 {
		bad("max_chain_depth", "%d is outside 1..64", o.MaxChainDepth)
	}
	if o.MaxTokenSize < 256 || o.MaxTokenSize > 1<<20 {
		bad("max_token_size", "%d bytes is outside 256B..1MiB", o.MaxTokenSize)
	}
	if o.ClockSkew != nil && (*o.ClockSkew < 0 || o.ClockSkew.Std() > 10*time.Minute) {
		bad("clock_skew", "%s is outside 0..10m", o.ClockSkew.Std())
	}
	switch o.Durability {
	case "strict", "relaxed":
	default:
		bad("durability", "%q is not a mode; use strict or relaxed", o.Durability)
	}
	if o.Metering != MeteringOn && o.Metering != MeteringOff {
		bad("metering", "%q is not a switch; use on or off", o.Metering)
	}
	if o.Audit != MeteringOn && o.Audit != MeteringOff {
		bad("audit", "%q is not a switch; use on or off", o.Audit)
	}
	if o.CheckpointInterval.Std() < time.Second || o.CheckpointInterval.Std() > 24*time.Hour {
		bad("checkpoint_interval", "%s is outside 1s..24h", o.CheckpointInterval.Std())
	}
	if o.FlushInterval.Std() < time.Millisecond || o.FlushInterval.Std() > time.Minute {
		bad("flush_interval", "%s is outside 1ms..1m", o.FlushInterval.Std())
	}
	if o.Retention.Std() < time.Minute {
		bad("retention", "%s is shorter than a minute", o.Retention.Std())
	}
	if o.MaxBody < 1024 || o.MaxBody > 1<<30 {
		bad("max_body", "%d bytes is outside 1KiB..1GiB", o.MaxBody)
	}
	if o.MaxBatch < 1 || o.MaxBatch > 1000 {
		bad("max_batch", "%d is outside 1..1000", o.MaxBatch)
	}
	if o.InspectLimit < 1024 || o.InspectLimit > 256<<20 {
		bad("inspect_limit", "%d bytes is outside 1KiB..256MiB", o.InspectLimit)
	}
	errs = append(errs, o.validateVersions()...)
	if o.SLA != nil {
		errs = append(errs, o.SLA.validate()...)
	}
	for _, a := range o.Alerts {
		u, err := url.Parse(a.Webhook)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("alert", "webhook %q is not an http(s) URL", a.Webhook)
		}
	}
	return errors.Join(errs...)
}

// Versions is the ASAP-Version negotiation the options configure (the
// defaults for what is unset).
func (o *Options) Versions() protocol.Versions {
	v := protocol.Versions{Supported: o.ASAPVersions, Default: o.DefaultASAPVersion}
	if v.Supported == nil {
		v.Supported = protocol.SupportedVersions()
	}
	if v.Default == "" {
		v.Default = protocol.DefaultVersion
	}
	return v
}

func (o *Options) validateVersions() []error {
	var errs []error
	bad := func(opt, format string, a ...any) {
		errs = append(errs, fmt.Errorf("asap: option %s: %s", opt, fmt.Sprintf(format, a...)))
	}
	v := o.Versions()
	if o.ASAPVersions != nil && len(o.ASAPVersions) == 0 {
		bad("asap_versions", "the list is empty; name at least one version, or leave the option out for %s",
			strings.Join(protocol.SupportedVersions(), " "))
		return errs
	}
	for i, s := range v.Supported {
		switch {
		case !protocol.ValidVersion(s):
			bad("asap_versions", "%q is not a version: use printable ASCII without commas or spaces, at most 32 bytes (e.g. 2.2)", s)
		case slices.Index(v.Supported, s) < i:
			bad("asap_versions", "%q is listed twice", s)
		}
	}
	if !slices.Contains(v.Supported, v.Default) {
		bad("default_asap_version", "%q is not one of asap_versions (%s); set default_asap_version to one of them",
			v.Default, strings.Join(v.Supported, " "))
	}
	return errs
}

func (s *SLA) validate() []error {
	var errs []error
	bad := func(opt, format string, a ...any) {
		errs = append(errs, fmt.Errorf("asap: option sla %s: %s", opt, fmt.Sprintf(format, a...)))
	}
	if s.Availability != nil && (*s.Availability <= 0 || *s.Availability > 100) {
		bad("availability", "%v%% is outside (0, 100]", float64(*s.Availability))
	}
	if s.MaxLatencyP95 < 0 || (s.MaxLatencyP95 > 0 && s.MaxLatencyP95.Std() < time.Millisecond) {
		bad("max_latency_p95", "%s must be at least 1ms", s.MaxLatencyP95.Std())
	}
	if s.MaxErrorRate != nil && (*s.MaxErrorRate < 0 || *s.MaxErrorRate > 100) {
		bad("max_error_rate", "%v%% is outside [0, 100]", float64(*s.MaxErrorRate))
	}
	if s.HealthInterval.Std() < 100*time.Millisecond || s.HealthInterval.Std() > time.Hour {
		bad("health_interval", "%s is outside 100ms..1h", s.HealthInterval.Std())
	}
	if s.MinSamples < 1 || s.MinSamples > 1_000_000 {
		bad("min_samples", "%d is outside 1..1000000", s.MinSamples)
	}
	if s.HealthURL != "" {
		if u, err := url.Parse(s.HealthURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("health_url", "%q is not an http(s) URL", s.HealthURL)
		}
	}
	if s.Window != 0 && (s.Window.Std() < time.Minute || s.Window.Std() > 6*time.Hour || s.Window.Std()%time.Minute != 0) {
		bad("window", "%s must be whole minutes within 1m..6h", s.Window.Std())
	}
	return errs
}

func validScope(s string) bool {
	for _, v := range Scopes {
		if s == v {
			return true
		}
	}
	return false
}
