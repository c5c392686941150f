// Package fleet connects sidecars through NATS JetStream (SPEC §12): a
// revocation made at one sidecar reaches every other, replicas of one
// agent share max_tasks counts, and records leave each sidecar through an
// outbox written in the task's own transaction. It knows nothing of
// Caddy; the caddymodule glue gives it a database and a ledger.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"go.uber.org/zap"
)

// Names of the JetStream streams, subjects and buckets the fleet uses.
// They are part of the wire contract between sidecars of one fleet.
const (
	RevocationStream  = "ASAP_REVOCATIONS"
	RevocationSubject = "asap.revocations"
	LimitsBucket      = "asap_limits"
)

// Options says how to reach the fleet's NATS.
type Options struct {
	// URL is one NATS URL or a comma-separated list of a cluster's.
	URL string
	// Credentials is a NATS .creds file (JWT and NKey seed); empty for
	// none.
	Credentials string
	// Name is this sidecar's name in NATS connection listings.
	Name string
	// Logger receives connection events.
	Logger *zap.Logger
}

// Client is one connection to the fleet's NATS, shared by everything a
// sidecar does in the fleet. It connects in the background: a sidecar
// starts (and serves tokens without limits) while NATS is down.
type Client struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	logger *zap.Logger

	mu      sync.Mutex
	ready   bool // streams and buckets exist
	limits  jetstream.KeyValue
	seen    lastSeen
	timeout time.Duration
	// keepAfterExpiry is KeepAfterExpiry (shorter in tests).
	keepAfterExpiry time.Duration
}

// ErrUnavailable wraps every failure to reach the fleet's NATS.
var ErrUnavailable = errors.New("fleet: NATS unavailable")

// Connect starts connecting to NATS and returns at once; operations fail
// with ErrUnavailable until the connection is up.
func Connect(o Options) (*Client, error) {
	if o.URL == "" {
		return nil, errors.New("fleet: no NATS URL; set nats in the fleet block")
	}
	logger := o.Logger
	if logger == nil {
		logger = zap.NewNop()
	}
	c := &Client{logger: logger, timeout: 2 * time.Second, keepAfterExpiry: KeepAfterExpiry}
	opts := []nats.Option{
		nats.Name(o.Name),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectBufSize(-1), // publishes while down fail at once; the outbox keeps them
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			logger.Warn("fleet: NATS connection lost; limited tokens follow on_unreachable, records wait in the outbox", zap.Error(err))
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			logger.Warn("fleet: NATS reported an error", zap.Error(err)) // e.g. an authorization violation
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			logger.Info("fleet: NATS connection back", zap.String("server", nc.ConnectedUrlRedacted()))
			// It may be a NATS that lost its store: set up again.
			c.mu.Lock()
			c.ready = false
			c.mu.Unlock()
		}),
	}
	if o.Credentials != "" {
		// Checked now: with retries on, NATS would only fail each attempt
		// in the background.
		if err := checkCredentials(o.Credentials); err != nil {
			return nil, err
		}
		opts = append(opts, nats.UserCredentials(o.Credentials))
	}
	nc, err := nats.Connect(o.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("fleet: connecting to %s: %w", o.URL, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("fleet: %w", err)
	}
	c.nc, c.js = nc, js
	return c, nil
}

// checkCredentials reads a NATS .creds file as nats.UserCredentials will:
// a user JWT and a user NKey seed.
func checkCredentials(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("fleet: credentials: %w", err)
	}
	if jwt, err := nkeys.ParseDecoratedJWT(b); err != nil || jwt == "" || !strings.HasPrefix(jwt, "ey") {
		return fmt.Errorf("fleet: credentials %s hold no user JWT; give the .creds file nsc or your NATS operator made", path)
	}
	if _, err := nkeys.ParseDecoratedUserNKey(b); err != nil {
		return fmt.Errorf("fleet: credentials %s hold no user NKey seed: %v", path, err)
	}
	return nil
}

// Close drops the connection.
func (c *Client) Close() {
	c.nc.Close()
}

// Connected says whether NATS is reachable right now.
func (c *Client) Connected() bool { return c.nc.IsConnected() }

// Ready says whether the fleet's streams and bucket were set up (they are
// on first use, retried until it succeeds).
func (c *Client) Ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ready
}

// setup creates the streams and buckets the fleet uses, once; it is
// retried by every operation until it succeeds, so a fleet whose NATS
// starts after the sidecars needs nothing more.
func (c *Client) setup(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ready {
		return nil
	}
	if !c.nc.IsConnected() {
		return fmt.Errorf("%w: not connected to %s", ErrUnavailable, c.nc.Opts.Url)
	}
	if _, err := c.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        RevocationStream,
		Description: "asap-sidecar revocations: every sidecar applies every one",
		Subjects:    []string{RevocationSubject},
		Storage:     jetstream.FileStorage,
		Duplicates:  10 * time.Minute,
	}); err != nil {
		return fmt.Errorf("%w: creating stream %s: %v", ErrUnavailable, RevocationStream, err)
	}
	if _, err := c.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        UsageStream,
		Description: "asap-sidecar usage events of every sidecar, for the collector",
		Subjects:    []string{UsageSubjectPrefix + ">"},
		Storage:     jetstream.FileStorage,
		Duplicates:  10 * time.Minute,
	}); err != nil {
		return fmt.Errorf("%w: creating stream %s: %v", ErrUnavailable, UsageStream, err)
	}
	if _, err := c.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:              CheckpointStream,
		Description:       "asap-sidecar signed audit checkpoints: the latest of every sidecar, for the collector",
		Subjects:          []string{CheckpointSubjectPrefix + ">"},
		Storage:           jetstream.FileStorage,
		MaxMsgsPerSubject: 1,
		Duplicates:        10 * time.Minute,
	}); err != nil {
		return fmt.Errorf("%w: creating stream %s: %v", ErrUnavailable, CheckpointStream, err)
	}
	kv, err := c.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      LimitsBucket,
		Description: "asap-sidecar max_tasks counts shared by replicas, by token hash",
		History:     1,
		Storage:     jetstream.FileStorage,
		// Counts carry a TTL (the token's expiry); this enables per-key
		// TTLs (NATS 2.11 and later).
		LimitMarkerTTL: time.Minute,
	})
	if err != nil {
		return fmt.Errorf("%w: creating bucket %s: %v", ErrUnavailable, LimitsBucket, err)
	}
	c.limits = kv
	c.ready = true
	return nil
}

// lost notes err from a NATS operation: when it says a stream, bucket or
// consumer is missing (a NATS that lost its store, say a restarted pod
// without a volume, or an operator deleting a stream), the next operation
// sets them up again. It returns err.
func (c *Client) lost(err error) error {
	if errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrBucketNotFound) ||
		errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrNoResponders) {
		c.mu.Lock()
		c.ready = false
		c.mu.Unlock()
	}
	return err
}

// opContext bounds one NATS operation.
func (c *Client) opContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.timeout)
}
