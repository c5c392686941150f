package caddymodule

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/asap-sidecar/asap-sidecar/storage"
)

// Webhook delivery results, each present from the start.
var (
	webhookDeliveries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "asap", Name: "webhook_deliveries_total",
		Help: "Webhook delivery attempts by result: ok (the receiver took it), failed (the attempt failed; it is retried), dropped (the alert was given up).",
	}, []string{"result"})
	webhookOK      = webhookDeliveries.WithLabelValues("ok")
	webhookFailed  = webhookDeliveries.WithLabelValues("failed")
	webhookDropped = webhookDeliveries.WithLabelValues("dropped")

	webhookQueue = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "asap", Name: "webhook_queue_length",
		Help: "Webhook alerts waiting for delivery or a retry.",
	}, func() float64 { return float64(webhooks.pending()) })
)

// The storage pipeline's histograms, by storage directory. The storage
// package reports through storage.Observer and knows nothing of them.
var (
	commitGroupWriters = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "asap", Name: "storage_commit_group_writers",
		Help:    "Writers committed together in one transaction.",
		Buckets: prometheus.ExponentialBuckets(1, 2, 9), // 1..256, the largest group
	}, []string{"dir"})
	syncSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "asap", Name: "storage_sync_seconds",
		Help:    "Time one sync (fsync) of committed writes took.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16), // 100µs..3.3s
	}, []string{"dir"})
)

// storageObserver feeds one directory's histograms; its children are
// resolved once, when the database opens.
type storageObserver struct{ group, sync prometheus.Observer }

func newStorageObserver(dir string) storageObserver {
	return storageObserver{group: commitGroupWriters.WithLabelValues(dir), sync: syncSeconds.WithLabelValues(dir)}
}

func (o storageObserver) CommitGroup(n int)      { o.group.Observe(float64(n)) }
func (o storageObserver) Synced(d time.Duration) { o.sync.Observe(d.Seconds()) }

var _ storage.Observer = storageObserver{}

// storageCollector reads each open database's size and audit log length
// at scrape time: a directory listing and one key read per database.
type storageCollector struct{}

var (
	storageSizeDesc  = prometheus.NewDesc("asap_storage_size_bytes", "Disk space the database takes, by directory and part: lsm (key tree and memtable logs) or vlog (value log).", []string{"dir", "kind"}, nil)
	auditEntriesDesc = prometheus.NewDesc("asap_audit_entries", "Entries in the audit log, by storage directory.", []string{"dir"}, nil)
	outboxDesc       = prometheus.NewDesc("asap_fleet_outbox_backlog", "Fleet mode: messages waiting in the outbox for NATS, by storage directory.", []string{"dir"}, nil)
	outboxMaxDesc    = prometheus.NewDesc("asap_fleet_outbox_max", "Fleet mode: the outbox bound (max_backlog), at which calls are refused.", []string{"dir"}, nil)
	fleetUpDesc      = prometheus.NewDesc("asap_fleet_connected", "Fleet mode: 1 while the fleet's NATS is reachable, else 0.", []string{"dir"}, nil)
)

func (storageCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- storageSizeDesc
	ch <- auditEntriesDesc
	ch <- outboxDesc
	ch <- outboxMaxDesc
	ch <- fleetUpDesc
}

func (storageCollector) Collect(ch chan<- prometheus.Metric) {
	databases.Range(func(key, v any) bool {
		dir, d := key.(string), v.(openDB).database
		if s, err := d.db.Size(); err == nil {
			ch <- prometheus.MustNewConstMetric(storageSizeDesc, prometheus.GaugeValue, float64(s.LSM), dir, "lsm")
			ch <- prometheus.MustNewConstMetric(storageSizeDesc, prometheus.GaugeValue, float64(s.ValueLog), dir, "vlog")
		}
		if n, _, err := d.audit.Size(); err == nil {
			ch <- prometheus.MustNewConstMetric(auditEntriesDesc, prometheus.GaugeValue, float64(n), dir)
		}
		if f := d.fleet; f != nil {
			up := 0.0
			if f.client.Connected() {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(outboxDesc, prometheus.GaugeValue, float64(f.outbox.Backlog()), dir)
			ch <- prometheus.MustNewConstMetric(outboxMaxDesc, prometheus.GaugeValue, float64(f.outbox.Max()), dir)
			ch <- prometheus.MustNewConstMetric(fleetUpDesc, prometheus.GaugeValue, up, dir)
		}
		return true
	})
}
