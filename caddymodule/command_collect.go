package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/fleet"
	"github.com/asap-sidecar/asap-sidecar/config"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

// collectBearerEnv is where --bearer is read from when the flag is not
// given, so that the credential need not show in process listings.
const collectBearerEnv = "ASAP_COLLECTOR_BEARER"

func collectCommand() *cobra.Command {
	return command(cobra.Command{
		Use:   "collect --nats URL --db DIR --listen ADDR [--bearer TOKEN]",
		Short: "Collect the usage and audit checkpoints of a whole fleet and serve them",
		Long: `
Runs the fleet collector (SPEC §12): it reads the usage events every
sidecar of the fleet publishes to the JetStream stream ASAP_USAGE, and the
latest signed audit checkpoint of each from ASAP_CHECKPOINTS, through
durable consumers (--durable) into its own database (--db), and serves on
--listen:

  GET  /usage, /usage/summary, /usage/aggregate, ...   the Usage API, with
       the same routes and answers as a sidecar's, over the whole fleet
  GET  /fleet/checkpoints   the latest checkpoint of every sidecar: origin,
       name, agent, size, signed_at, the signed note and its verifier key
  GET  /fleet/status        events ingested, duplicates dropped, messages
       pending at the consumer, time of the last message

Delivery is at least once and storing is idempotent: an event is
deduplicated on (sidecar, agent, consumer, envelope id) in the transaction
that stores it, and acked once that transaction is on disk, so a
redelivered or republished event counts once, while the same envelope id
executed by two replicas counts twice. While NATS is away the collector
waits and resumes where its durable consumer stands.

Every request needs 'Authorization: Bearer TOKEN' when --bearer (or the
environment variable ASAP_COLLECTOR_BEARER) is set; listening on anything
but a loopback address requires it. SIGINT or SIGTERM stops the collector
gracefully.`,
		Example: `  asap-caddy asap collect --nats nats://127.0.0.1:4222 --db /var/lib/asap-collector --listen 127.0.0.1:9180
  ASAP_COLLECTOR_BEARER=$(cat /etc/asap/collector.token) asap-caddy asap collect --nats nats://nats.internal:4222 \
      --credentials /etc/asap/collector.creds --db /var/lib/asap-collector --listen :9180`,
		Args: cobra.NoArgs,
	}, cmdCollect, func(fs *pflag.FlagSet) {
		fs.String("nats", "", "URL of the fleet's NATS (nats://, tls://), or a comma-separated list (required)")
		fs.String("credentials", "", "NATS credentials file (.creds)")
		fs.String("db", "", "the collector's own storage directory (required; not a sidecar's)")
		fs.String("listen", "127.0.0.1:9180", "address to serve the Usage API and /fleet/... on")
		fs.String("bearer", "", "require this bearer credential on every request (default: $"+collectBearerEnv+")")
		fs.String("durable", fleet.DefaultDurable, "name of the durable JetStream consumers")
		fs.String("retention", "", "keep usage events this long (e.g. 90d; default: forever)")
		fs.String("name", "", "name in NATS connection listings (default: the host name)")
	})
}

// collectConfig is what the collect command's flags say.
type collectConfig struct {
	nats, credentials, db, listen, bearer, durable, name string
	retention                                            time.Duration
}

// collectFlags reads and checks the collect command's flags.
func collectFlags(fl caddycmd.Flags) (collectConfig, error) {
	c := collectConfig{
		nats: strings.TrimSpace(fl.String("nats")), credentials: fl.String("credentials"), db: fl.String("db"),
		listen: fl.String("listen"), bearer: fl.String("bearer"), durable: fl.String("durable"), name: fl.String("name"),
	}
	if c.bearer == "" {
		c.bearer = os.Getenv(collectBearerEnv)
	}
	switch {
	case c.nats == "":
		return c, errors.New("--nats is required: give the URL of the fleet's NATS, e.g. --nats nats://127.0.0.1:4222")
	case c.db == "":
		return c, errors.New("--db is required: give a directory for the collector's own database (not a sidecar's)")
	case c.durable == "" || strings.ContainsAny(c.durable, ". *>\t"):
		return c, fmt.Errorf("--durable %q: a consumer name must be non-empty, without dots, spaces, * or >", c.durable)
	case c.bearer != "" && len(c.bearer) < 16:
		return c, errors.New("--bearer: use a credential of at least 16 characters")
	}
	if r := fl.String("retention"); r != "" {
		d, err := config.ParseDuration(r)
		if err != nil || d < 0 {
			return c, fmt.Errorf("--retention %q: give a duration such as 720h or 90d", r)
		}
		c.retention = d
	}
	loopback, err := loopbackAddress(c.listen)
	if err != nil {
		return c, fmt.Errorf("--listen %q: %v; give HOST:PORT, e.g. 127.0.0.1:9180", c.listen, err)
	}
	if !loopback && c.bearer == "" {
		return c, fmt.Errorf("--listen %s is reachable from other hosts: set --bearer (or $%s) to require a credential, or listen on 127.0.0.1", c.listen, collectBearerEnv)
	}
	return c, nil
}

// loopbackAddress says whether addr (HOST:PORT) listens on loopback only.
func loopbackAddress(addr string) (bool, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false, err
	}
	if host == "localhost" {
		return true, nil
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback(), nil
}

func cmdCollect(fl caddycmd.Flags) (int, error) {
	c, err := collectFlags(fl)
	if err != nil {
		return exitFailure, err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return status(runCollect(ctx, c, caddy.Log().Named("asap.collect"), nil))
}

// runCollect runs the collector and its HTTP server until ctx ends, then
// stops both gracefully. ready, when set, hears the address it listens on.
func runCollect(ctx context.Context, c collectConfig, logger *zap.Logger, ready func(addr string)) error {
	db, err := storage.Open(storage.Options{Dir: c.db, Logger: logger})
	if err != nil {
		return fmt.Errorf("--db %s: %w (is another collector or a sidecar using it?)", c.db, err)
	}
	defer db.Close()
	name := c.name
	if name == "" {
		name, _ = os.Hostname()
	}
	client, err := fleet.Connect(fleet.Options{URL: c.nats, Credentials: c.credentials, Name: "asap-collector " + name, Logger: logger})
	if err != nil {
		return fmt.Errorf("--nats: %w", err)
	}
	defer client.Close()
	k, err := fleet.NewCollector(client, db, fleet.CollectorOptions{Durable: c.durable, Retention: c.retention, Logger: logger})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", c.listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	srv := &http.Server{Handler: collectorHandler(k, c.bearer), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	runCtx, cancel := context.WithCancel(ctx)
	collected := make(chan struct{})
	go func() { defer close(collected); k.Run(runCtx) }()
	logger.Info("collecting the fleet's usage and checkpoints", zap.String("nats", c.nats), zap.String("db", c.db),
		zap.String("listen", ln.Addr().String()), zap.String("durable", c.durable), zap.Bool("bearer", c.bearer != ""))
	if ready != nil {
		ready(ln.Addr().String())
	}
	select {
	case <-ctx.Done():
		err = nil
	case err = <-served:
		err = fmt.Errorf("serving on %s: %w", c.listen, err)
	}
	shutCtx, shutCancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer shutCancel()
	if serr := srv.Shutdown(shutCtx); serr != nil {
		logger.Warn("stopping the HTTP server", zap.Error(serr))
	}
	cancel()
	<-collected
	st := k.Status(shutCtx)
	logger.Info("collector stopped", zap.Uint64("ingested", st.Ingested), zap.Uint64("duplicates", st.Duplicates))
	return err
}
