package caddymodule

import (
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
)

// The collectors are created once per process and registered into every
// config's registry, so their values survive reloads (caddy-ratelimit's
// reload bug #100 came from re-creating them).
var taskMetrics = struct {
	tasks     *prometheus.CounterVec
	tokensIn  *prometheus.CounterVec
	tokensOut *prometheus.CounterVec
	apiCalls  *prometheus.CounterVec
	duration  *prometheus.HistogramVec
}{
	tasks: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "asap", Name: "tasks_total",
		Help: "Metered tasks by agent, consumer and status.",
	}, []string{"agent", "consumer", "status"}),
	tokensIn: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "asap", Name: "tokens_in_total",
		Help: "Input tokens the agent reported, by agent and consumer.",
	}, []string{"agent", "consumer"}),
	tokensOut: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "asap", Name: "tokens_out_total",
		Help: "Output tokens the agent reported, by agent and consumer.",
	}, []string{"agent", "consumer"}),
	apiCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "asap", Name: "api_calls_total",
		Help: "API calls the agent reported, by agent and consumer.",
	}, []string{"agent", "consumer"}),
	duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "asap", Name: "task_duration_seconds",
		Help:    "Task duration measured by the sidecar, forward to last answer byte.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
	}, []string{"agent", "consumer"}),
}

func registerMetrics(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{taskMetrics.tasks, taskMetrics.tokensIn, taskMetrics.tokensOut, taskMetrics.apiCalls, taskMetrics.duration, slaCollector{},
		rejectionsTotal, webhookDeliveries, webhookQueue, commitGroupWriters, syncSeconds, storageCollector{}} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}

// maxConsumerLabels bounds the consumer label's values: consumers are
// named by clients, and an unbounded label would let anyone grow the
// sidecar's memory and the operator's metrics bill.
const maxConsumerLabels = 1000

var consumerLabels = struct {
	sync.Mutex
	seen map[string]struct{}
}{seen: map[string]struct{}{}}

func consumerLabel(c string) string {
	consumerLabels.Lock()
	defer consumerLabels.Unlock()
	if _, ok := consumerLabels.seen[c]; ok {
		return c
	}
	if len(consumerLabels.seen) >= maxConsumerLabels {
		return "other"
	}
	consumerLabels.seen[c] = struct{}{}
	return c
}

func observe(e *metering.Event) {
	consumer := consumerLabel(e.ConsumerID)
	taskMetrics.tasks.WithLabelValues(e.AgentID, consumer, e.Status).Inc()
	taskMetrics.tokensIn.WithLabelValues(e.AgentID, consumer).Add(float64(e.TokensIn))
	taskMetrics.tokensOut.WithLabelValues(e.AgentID, consumer).Add(float64(e.TokensOut))
	taskMetrics.apiCalls.WithLabelValues(e.AgentID, consumer).Add(float64(e.APICalls))
	taskMetrics.duration.WithLabelValues(e.AgentID, consumer).Observe(float64(e.DurationMS) / 1000)
}
