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

// Options configures one asap handler. The JSON names are the Caddyfile's
// option names.
type Options struct {
	// Agent is the URN of the protected agent.
	Agent string `json:"agent,omitempty"`
	// KeyFile is the agent's Ed25519 private key (PEM PKCS#8 or JWK); it
	// signs delegations and audit checkpoints.
	KeyFile string `json:"key,omitempty"`
	// Trust lists other issuers whose delegation tokens are accepted.
	Trust []Trust `json:"trust,omitempty"`
	// Delegation is the token policy: require, optional or off.
	Delegation string `json:"delegation,omitempty"`
	// Actions maps payload types to the scope they need, on top of the
	// built-in mapping.
	Actions map[string]string `json:"actions,omitempty"`
	// MaxChainDepth bounds delegation chains (links).
	MaxChainDepth int `json:"max_chain_depth,omitempty"`
	// MaxTokenSize bounds the delegation header.
	MaxTokenSize Size `json:"max_token_size,omitempty"`
	// ClockSkew is the tolerance for token times (nil: the default; 0 is
	// a valid choice).
	ClockSkew *Duration `json:"clock_skew,omitempty"`
	// Storage is the Badger directory (default: Caddy's data dir + /asap).
	Storage string `json:"storage,omitempty"`
	// Durability is strict or relaxed.
	Durability string `json:"durability,omitempty"`
	// Metering is on (default) or off: off keeps no usage events and no
	// task counters.
	Metering string `json:"metering,omitempty"`
	// Audit is on (default) or off: off appends no audit entries.
	Audit string `json:"audit,omitempty"`
	// CheckpointInterval is how often the audit log's checkpoint is
	// signed (when it grew).
	CheckpointInterval Duration `json:"checkpoint_interval,omitempty"`
	// FlushInterval is how often relaxed writes reach disk.
	FlushInterval Duration `json:"flush_interval,omitempty"`
	// Retention is how long usage records are kept.
	Retention Duration `json:"retention,omitempty"`
	// SLA overrides the agent manifest's SLA.
	SLA *SLA `json:"sla,omitempty"`
	// Alerts are the SLA alert sinks beyond the log.
	Alerts []Alert `json:"alerts,omitempty"`
	// MaxBody bounds request bodies; larger ones get 413.
	MaxBody Size `json:"max_body,omitempty"`
	// MaxBatch bounds JSON-RPC batches.
	MaxBatch int `json:"max_batch,omitempty"`
	// InspectLimit bounds the copy of an agent answer kept for metering.
	// JSON answers up to this size are held until their records are
	// stored; larger ones are streamed and metered from what fit.
	InspectLimit Size `json:"inspect_limit,omitempty"`
	// ASAPVersions are the ASAP-Version transport versions accepted on
	// POST /asap and /asap/stream (default: the reference's 2.1 and 2.2).
	// A request whose ASAP-Version list names none of them is answered
	// -32000 and not forwarded. Unset (null) means the default; an empty
	// list is an error.
	ASAPVersions []string `json:"asap_versions,omitempty"`
	// DefaultASAPVersion is the version of a request without an
	// ASAP-Version header (default 2.2, the reference's); it must be one of
	// ASAPVersions.
	DefaultASAPVersion string `json:"default_asap_version,omitempty"`
}

// Trust is one trusted delegation issuer.
type Trust struct {
	Agent   string `json:"agent"`
	KeyFile string `json:"key"`
}

// SLA is the service level the sidecar holds the agent to.
type SLA struct {
	Availability   *Percent `json:"availability,omitempty"`
	MaxLatencyP95  Duration `json:"max_latency_p95,omitempty"`
	MaxErrorRate   *Percent `json:"max_error_rate,omitempty"`
	SupportHours   string   `json:"support_hours,omitempty"`
	HealthInterval Duration `json:"health_interval,omitempty"`
	MinSamples     int      `json:"min_samples,omitempty"`
	// HealthURL is checked instead of the agent's health endpoint reached
	// through the upstream.
	HealthURL string `json:"health_url,omitempty"`
	// Window is the rolling window breaches are judged on (default 1h).
	Window Duration `json:"window,omitempty"`
}

// Alert is one alert sink.
type Alert struct {
	Webhook string `json:"webhook,omitempty"`
}

// ApplyDefaults fills every unset option with its default; in JSON config a
// numeric option of 0 counts as unset (the Caddyfile refuses explicit
// zeros where they mean nothing). Storage is left to the caller, which
// knows Caddy's data directory.
func (o *Options) ApplyDefaults() {
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
	if o.Agent != "" && !agentURN.MatchString(o.Agent) {
		bad("agent", "%q is not an agent URN (urn:asap:agent:name)", o.Agent)
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
