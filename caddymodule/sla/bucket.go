package sla

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/DataDog/sketches-go/ddsketch"
	"github.com/DataDog/sketches-go/ddsketch/store"
)

// RelativeAccuracy of the latency sketches: a quantile read from them is
// within 1 % of the true value (DDSketch's guarantee).
const RelativeAccuracy = 0.01

// maxBins bounds a sketch's memory; collapsing the lowest bins keeps the
// upper quantiles exact to the guarantee.
const maxBins = 2048

func newSketch() *ddsketch.DDSketch {
	s, err := ddsketch.LogCollapsingLowestDenseDDSketch(RelativeAccuracy, maxBins)
	if err != nil {
		panic(err) // constant arguments: cannot fail
	}
	return s
}

// Bucket holds one minute's (or one hour's) samples of an agent.
type Bucket struct {
	// Latency is in milliseconds.
	Latency     *ddsketch.DDSketch
	Completed   uint64
	Failed      uint64
	HealthUp    uint64
	HealthTotal uint64
}

// NewBucket is an empty bucket.
func NewBucket() *Bucket { return &Bucket{Latency: newSketch()} }

// Merge adds o's samples to b.
func (b *Bucket) Merge(o *Bucket) error {
	b.Completed += o.Completed
	b.Failed += o.Failed
	b.HealthUp += o.HealthUp
	b.HealthTotal += o.HealthTotal
	return b.Latency.MergeWith(o.Latency)
}

// Copy is an independent copy of b.
func (b *Bucket) Copy() *Bucket {
	c := *b
	c.Latency = b.Latency.Copy()
	return &c
}

// Encode is the bucket's stored form: four counters, then the sketch.
func (b *Bucket) Encode() []byte {
	out := make([]byte, 32, 64)
	binary.BigEndian.PutUint64(out[0:], b.Completed)
	binary.BigEndian.PutUint64(out[8:], b.Failed)
	binary.BigEndian.PutUint64(out[16:], b.HealthUp)
	binary.BigEndian.PutUint64(out[24:], b.HealthTotal)
	b.Latency.Encode(&out, false)
	return out
}

// DecodeBucket reverses Encode.
func DecodeBucket(data []byte) (*Bucket, error) {
	if len(data) < 32 {
		return nil, errors.New("sla: bucket shorter than its counters")
	}
	s, err := ddsketch.DecodeDDSketch(data[32:], func() store.Store { return store.NewCollapsingLowestDenseStore(maxBins) }, nil)
	if err != nil {
		return nil, fmt.Errorf("sla: bucket sketch: %w", err)
	}
	return &Bucket{
		Latency:     s,
		Completed:   binary.BigEndian.Uint64(data[0:]),
		Failed:      binary.BigEndian.Uint64(data[8:]),
		HealthUp:    binary.BigEndian.Uint64(data[16:]),
		HealthTotal: binary.BigEndian.Uint64(data[24:]),
	}, nil
}

// P95 is the bucket's 95th percentile latency in milliseconds (0 when it
// holds no latency sample).
func (b *Bucket) P95() float64 {
	if b.Latency.IsEmpty() {
		return 0
	}
	v, err := b.Latency.GetValueAtQuantile(0.95)
	if err != nil {
		return 0
	}
	return v
}
