package caddymodule

import (
	"crypto/ed25519"
	"fmt"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/sla"
	"github.com/asap-sidecar/asap-sidecar/config"
)

// agentRuntime is what one protected agent needs beyond a single request:
// its keys and token verifier, its SLA tracker, the loops that check its
// health, read its manifest and sign audit checkpoints, and its counters.
// The asap app owns it — a handler gets its runtime from the app in
// Provision, as the ACME handler gets its CA from the pki app — and runs
// its loops between Start and Cleanup. Nothing in it points back at a
// handler or at the app.
type agentRuntime struct {
	// Options are the handler's, defaults applied; read-only.
	config.Options
	logger *zap.Logger
	store  *Store
	audit  bool

	signKey      ed25519.PrivateKey  // the key option; nil: the generated key
	previousKeys []ed25519.PublicKey // the previous_keys option
	verifier     *delegation.Verifier
	verifierOnce sync.Once

	auditKeysOnce sync.Once
	auditKeys     *auditKeys

	// upstream is the route to the agent, known from the first request.
	upstream    atomic.Pointer[upstream]
	manifestSLA atomic.Pointer[sla.Definition]
	trackerRef  atomic.Pointer[sla.Tracker]
	trackerMu   sync.Mutex
	// rejected counts requests answered without reaching the agent.
	rejected atomic.Uint64
	// probes holds the last health check and manifest fetch.
	probes *probes
	// rejections count refusals by reason, for Prometheus.
	rejections *rejectionCounters
}

// sharedLinkCache outlives config reloads: entries record the key they
// verified with, so a reload that changes keys cannot reuse them wrongly.
var sharedLinkCache = delegation.NewLinkCache(delegation.DefaultCacheSize)

// newAgentRuntime loads the keys the options name and builds the token
// verifier. It runs in Provision, so `caddy validate` catches unreadable
// keys; it opens nothing else.
func newAgentRuntime(opts config.Options, store *Store, logger *zap.Logger) (*agentRuntime, error) {
	rt := &agentRuntime{Options: opts, logger: logger, store: store, audit: opts.Audit != config.MeteringOff,
		probes: newProbes(), rejections: newRejectionCounters(opts.Agent)}
	trusted := map[string]ed25519.PublicKey{}
	also := map[string][]ed25519.PublicKey{}
	if opts.KeyFile != "" {
		key, err := delegation.LoadPrivateKey(opts.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("asap: option key: %w", err)
		}
		rt.signKey = key
		if opts.Agent != "" {
			trusted[opts.Agent] = key.Public().(ed25519.PublicKey)
		}
	}
	for _, f := range opts.PreviousKeys {
		pub, err := delegation.LoadPublicKey(f)
		if err != nil {
			return nil, fmt.Errorf("asap: option previous_keys %s: %w", f, err)
		}
		rt.previousKeys = append(rt.previousKeys, pub)
		if opts.Agent != "" {
			also[opts.Agent] = append(also[opts.Agent], pub)
		}
	}
	for _, t := range opts.Trust {
		pub, err := delegation.LoadPublicKey(t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("asap: option trust %s: %w", t.Agent, err)
		}
		// A second key for a URN (the agent's own, or a trust line
		// repeated for a partner's rotation) is added, never replaces.
		if _, ok := trusted[t.Agent]; ok || t.Agent == opts.Agent {
			also[t.Agent] = append(also[t.Agent], pub)
		} else {
			trusted[t.Agent] = pub
		}
	}
	rt.verifier = &delegation.Verifier{
		Self:        opts.Agent,
		Trusted:     trusted,
		AlsoTrusted: also,
		MaxDepth:    opts.MaxChainDepth,
		MaxSize:     int(opts.MaxTokenSize),
		Skew:        opts.ClockSkew.Std(),
	}
	rt.verifier.UseCache(sharedLinkCache)
	return rt, nil
}

// usage is the metering store of d with the agent's retention.
func (rt *agentRuntime) usage(d *database) *metering.Store {
	return metering.New(d.db, rt.Retention.Std())
}
