package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

// DefaultDurable is the collector's durable consumer name on both streams.
const DefaultDurable = "asap-collector"

// CollectorOptions tune a Collector. Zero values take the defaults.
type CollectorOptions struct {
	// Durable names the collector's durable consumers (one on
	// ASAP_USAGE, one on ASAP_CHECKPOINTS). Collectors sharing a name
	// share the work; a new name reads both streams from the start.
	// Default: DefaultDurable.
	Durable string
	// Retention is how long usage events are kept (0: forever).
	Retention time.Duration
	// Batch is how many messages at most go into one Badger transaction.
	// Default 256.
	Batch int
	// AckWait is how long NATS waits for an ack before redelivering.
	// Default 30s.
	AckWait time.Duration
	// Logger receives the collector's events.
	Logger *zap.Logger
}

// Collector gathers the usage events and audit checkpoints of a whole
// fleet into its own database, from durable pull consumers with explicit
// acks. Delivery is at least once; storing is idempotent: an event is
// deduplicated on (origin, agent, consumer, dedup) in the transaction that
// stores it, and a message is acked only once that transaction is
// durable. So a redelivery, or a republish after JetStream's duplicate
// window, is counted once, and an outage only delays.
//
//	f sized("n", name)              ingest counters (ingested, duplicates, malformed)
//	f sized("cp", origin, agent)    the latest Checkpoint, JSON
type Collector struct {
	c      *Client
	db     *storage.DB
	store  *metering.Store
	opts   CollectorOptions
	logger *zap.Logger
	wait   time.Duration // how long one idle fetch waits for a message
	pause  time.Duration // between attempts while NATS is away

	ingested, duplicates, malformed atomic.Uint64
	lastMsg                         atomic.Int64 // unix nanos of the last message's stream time

	mu    sync.Mutex
	usage jetstream.Consumer // nil until the consumer exists
}

// Counter names, as kept in the database and shown in CollectorStatus.
const (
	countIngested   = "ingested"
	countDuplicates = "duplicates"
	countMalformed  = "malformed"
)

func counterKeyOf(name string) []byte { return storage.SpaceFleet.SizedString("n", name) }

func checkpointKeyOf(origin, agent string) []byte {
	return storage.SpaceFleet.SizedString("cp", origin, agent)
}

// NewCollector prepares a collector reading the fleet c reaches into db;
// Run starts it.
func NewCollector(c *Client, db *storage.DB, o CollectorOptions) (*Collector, error) {
	if o.Durable == "" {
		o.Durable = DefaultDurable
	}
	if o.Batch <= 0 {
		o.Batch = 256
	}
	if o.AckWait <= 0 {
		o.AckWait = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	k := &Collector{c: c, db: db, store: metering.New(db, o.Retention), opts: o, logger: o.Logger,
		wait: time.Second, pause: 250 * time.Millisecond}
	err := db.View(func(r *storage.Reader) error {
		for name, dst := range map[string]*atomic.Uint64{countIngested: &k.ingested, countDuplicates: &k.duplicates, countMalformed: &k.malformed} {
			b, err := r.Get(counterKeyOf(name))
			if errors.Is(err, storage.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			v, err := storage.DecodeUint64(b)
			if err != nil {
				return fmt.Errorf("counter %s: %w", name, err)
			}
			dst.Store(v)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("fleet: collector: reading its counters in %s: %w", db.Dir(), err)
	}
	return k, nil
}

// Store is the metering store the collector fills: the Usage API serves
// it as it serves a sidecar's.
func (k *Collector) Store() *metering.Store { return k.store }

// Run consumes both streams until ctx ends, resuming where the durable
// consumers stand after every interruption.
func (k *Collector) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); k.follow(ctx, UsageStream, k.ingestUsage) }()
	go func() { defer wg.Done(); k.follow(ctx, CheckpointStream, k.ingestCheckpoints) }()
	wg.Wait()
}

// ingestFunc stores a batch of messages durably (malformed ones only
// counted), so that all of them can then be acked.
type ingestFunc func(ctx context.Context, msgs []jetstream.Msg) error

// follow pulls stream through the durable consumer until ctx ends.
func (k *Collector) follow(ctx context.Context, stream string, ingest ingestFunc) {
	for ctx.Err() == nil {
		err := k.pull(ctx, stream, ingest)
		if ctx.Err() != nil {
			return
		}
		k.logger.Debug("fleet: collector waits for NATS", zap.String("stream", stream), zap.Error(err))
		select {
		case <-ctx.Done():
		case <-time.After(k.pause):
		}
	}
}

// pull binds the durable consumer of stream and ingests batches from it
// until an error.
func (k *Collector) pull(ctx context.Context, stream string, ingest ingestFunc) error {
	if err := k.c.setup(ctx); err != nil {
		return err
	}
	cons, err := k.consumer(ctx, stream)
	if err != nil {
		return err
	}
	if stream == UsageStream {
		k.mu.Lock()
		k.usage = cons
		k.mu.Unlock()
	}
	for ctx.Err() == nil {
		msgs, err := k.fetch(cons)
		if err != nil {
			return err
		}
		if len(msgs) == 0 {
			continue
		}
		if err := ingest(ctx, msgs); err != nil {
			return err
		}
		for _, m := range msgs {
			// A lost ack only means a redelivery, which dedup drops.
			if err := m.Ack(); err != nil {
				return fmt.Errorf("%w: acking: %v", ErrUnavailable, err)
			}
		}
		if meta, err := msgs[len(msgs)-1].Metadata(); err == nil && stream == UsageStream {
			k.lastMsg.Store(meta.Timestamp.UnixNano())
		}
	}
	return ctx.Err()
}

// consumer creates (or binds to) the collector's durable consumer on
// stream: explicit acks, from the start of the stream the first time.
func (k *Collector) consumer(ctx context.Context, stream string) (jetstream.Consumer, error) {
	cctx, cancel := k.c.opContext(ctx)
	defer cancel()
	cons, err := k.c.js.CreateOrUpdateConsumer(cctx, stream, jetstream.ConsumerConfig{
		Durable:       k.opts.Durable,
		Description:   "asap-sidecar collector",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       k.opts.AckWait,
		MaxAckPending: 4 * k.opts.Batch,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: consumer %s on %s: %v", ErrUnavailable, k.opts.Durable, stream, k.c.lost(err))
	}
	return cons, nil
}

// fetch takes what is waiting, up to a batch; when nothing is, it waits
// up to k.wait for one message.
func (k *Collector) fetch(cons jetstream.Consumer) ([]jetstream.Msg, error) {
	msgs, err := drain(cons.FetchNoWait(k.opts.Batch))
	if err != nil || len(msgs) > 0 {
		return msgs, k.c.lost(err)
	}
	msgs, err = drain(cons.Fetch(1, jetstream.FetchMaxWait(k.wait)))
	return msgs, k.c.lost(err)
}

func drain(b jetstream.MessageBatch, err error) ([]jetstream.Msg, error) {
	if err != nil {
		return nil, fmt.Errorf("%w: fetching: %w", ErrUnavailable, err)
	}
	var msgs []jetstream.Msg
	for m := range b.Messages() {
		msgs = append(msgs, m)
	}
	if err := b.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, jetstream.ErrNoMessages) {
		return msgs, fmt.Errorf("%w: fetching: %w", ErrUnavailable, err)
	}
	return msgs, nil
}

// decoded is a message read for ingest; nil fields mean malformed.
type decoded[T any] struct {
	v   *T
	seq uint64
}

func decodeAll[T any](k *Collector, stream string, msgs []jetstream.Msg, ok func(*T) error) []decoded[T] {
	out := make([]decoded[T], len(msgs))
	for i, m := range msgs {
		if meta, err := m.Metadata(); err == nil {
			out[i].seq = meta.Sequence.Stream
		}
		v := new(T)
		err := json.Unmarshal(m.Data(), v)
		if err == nil {
			err = ok(v)
		}
		if err != nil {
			// Nothing can ever store it: count it and move on rather than
			// stop the stream here.
			k.logger.Error("fleet: collector skips a malformed message", zap.String("stream", stream),
				zap.Uint64("seq", out[i].seq), zap.ByteString("data", truncate(m.Data(), 256)), zap.Error(err))
			continue
		}
		out[i].v = v
	}
	return out
}

func checkUsage(u *Usage) error {
	switch {
	case u.Origin == "":
		return errors.New("no origin")
	case u.Event.Timestamp.IsZero():
		return errors.New("no event timestamp")
	case u.Event.Timestamp.UTC().Year() > 9999:
		return errors.New("event timestamp after year 9999")
	case u.Event.Timestamp.Before(time.Unix(0, 0)):
		// Usage ids are ULIDs, which start in 1970: the store refuses it.
		return errors.New("event timestamp before 1970")
	}
	return nil
}

// dedupOf is the key the collector deduplicates a usage under inside the
// metering store, whose markers are per (agent, consumer): the origin
// keeps two replicas' executions of one envelope id apart.
func dedupOf(u *Usage) string {
	if u.Dedup == "" {
		return u.Origin + "/task/" + u.Event.TaskID
	}
	return u.Origin + "/" + u.Dedup
}

// ingestUsage stores a batch of usage events in one strict transaction,
// with the counters.
func (k *Collector) ingestUsage(ctx context.Context, msgs []jetstream.Msg) error {
	batch := decodeAll(k, UsageStream, msgs, checkUsage)
	var added, dups, bad uint64
	err := k.db.Commit(ctx, storage.Strict, func(tx *storage.Tx) error {
		added, dups, bad = 0, 0, 0 // the pipeline may run this more than once
		for _, d := range batch {
			if d.v == nil {
				bad++
				continue
			}
			e := d.v.Event
			ok, err := k.store.Put(tx, &e, dedupOf(d.v))
			if err != nil {
				return fmt.Errorf("usage %d from %s: %w", d.seq, d.v.Origin, err)
			}
			if ok {
				added++
			} else {
				dups++
			}
		}
		return addCounters(tx, map[string]uint64{countIngested: added, countDuplicates: dups, countMalformed: bad})
	})
	if err != nil {
		return fmt.Errorf("fleet: collector: storing %d usage messages: %w", len(msgs), err)
	}
	k.ingested.Add(added)
	k.duplicates.Add(dups)
	k.malformed.Add(bad)
	if dups > 0 {
		k.logger.Debug("fleet: collector dropped duplicate usage", zap.Uint64("duplicates", dups))
	}
	return nil
}

func addCounters(tx *storage.Tx, deltas map[string]uint64) error {
	for name, d := range deltas {
		if d == 0 {
			continue
		}
		if _, err := tx.AddUint64(counterKeyOf(name), d); err != nil {
			return err
		}
	}
	return nil
}

func checkCheckpoint(c *Checkpoint) error {
	if c.Origin == "" || c.Checkpoint == "" {
		return errors.New("no origin or no checkpoint note")
	}
	return nil
}

// ingestCheckpoints keeps, per origin and agent, the newest checkpoint of
// a batch and of what is stored: a redelivered older one changes nothing.
func (k *Collector) ingestCheckpoints(ctx context.Context, msgs []jetstream.Msg) error {
	batch := decodeAll(k, CheckpointStream, msgs, checkCheckpoint)
	var bad uint64
	err := k.db.Commit(ctx, storage.Strict, func(tx *storage.Tx) error {
		bad = 0
		for _, d := range batch {
			if d.v == nil {
				bad++
				continue
			}
			key := checkpointKeyOf(d.v.Origin, d.v.Agent)
			old, err := tx.Get(key)
			switch {
			case errors.Is(err, storage.ErrNotFound):
			case err != nil:
				return err
			default:
				var prev Checkpoint
				if json.Unmarshal(old, &prev) == nil && !d.v.newer(&prev) {
					continue
				}
			}
			b, err := json.Marshal(d.v)
			if err != nil {
				return err
			}
			tx.Set(key, b)
		}
		return addCounters(tx, map[string]uint64{countMalformed: bad})
	})
	if err != nil {
		return fmt.Errorf("fleet: collector: storing %d checkpoints: %w", len(msgs), err)
	}
	k.malformed.Add(bad)
	return nil
}

// Checkpoints are the latest checkpoint of every sidecar (and agent), by
// origin.
func (k *Collector) Checkpoints() ([]Checkpoint, error) {
	out := []Checkpoint{}
	err := k.db.View(func(r *storage.Reader) error {
		return r.Scan(storage.SpaceFleet.SizedString("cp"), false, func(_, v []byte) (bool, error) {
			var c Checkpoint
			if err := json.Unmarshal(v, &c); err != nil {
				return false, err
			}
			out = append(out, c)
			return true, nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("fleet: collector: reading checkpoints: %w", err)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Origin != out[j].Origin {
			return out[i].Origin < out[j].Origin
		}
		return out[i].Agent < out[j].Agent
	})
	return out, nil
}

// CollectorStatus is what GET /fleet/status answers.
type CollectorStatus struct {
	// Connected says whether NATS is reachable now.
	Connected bool `json:"connected"`
	// Ingested counts usage events stored; Duplicates those dropped as
	// already stored (redeliveries, republishes); Malformed messages
	// that could not be read.
	Ingested   uint64 `json:"ingested"`
	Duplicates uint64 `json:"duplicates"`
	Malformed  uint64 `json:"malformed"`
	// Pending is how many usage messages the durable consumer has not
	// had acknowledged yet (waiting plus in flight); null while NATS
	// cannot say.
	Pending *uint64 `json:"pending"`
	// LastMessageAt is when the last ingested usage message entered the
	// stream; null before the first.
	LastMessageAt *time.Time `json:"last_message_at"`
}

// Status reads the counters and asks NATS how far behind the collector is.
func (k *Collector) Status(ctx context.Context) CollectorStatus {
	s := CollectorStatus{
		Connected:  k.c.Connected(),
		Ingested:   k.ingested.Load(),
		Duplicates: k.duplicates.Load(),
		Malformed:  k.malformed.Load(),
	}
	if ns := k.lastMsg.Load(); ns != 0 {
		t := time.Unix(0, ns).UTC()
		s.LastMessageAt = &t
	}
	k.mu.Lock()
	cons := k.usage
	k.mu.Unlock()
	if cons != nil && s.Connected {
		cctx, cancel := k.c.opContext(ctx)
		defer cancel()
		if info, err := cons.Info(cctx); err == nil {
			p := info.NumPending + uint64(info.NumAckPending)
			s.Pending = &p
		}
	}
	return s
}
