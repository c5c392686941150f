package caddymodule

import (
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/asap-sidecar/asap-sidecar/config"
)

func init() {
	caddy.RegisterModule(new(NATSServerApp))
	httpcaddyfile.RegisterGlobalOption("nats_server", parseNATSServerOption)
}

// natsServers holds the running embedded NATS servers, keyed by listen
// address and store directory. Caddy starts a new config before it
// cleans up the old one, so a reload with the same key shares the server
// (count 1→2→1): the sidecars' connections and JetStream state survive it.
var natsServers = caddy.NewUsagePool()

// natsStores maps each store directory in use to the listen address of
// the server using it. JetStream does not lock its store, and two servers
// writing one store would corrupt it: a second server on a store in use
// is refused.
var natsStores = struct {
	sync.Mutex
	listen map[string]string
}{listen: map[string]string{}}

// DefaultNATSListen is where the embedded NATS server listens unless told
// otherwise: loopback only, as it has no authentication.
const DefaultNATSListen = "127.0.0.1:4222"

// natsReadyTimeout bounds how long Start waits for the server to accept
// connections.
const natsReadyTimeout = 10 * time.Second

// NATSServerApp is the `nats_server` app: an embedded NATS server with
// JetStream, so that a fleet of sidecars (SPEC §12) can be tried from one
// Caddyfile with nothing else installed. It is meant for demos and small
// fleets; production fleets point at their own NATS cluster. It has no
// authentication: keep it on loopback, or on a network only the
// sidecars reach.
//
// Caddyfile: a global option block, nats_server { listen …; store …;
// name …; max_store … }.
type NATSServerApp struct {
	// Listen is the host:port clients connect to. Default
	// 127.0.0.1:4222. Caddyfile: listen <host:port>
	Listen string `json:"listen,omitempty"`
	// Store is the JetStream file store directory. Default: Caddy's
	// data directory + /nats. Caddyfile: store <dir>
	Store string `json:"store,omitempty"`
	// Name is the server name reported to clients and in its logs.
	// Default: the server's generated id. Caddyfile: name <name>
	Name string `json:"name,omitempty"`
	// MaxStore caps the bytes JetStream may keep in Store. Default:
	// NATS's own (most of the free disk). Caddyfile: max_store <size>
	MaxStore config.Size `json:"max_store,omitempty"`

	logger *zap.Logger
	host   string
	port   int
	// key is this config's pool entry, set once Start got it.
	key string
}

// CaddyModule returns the Caddy module information.
func (*NATSServerApp) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "nats_server",
		New: func() caddy.Module { return new(NATSServerApp) },
	}
}

// Provision applies defaults and checks the config; it starts nothing,
// so `caddy validate` never binds the port.
func (a *NATSServerApp) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	if a.Listen == "" {
		a.Listen = DefaultNATSListen
	}
	if a.Store == "" {
		a.Store = filepath.Join(caddy.AppDataDir(), "nats")
	}
	// One spelling per directory, so the pool and the store guard see
	// the same store written two ways as one.
	abs, err := filepath.Abs(a.Store)
	if err != nil {
		return fmt.Errorf("nats_server: option store %q: %v; give an absolute directory", a.Store, err)
	}
	a.Store = abs
	return nil // Caddy calls Validate next
}

// Validate checks the options, naming the one at fault.
func (a *NATSServerApp) Validate() error {
	host, port, err := parseNATSListen(a.Listen)
	if err != nil {
		return fmt.Errorf("nats_server: option listen: %v", err)
	}
	a.host, a.port = host, port
	if a.MaxStore < 0 {
		return fmt.Errorf("nats_server: option max_store: %d is negative; give a size such as 1GiB, or leave it out", a.MaxStore)
	}
	return nil
}

// parseNATSListen reads host:port. The port is required: the sidecars'
// fleet options name it, so a default picked here would only surprise.
func parseNATSListen(s string) (string, int, error) {
	host, p, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, fmt.Errorf("%q is not host:port; write e.g. 127.0.0.1:4222", s)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("%q: port %q is not a number from 1 to 65535; write e.g. 127.0.0.1:4222", s, p)
	}
	return host, port, nil
}

// loopbackHost reports whether host only accepts connections from this
// machine.
func loopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ClientURL is the URL a client in this process connects with, e.g.
// nats://127.0.0.1:4222. A server listening on every interface is
// reached through loopback.
func (a *NATSServerApp) ClientURL() string {
	host := a.host
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "nats://" + net.JoinHostPort(host, strconv.Itoa(a.port))
}

// Start starts the server, or on a reload with the same listen address
// and store shares the one running.
func (a *NATSServerApp) Start() error {
	key := a.Listen + "|" + a.Store
	val, loaded, err := natsServers.LoadOrNew(key, func() (caddy.Destructor, error) {
		return startNATSServer(a)
	})
	if err != nil {
		return err
	}
	a.key = key
	if r := val.(*runningNATS); loaded && (r.name != a.Name || r.maxStore != a.MaxStore) {
		// Restarting would drop every client; say what still applies.
		a.logger.Warn("nats_server name and max_store changes apply when the server starts anew (stop and start Caddy); the running server keeps its own",
			zap.String("running_name", r.name), zap.Int64("running_max_store", int64(r.maxStore)))
	}
	a.logger.Info("nats server ready", zap.String("listen", a.Listen), zap.String("store", a.Store),
		zap.String("client_url", a.ClientURL()), zap.Bool("shared_with_previous_config", loaded))
	return nil
}

// Stop does nothing: the server is let go in Cleanup, after every app
// has stopped, like the database (see App).
func (a *NATSServerApp) Stop() error { return nil }

// Cleanup releases this config's reference; the server shuts down when
// no config uses it any more.
func (a *NATSServerApp) Cleanup() error {
	if a.key == "" {
		return nil
	}
	key := a.key
	a.key = ""
	if _, err := natsServers.Delete(key); err != nil {
		return fmt.Errorf("nats_server: shutting down the server on %s: %w", a.Listen, err)
	}
	return nil
}

// runningNATS is a started server, shut down when its last config lets
// go of it.
type runningNATS struct {
	srv   *server.Server
	store string
	// name and maxStore are what it was started with.
	name     string
	maxStore config.Size
}

// Destruct shuts the server down and waits until it has (JetStream
// flushed, port closed), so a next server may take the port and store.
func (r *runningNATS) Destruct() error {
	r.srv.Shutdown()
	r.srv.WaitForShutdown()
	natsStores.Lock()
	delete(natsStores.listen, r.store)
	natsStores.Unlock()
	return nil
}

func startNATSServer(a *NATSServerApp) (*runningNATS, error) {
	natsStores.Lock()
	defer natsStores.Unlock()
	if other, ok := natsStores.listen[a.Store]; ok {
		return nil, fmt.Errorf("nats_server: store %s is in use by the server on %s, and two servers must not share a JetStream store; "+
			"change store together with listen, or stop and start Caddy to move the server", a.Store, other)
	}
	if !loopbackHost(a.host) {
		a.logger.Warn("nats_server listens beyond loopback and has no authentication: anyone who reaches it can read and change the fleet's streams; "+
			"keep it on loopback or a private network, or run your own NATS cluster",
			zap.String("listen", a.Listen))
	}
	srv, err := server.NewServer(&server.Options{
		Host:              a.host,
		Port:              a.port,
		ServerName:        a.Name,
		JetStream:         true,
		StoreDir:          a.Store,
		JetStreamMaxStore: int64(a.MaxStore),
		// Caddy owns the process's signals.
		NoSigs: true,
	})
	if err != nil {
		return nil, fmt.Errorf("nats_server: configuring the server on %s: %w", a.Listen, err)
	}
	log := &natsLogger{l: a.logger.Named("nats")}
	debug := a.logger.Core().Enabled(zap.DebugLevel)
	srv.SetLoggerV2(log, debug, false, false)
	// Start returns once it listens, or after a fatal error (port in
	// use, store unusable), which the logger keeps.
	srv.Start()
	if msg := log.fatal(); msg != "" {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, fmt.Errorf("nats_server: starting the server on %s (store %s): %s; pick a free address with listen, or fix the store",
			a.Listen, a.Store, msg)
	}
	if !srv.ReadyForConnections(natsReadyTimeout) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, fmt.Errorf("nats_server: the server on %s did not accept connections within %s; see the log above", a.Listen, natsReadyTimeout)
	}
	natsStores.listen[a.Store] = a.Listen
	return &runningNATS{srv: srv, store: a.Store, name: a.Name, maxStore: a.MaxStore}, nil
}

// natsLogger routes the NATS server's log to Caddy's. Fatal errors are
// logged as errors (the process is Caddy's, not NATS's to end) and the
// first is kept for Start to report.
type natsLogger struct {
	l *zap.Logger

	mu        sync.Mutex
	firstFail string
}

func (n *natsLogger) fatal() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.firstFail
}

func (n *natsLogger) Noticef(format string, v ...any) { n.log(zap.InfoLevel, format, v) }
func (n *natsLogger) Warnf(format string, v ...any)   { n.log(zap.WarnLevel, format, v) }
func (n *natsLogger) Errorf(format string, v ...any)  { n.log(zap.ErrorLevel, format, v) }
func (n *natsLogger) Debugf(format string, v ...any)  { n.log(zap.DebugLevel, format, v) }
func (n *natsLogger) Tracef(format string, v ...any)  { n.log(zap.DebugLevel, format, v) }

func (n *natsLogger) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	n.mu.Lock()
	if n.firstFail == "" {
		n.firstFail = msg
	}
	n.mu.Unlock()
	n.l.Error(msg, zap.Bool("fatal", true))
}

func (n *natsLogger) log(level zapcore.Level, format string, v []any) {
	// Formatting is skipped for levels the logger drops.
	if ce := n.l.Check(level, ""); ce != nil {
		ce.Message = fmt.Sprintf(format, v...)
		ce.Write()
	}
}

// parseNATSServerOption reads the global option block:
//
//	nats_server {
//		listen    <host:port>
//		store     <dir>
//		name      <name>
//		max_store <size>
//	}
func parseNATSServerOption(d *caddyfile.Dispenser, existing any) (any, error) {
	if existing != nil {
		return nil, d.Errf("nats_server is given twice; write one block")
	}
	app := new(NATSServerApp)
	d.Next() // option name
	if d.NextArg() {
		return nil, d.Errf("nats_server takes no arguments on its first line, got %q; put options in a block", d.Val())
	}
	for d.NextBlock(0) {
		opt := d.Val()
		var err error
		switch opt {
		case "listen":
			if err = oneArg(d, &app.Listen); err == nil {
				_, _, err = parseNATSListen(app.Listen)
			}
		case "store":
			err = oneArg(d, &app.Store)
		case "name":
			err = oneArg(d, &app.Name)
		case "max_store":
			err = sizeArg(d, &app.MaxStore)
		default:
			return nil, d.Errf("unknown nats_server option %q; use listen, store, name or max_store", opt)
		}
		if err != nil {
			return nil, d.Errf("nats_server option %s: %v", opt, err)
		}
	}
	return httpcaddyfile.App{Name: "nats_server", Value: caddyconfig.JSON(app, nil)}, nil
}

// Interface guards
var (
	_ caddy.App          = (*NATSServerApp)(nil)
	_ caddy.Provisioner  = (*NATSServerApp)(nil)
	_ caddy.Validator    = (*NATSServerApp)(nil)
	_ caddy.CleanerUpper = (*NATSServerApp)(nil)
	_ server.Logger      = (*natsLogger)(nil)
	_ caddy.Destructor   = (*runningNATS)(nil)
)
