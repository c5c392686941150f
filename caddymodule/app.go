package caddymodule

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/audit"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
	"github.com/asap-sidecar/asap-sidecar/config"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

func init() {
	caddy.RegisterModule(new(App))
}

// databases holds one open Badger database per directory for the whole
// process. Caddy provisions a new config before it stops the old one, so
// during a reload both reference the same entry (count 1→2→1) and the
// database is never closed and reopened, nor locked twice.
var databases = caddy.NewUsagePool()

// processStart is when this process loaded the module; /asap/status
// reports uptime from it, so reloads do not reset it.
var processStart = time.Now()

// App is the `asap` app: it owns the storage handles the asap handlers
// use. It opens them in Start, never in Provision, so `caddy validate`
// never touches (or waits for the lock of) a running sidecar's database.
// It lets go of them in Cleanup, not Stop: Caddy stops apps in no fixed
// order, and the HTTP app's Stop is where in-flight requests drain, so the
// database must outlive every app's Stop. Cleanup runs after all of them.
type App struct {
	logger *zap.Logger

	mu     sync.Mutex
	stores map[string]*Store
	// agents are the runtimes of this config's handlers, in provision order.
	agents []*agentRuntime
	// opened are the pool entries this config holds, released in Cleanup.
	opened []string
	// stopLoops ends the background loops (checkpoints) of this config.
	stopLoops chan struct{}
	loops     sync.WaitGroup
}

// CaddyModule returns the Caddy module information.
func (*App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "asap",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision sets up the app.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	a.stores = make(map[string]*Store)
	return nil
}

// Store is a handler's reference to a database that the app opens in
// Start. Handlers are provisioned before apps start (and Caddy starts apps
// in no fixed order), so a request can arrive before the database is open:
// the open database is only reached through Wait, which covers that
// window, and is passed from there to the steps that use it.
type Store struct {
	dir    string
	flush  time.Duration
	fleet  *config.Fleet // the first handler's with a fleet block
	ready  chan struct{}
	err    error
	opened *database // set before ready is closed
}

// database is what one open database brings, kept across reloads.
type database struct {
	db *storage.DB
	// calls holds the envelope ids of calls between check and commit.
	calls inFlight
	// ledger holds revocations and per-token task counts.
	ledger *delegation.Ledger
	// audit is the database's audit log.
	audit *audit.Log
	// slas are the SLA trackers of the agents using the database.
	slas trackers
	// agentKey signs when a handler configures no key: generated once
	// and kept beside the database.
	agentKey ed25519.PrivateKey
	// openedAt is when the process opened the database.
	openedAt time.Time
	// fleet is the database's fleet membership; nil outside fleet mode.
	fleet *fleetLink
}

// ErrStoreUnavailable is returned by Wait when the database did not open.
var ErrStoreUnavailable = errors.New("asap: storage is not available")

// Wait returns the database once the app has opened it, waiting at most
// d (or until ctx ends) while it is being opened.
func (s *Store) Wait(ctx context.Context, d time.Duration) (*database, error) {
	select {
	case <-s.ready:
		return s.dbOrErr()
	default:
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-s.ready:
		return s.dbOrErr()
	case <-t.C:
		return nil, ErrStoreUnavailable
	case <-ctx.Done():
		return nil, ErrStoreUnavailable
	}
}

func (s *Store) dbOrErr() (*database, error) {
	if s.err != nil {
		return nil, s.err
	}
	return s.opened, nil
}

// Opened is the database if it is open already, without waiting (for the
// background loops and the SLA tracker, which have nothing to do before).
func (s *Store) Opened() *database {
	select {
	case <-s.ready:
		return s.opened
	default:
		return nil
	}
}

// Dir is the database directory.
func (s *Store) Dir() string { return s.dir }

// store returns the shared reference for dir, registering it for Start.
func (a *App) store(dir string, flush time.Duration, fleet *config.Fleet) *Store {
	a.mu.Lock()
	defer a.mu.Unlock()
	if s, ok := a.stores[dir]; ok {
		if s.fleet == nil {
			s.fleet = fleet
		}
		return s
	}
	s := &Store{dir: dir, flush: flush, fleet: fleet, ready: make(chan struct{})}
	a.stores[dir] = s
	return s
}

// agent creates the runtime of the agent a handler protects, with the
// database reference it uses; the app runs its loops from Start.
func (a *App) agent(opts config.Options, logger *zap.Logger) (*agentRuntime, error) {
	rt, err := newAgentRuntime(opts, a.store(opts.Storage, opts.FlushInterval.Std(), opts.Fleet), logger)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	a.agents = append(a.agents, rt)
	a.mu.Unlock()
	return rt, nil
}

type openDB struct{ *database }

// Destruct closes the database once the last config using it is gone,
// after the SLA trackers have stored what they hold.
func (o openDB) Destruct() error {
	if o.fleet != nil {
		o.fleet.stop()
	}
	return errors.Join(o.slas.closeAll(), o.db.Close())
}

// openDatabase opens dir's database and what goes with it. keyless says
// some handler on it has no key option and so signs with the generated
// agent key: only then is a newly generated key worth a log line.
func openDatabase(dir string, flush time.Duration, logger *zap.Logger, keyless bool) (*database, error) {
	db, err := storage.Open(storage.Options{Dir: dir, Logger: logger.Named("storage"), FlushInterval: flush,
		Observer: newStorageObserver(dir)})
	if err != nil {
		return nil, err
	}
	ledger, err := delegation.OpenLedger(db)
	if err != nil {
		db.Close()
		return nil, err
	}
	key, generated, err := defaultAgentKey(dir)
	if err != nil {
		db.Close()
		return nil, err
	}
	if generated && keyless {
		logger.Info("generated an agent key for handlers without a key option; back it up, or set key",
			zap.String("file", filepath.Join(dir, agentKeyFile)))
	}
	return &database{db: db, ledger: ledger, audit: audit.New(db), agentKey: key, openedAt: time.Now()}, nil
}

// agentKeyFile is the generated key's name inside the storage directory.
const agentKeyFile = "agent.key"

func defaultAgentKey(dir string) (ed25519.PrivateKey, bool, error) {
	path := filepath.Join(dir, agentKeyFile)
	if key, err := delegation.LoadPrivateKey(path); err == nil {
		return key, false, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, fmt.Errorf("asap: reading %s: %w", path, err)
	}
	key, err := delegation.GenerateKey()
	if err != nil {
		return nil, false, err
	}
	pemBytes, err := delegation.PrivatePEM(key)
	if err != nil {
		return nil, false, err
	}
	if err := os.WriteFile(path, pemBytes, 0o600); err != nil {
		return nil, false, fmt.Errorf("asap: writing %s: %w", path, err)
	}
	return key, true, nil
}

// Start opens (or, on reload, shares) every database a handler asked for.
func (a *App) Start() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, dir := range a.sortedDirs() {
		s := a.stores[dir]
		val, loaded, err := databases.LoadOrNew(dir, func() (caddy.Destructor, error) {
			d, err := openDatabase(dir, s.flush, a.logger, a.keyless(s))
			if err != nil {
				return nil, err
			}
			if s.fleet != nil {
				if d.fleet, err = startFleet(d, *s.fleet, a.logger); err != nil {
					d.db.Close()
					return nil, err
				}
			}
			return openDB{d}, nil
		})
		if err != nil {
			a.abortStart(err)
			return fmt.Errorf("asap: opening storage %s: %w", dir, err)
		}
		a.opened = append(a.opened, dir)
		s.opened = val.(openDB).database
		if f := s.opened.fleet; f != nil {
			agent := a.auditingAgent(s)
			f.auditAgent.Store(&agent)
		}
		if loaded && (s.fleet == nil) != (s.opened.fleet == nil) {
			a.logger.Warn("fleet block added or removed on reload: the open database keeps its fleet membership until the sidecar restarts", zap.String("dir", dir))
		}
		close(s.ready)
		a.logger.Info("storage ready", zap.String("dir", dir), zap.Bool("shared_with_previous_config", loaded))
	}
	a.startLoops()
	return nil
}

// startLoops starts each named agent's SLA loop (health checks, manifest)
// and one checkpoint signer per database, run by the first agent that
// audits it under a name.
func (a *App) startLoops() {
	a.stopLoops = make(chan struct{})
	seen := map[*Store]bool{}
	for _, rt := range a.agents {
		if rt.Agent != "" {
			// Opened now, not by the loop, so the agent's SLA metrics
			// are there from the first scrape.
			rt.slaTracker(rt.store.Opened())
			a.loops.Add(1)
			go func(rt *agentRuntime) {
				defer a.loops.Done()
				rt.slaLoop(a.stopLoops)
			}(rt)
		}
		if seen[rt.store] || !rt.audit || rt.Agent == "" {
			continue
		}
		seen[rt.store] = true
		a.loops.Add(1)
		go func(rt *agentRuntime) {
			defer a.loops.Done()
			t := time.NewTicker(rt.CheckpointInterval.Std())
			defer t.Stop()
			rt.checkpointLoop(a.stopLoops, t.C, rt.store.Opened())
		}(rt)
	}
}

// auditingAgent is the first agent on s that keeps an audit log: its log
// records the revocations applied from the fleet. "" when none does.
func (a *App) auditingAgent(s *Store) string {
	for _, rt := range a.agents {
		if rt.store == s && rt.audit && rt.Agent != "" {
			return rt.Agent
		}
	}
	return ""
}

// keyless reports whether a handler using s has no key option.
func (a *App) keyless(s *Store) bool {
	for _, rt := range a.agents {
		if rt.store == s && rt.signKey == nil {
			return true
		}
	}
	return false
}

// abortStart gives back what a failed Start took and fails every waiter.
func (a *App) abortStart(cause error) {
	for _, d := range a.opened {
		_, _ = databases.Delete(d)
	}
	a.opened = nil
	for _, s := range a.stores {
		s.opened, s.err = nil, fmt.Errorf("%w: %v", ErrStoreUnavailable, cause)
		select {
		case <-s.ready:
		default:
			close(s.ready)
		}
	}
}

// Stop does nothing: see Cleanup.
func (a *App) Stop() error { return nil }

// Cleanup releases this config's database references once every app has
// stopped (in-flight requests included); a database closes when no config
// uses it any more.
func (a *App) Cleanup() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stopLoops != nil {
		close(a.stopLoops)
		a.loops.Wait()
		a.stopLoops = nil
	}
	var errs []error
	for _, dir := range a.opened {
		if _, err := databases.Delete(dir); err != nil {
			errs = append(errs, fmt.Errorf("asap: closing storage %s: %w", dir, err))
		}
	}
	a.opened = nil
	return errors.Join(errs...)
}

func (a *App) sortedDirs() []string {
	dirs := make([]string, 0, len(a.stores))
	for d := range a.stores {
		dirs = append(dirs, d)
	}
	sort.Strings(dirs)
	return dirs
}

// apiAgent is the agent an API request is about: the one database's
// first agent when there is one database, else the first of the one named
// by want (a storage directory). It returns once that database is open,
// with it.
func (a *App) apiAgent(ctx context.Context, want string) (*agentRuntime, *database, error) {
	var chosen *agentRuntime
	dirs := map[string]bool{}
	for _, rt := range a.agentList() {
		dirs[rt.Storage] = true
		if chosen == nil && (want == "" || want == rt.Storage) {
			chosen = rt
		}
	}
	if chosen == nil || (want == "" && len(dirs) > 1) {
		names := make([]string, 0, len(dirs))
		for d := range dirs {
			names = append(names, d)
		}
		sort.Strings(names)
		return nil, nil, caddy.APIError{HTTPStatus: http.StatusBadRequest,
			Message: fmt.Sprintf("name the database with ?storage=DIR; configured: %s", strings.Join(names, ", "))}
	}
	d, err := chosen.store.Wait(ctx, storeWait)
	if err != nil {
		return nil, nil, caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: err, Message: "storage not available"}
	}
	return chosen, d, nil
}

func (a *App) agentList() []*agentRuntime {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]*agentRuntime(nil), a.agents...)
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
