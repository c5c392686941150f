package caddymodule

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/sla"
	"github.com/asap-sidecar/asap-sidecar/config"
)

// Notification is what subscribers and webhooks receive, shaped as the
// reference sends it: {"jsonrpc":"2.0","method":"sla.breach",
// "params":{"breach":{...}}} (or sla.resolved).
type Notification struct {
	JSONRPC string             `json:"jsonrpc"`
	Method  string             `json:"method"`
	Params  NotificationParams `json:"params"`
}

// NotificationParams carries the breach.
type NotificationParams struct {
	Breach sla.Breach `json:"breach"`
}

func notificationOf(e sla.Event) Notification {
	return Notification{JSONRPC: "2.0", Method: e.Method, Params: NotificationParams{Breach: e.Breach}}
}

// hub fans breach notifications out to live subscribers (WebSocket and
// SSE). A subscriber that does not keep up loses notifications rather
// than slowing anyone down. It lives for the process, across reloads.
var hub = &alertHub{subs: map[chan Notification]struct{}{}}

type alertHub struct {
	mu   sync.Mutex
	subs map[chan Notification]struct{}
}

// subscribe registers a subscriber; call the returned function to leave.
func (h *alertHub) subscribe() (<-chan Notification, func()) {
	ch := make(chan Notification, 64)
	h.mu.Lock()
	h.subs[ch] = struct{}{}
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		if _, ok := h.subs[ch]; ok {
			delete(h.subs, ch)
			close(ch)
		}
		h.mu.Unlock()
	}
}

func (h *alertHub) publish(n Notification) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs {
		select {
		case ch <- n:
		default: // full: this subscriber is too slow
		}
	}
}

// webhooks delivers notifications to webhook URLs from its own goroutine,
// retrying with exponential backoff until the receiver takes them (for up
// to a day). The request path only ever enqueues.
var webhooks = newWebhookSender()

// webhookTarget is one alert webhook: where, and the secret its
// deliveries are signed with ("" for none).
type webhookTarget struct {
	url    string
	secret string
}

type webhookJob struct {
	webhookTarget
	// key is the Idempotency-Key, the same on every retry of the alert.
	key      string
	body     []byte
	attempts int
	due      time.Time
	first    time.Time
}

type webhookSender struct {
	mu      sync.Mutex
	queue   []*webhookJob
	wake    chan struct{}
	client  *http.Client
	logger  *zap.Logger
	started sync.Once
}

const (
	webhookQueueMax = 1000
	webhookGiveUp   = 24 * time.Hour
	webhookMaxDelay = time.Minute
)

func newWebhookSender() *webhookSender {
	return &webhookSender{wake: make(chan struct{}, 1), client: &http.Client{Timeout: 10 * time.Second}, logger: zap.NewNop()}
}

// enqueue schedules n for every target. The oldest job is dropped when
// the queue is full: a bounded memory matters more than a week-old alert.
func (w *webhookSender) enqueue(logger *zap.Logger, targets []webhookTarget, n Notification) {
	if len(targets) == 0 {
		return
	}
	body, err := json.Marshal(n)
	if err != nil {
		return
	}
	w.started.Do(func() { go w.run() })
	now := time.Now()
	w.mu.Lock()
	w.logger = logger
	// A breach is opened and resolved once each: its id and the event
	// name one alert, whatever the retries.
	key := n.Params.Breach.ID + ":" + n.Method
	for _, t := range targets {
		if len(w.queue) >= webhookQueueMax {
			w.logger.Warn("webhook queue full; dropping the oldest alert", zap.String("url", w.queue[0].url))
			w.queue = w.queue[1:]
			webhookDropped.Inc()
		}
		w.queue = append(w.queue, &webhookJob{webhookTarget: t, key: key, body: body, due: now, first: now})
	}
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *webhookSender) run() {
	for {
		w.mu.Lock()
		var job *webhookJob
		next := time.Hour
		now := time.Now()
		for i, j := range w.queue {
			if !j.due.After(now) {
				job = j
				w.queue = append(w.queue[:i], w.queue[i+1:]...)
				break
			}
			if d := j.due.Sub(now); d < next {
				next = d
			}
		}
		logger := w.logger
		w.mu.Unlock()
		if job == nil {
			select {
			case <-w.wake:
			case <-time.After(next):
			}
			continue
		}
		if w.deliver(job) {
			webhookOK.Inc()
			continue
		}
		webhookFailed.Inc()
		job.attempts++
		if time.Since(job.first) > webhookGiveUp {
			webhookDropped.Inc()
			logger.Error("webhook alert dropped after a day of failures", zap.String("url", job.url), zap.Int("attempts", job.attempts))
			continue
		}
		delay := time.Second << min(job.attempts-1, 6)
		if delay > webhookMaxDelay {
			delay = webhookMaxDelay
		}
		job.due = time.Now().Add(delay)
		logger.Warn("webhook alert not delivered; will retry", zap.String("url", job.url), zap.Int("attempts", job.attempts), zap.Duration("retry_in", delay))
		w.mu.Lock()
		w.queue = append(w.queue, job)
		w.mu.Unlock()
	}
}

func (w *webhookSender) deliver(j *webhookJob) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, j.url, bytes.NewReader(j.body))
	if err != nil {
		return true // a URL that cannot become a request never will
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "asap-sidecar/"+Version)
	req.Header.Set("Idempotency-Key", j.key)
	if j.secret != "" {
		// Signed afresh on every attempt: the timestamp is the
		// attempt's, so a receiver may refuse old ones (replays).
		req.Header.Set(SignatureHeader, signWebhook(j.secret, time.Now(), j.body))
	}
	resp, err := w.client.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode < 300
}

// SignatureHeader carries a signed webhook's signature, in Stripe's
// scheme: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">.
const SignatureHeader = "ASAP-Signature"

func signWebhook(secret string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(ts))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac.Sum(nil))
}

// pending is the number of undelivered webhook alerts (for tests).
func (w *webhookSender) pending() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.queue)
}

// expandSecret is a's secret with {env.*} placeholders replaced. A secret
// that expands to nothing (an unset variable) is reported: deliveries
// then go out unsigned, and receivers that verify refuse them.
func expandSecret(logger *zap.Logger, a config.Alert) string {
	if a.Secret == "" {
		return ""
	}
	s := caddy.NewReplacer().ReplaceKnown(a.Secret, "")
	if s == "" {
		logger.Warn("alert webhook secret is empty once expanded; deliveries go out unsigned", zap.String("url", a.Webhook))
	}
	return s
}
