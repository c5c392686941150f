package fleet

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/asap-sidecar/asap-sidecar/storage"
)

// Message is one record bound for the fleet: published on Subject with
// ID as its Nats-Msg-Id, so that JetStream drops a second copy (the
// outbox publishes at least once: a crash between the ack and the delete
// sends it again).
type Message struct {
	Subject string          `json:"s"`
	ID      string          `json:"i"`
	Data    json.RawMessage `json:"d"`
}

// Outbox holds messages in the sidecar's own database until JetStream has
// acknowledged them. A message is staged in the same transaction as the
// records it reports, so it exists exactly when they do, and leaves only
// once it is in the stream: a NATS outage delays, never loses.
//
//	o <seq uint64 big-endian>   a Message, JSON
type Outbox struct {
	db      *storage.DB
	logger  *zap.Logger
	next    atomic.Uint64 // sequence of the next staged message
	backlog atomic.Int64  // staged and not yet acknowledged (approximate while commits are in flight)
	// staged counts Stage calls; a scan that found the outbox empty resets
	// backlog only if none happened since it began (under resync).
	resync sync.Mutex
	staged uint64
	wake   chan struct{}
	batch  int
	retry  time.Duration
	// max is the backlog at which Full says stop: a NATS outage must not
	// fill the disk.
	max int64
}

// DefaultMaxBacklog bounds an outbox: about 300 MB of usage messages.
const DefaultMaxBacklog = 1_000_000

func outboxKey(seq uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], seq)
	return storage.SpaceOutbox.Key(b[:])
}

// OpenOutbox reads where db's outbox stands; it holds at most max
// messages (DefaultMaxBacklog when 0).
func OpenOutbox(db *storage.DB, max int64, logger *zap.Logger) (*Outbox, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	if max <= 0 {
		max = DefaultMaxBacklog
	}
	o := &Outbox{db: db, logger: logger, wake: make(chan struct{}, 1), batch: 256, retry: 250 * time.Millisecond, max: max}
	var last uint64
	var n int64
	err := db.View(func(r *storage.Reader) error {
		return r.Scan(storage.SpaceOutbox.Prefix(), false, func(k, _ []byte) (bool, error) {
			n++
			if len(k) == 9 {
				last = binary.BigEndian.Uint64(k[1:])
			}
			return true, nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("fleet: reading the outbox: %w", err)
	}
	o.next.Store(last + 1)
	o.backlog.Store(n)
	return o, nil
}

// Stage adds m to the outbox inside tx. Call Notify once tx committed.
func (o *Outbox) Stage(tx *storage.Tx, m Message) error {
	b, err := json.Marshal(&m)
	if err != nil {
		return err
	}
	tx.Set(outboxKey(o.next.Add(1)-1), b)
	o.resync.Lock()
	o.staged++
	o.backlog.Add(1)
	o.resync.Unlock()
	return nil
}

// Notify wakes the publisher: a staged message was committed.
func (o *Outbox) Notify() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// Backlog is how many messages wait to be published.
func (o *Outbox) Backlog() int64 {
	if n := o.backlog.Load(); n > 0 {
		return n
	}
	return 0
}

// Full says the backlog reached its bound: new work that would add to it
// should be refused until NATS takes some.
func (o *Outbox) Full() bool { return o.backlog.Load() >= o.max }

// Max is the bound of the backlog.
func (o *Outbox) Max() int64 { return o.max }

// Run publishes the outbox in order until ctx ends, retrying while NATS
// is unreachable. Each message is removed once JetStream acknowledged it.
func (o *Outbox) Run(ctx context.Context, c *Client) {
	tick := time.NewTicker(o.retry)
	defer tick.Stop()
	for {
		n, err := o.publishBatch(ctx, c)
		if err != nil && ctx.Err() == nil {
			o.logger.Debug("fleet: outbox waits for NATS", zap.Error(err), zap.Int64("backlog", o.Backlog()))
		}
		if err == nil && n == o.batch {
			continue // more waiting
		}
		select {
		case <-ctx.Done():
			return
		case <-o.wake:
		case <-tick.C:
		}
	}
}

// publishBatch publishes up to o.batch messages, oldest first, and
// deletes those acknowledged. It returns how many it published.
func (o *Outbox) publishBatch(ctx context.Context, c *Client) (int, error) {
	type entry struct {
		key []byte
		m   Message
	}
	o.resync.Lock()
	stagedBefore := o.staged
	o.resync.Unlock()
	var batch []entry
	err := o.db.View(func(r *storage.Reader) error {
		return r.Scan(storage.SpaceOutbox.Prefix(), false, func(k, v []byte) (bool, error) {
			var m Message
			if err := json.Unmarshal(v, &m); err != nil {
				// A message that cannot be read can never be sent; keeping it
				// would stop the outbox for good.
				o.logger.Error("fleet: dropping an unreadable outbox message", zap.Binary("key", k), zap.Error(err))
				batch = append(batch, entry{key: append([]byte(nil), k...)})
				return len(batch) < o.batch, nil
			}
			batch = append(batch, entry{key: append([]byte(nil), k...), m: m})
			return len(batch) < o.batch, nil
		})
	})
	if err != nil || len(batch) == 0 {
		if err == nil {
			// Aborted or retried commits may have counted messages that
			// never landed: an empty outbox is zero, unless a message was
			// staged since the scan began (it may land yet).
			o.resync.Lock()
			if o.staged == stagedBefore {
				o.backlog.Store(0)
			}
			o.resync.Unlock()
		}
		return 0, err
	}
	if err := c.setup(ctx); err != nil {
		return 0, err
	}
	futures := make([]jetstream.PubAckFuture, len(batch))
	for i, e := range batch {
		if e.m.Subject == "" {
			continue
		}
		f, err := c.js.PublishAsync(e.m.Subject, e.m.Data, jetstream.WithMsgID(e.m.ID))
		if err != nil {
			return 0, fmt.Errorf("%w: publishing: %v", ErrUnavailable, c.lost(err))
		}
		futures[i] = f
	}
	var done [][]byte
	timeout := time.NewTimer(c.timeout)
	defer timeout.Stop()
	var firstErr error
wait:
	for i, f := range futures {
		if f == nil {
			done = append(done, batch[i].key)
			continue
		}
		select {
		case <-f.Ok():
			done = append(done, batch[i].key)
		case err := <-f.Err():
			firstErr = fmt.Errorf("%w: publish not acknowledged: %v", ErrUnavailable, c.lost(err))
			break wait // keep order: nothing after an unacknowledged message is removed
		case <-timeout.C:
			firstErr = fmt.Errorf("%w: no acknowledgement within %s", ErrUnavailable, c.timeout)
			break wait
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	if len(done) > 0 {
		if err := o.db.Commit(ctx, storage.Relaxed, func(tx *storage.Tx) error {
			for _, k := range done {
				tx.Delete(k)
			}
			return nil
		}); err != nil {
			return 0, err
		}
		o.backlog.Add(-int64(len(done)))
	}
	return len(done), firstErr
}
