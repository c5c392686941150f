package fleet

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// Revocation is one revocation as the fleet carries it: every sidecar
// revokes the same id (for every issuer when Issuer is empty) as of the
// same time, and cascades to the descendants it minted itself.
type Revocation struct {
	Issuer    string    `json:"issuer,omitempty"`
	JTI       string    `json:"jti"`
	RevokedAt time.Time `json:"revoked_at"`
	// Origin is the sidecar that revoked it (its fleet id).
	Origin string `json:"origin"`
}

// Message is the outbox message that publishes r. Its id is the same for
// the same revocation at the same origin, so a second publish is dropped.
func (r Revocation) Message() (Message, error) {
	b, err := json.Marshal(&r)
	if err != nil {
		return Message{}, err
	}
	h := sha256.Sum256([]byte(r.Origin + "\x00" + r.Issuer + "\x00" + r.JTI))
	return Message{Subject: RevocationSubject, ID: "rev-" + hex.EncodeToString(h[:16]), Data: b}, nil
}

// FollowRevocations applies every revocation in the stream after sequence
// after, in order, until ctx ends. A message that is not a revocation is
// passed as a Revocation with no JTI: apply only records its sequence.
// apply must record seq durably with the revocation, so that a restarted
// sidecar resumes where it stopped; when apply fails the message is tried
// again after a pause. While NATS is unreachable it waits and resumes
// from the last applied sequence.
func (c *Client) FollowRevocations(ctx context.Context, after uint64, apply func(ctx context.Context, r Revocation, seq uint64) error) {
	pause := 250 * time.Millisecond
	for ctx.Err() == nil {
		last, err := c.followOnce(ctx, after, apply)
		if last > after {
			after = last
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			c.logger.Debug("fleet: revocation stream interrupted; resuming", zap.Uint64("applied", after), zap.Error(err))
		}
		select {
		case <-ctx.Done():
		case <-time.After(pause):
		}
	}
}

// followOnce reads the stream from after+1 until an error; it returns the
// last sequence it applied.
func (c *Client) followOnce(ctx context.Context, after uint64, apply func(context.Context, Revocation, uint64) error) (uint64, error) {
	if err := c.setup(ctx); err != nil {
		return after, err
	}
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: after + 1}
	cons, err := c.js.OrderedConsumer(ctx, RevocationStream, cfg)
	if err != nil {
		return after, fmt.Errorf("%w: subscribing to %s: %v", ErrUnavailable, RevocationStream, c.lost(err))
	}
	it, err := cons.Messages()
	if err != nil {
		return after, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	defer it.Stop()
	for {
		msg, err := it.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return after, ctx.Err()
			}
			return after, c.lost(err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return after, err
		}
		seq := meta.Sequence.Stream
		var r Revocation
		if err := json.Unmarshal(msg.Data(), &r); err != nil || r.JTI == "" {
			// Nothing can ever apply it: skip it rather than stop here.
			c.logger.Error("fleet: skipping a malformed revocation", zap.Uint64("seq", seq), zap.ByteString("data", truncate(msg.Data(), 256)), zap.Error(err))
			r = Revocation{}
		}
		if err := apply(ctx, r, seq); err != nil {
			return after, fmt.Errorf("applying revocation %d: %w", seq, err)
		}
		after = seq
	}
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
