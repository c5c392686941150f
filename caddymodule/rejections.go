package caddymodule

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
)

// rejectionClasses names the class label of asap_rejections_total after
// the JSON-RPC code the client got.
var rejectionClasses = map[int]string{
	protocol.CodeParseError:          "parse_error",
	protocol.CodeInvalidRequest:      "invalid_request",
	protocol.CodeMethodNotFound:      "method_not_found",
	protocol.CodeInvalidParams:       "invalid_params",
	protocol.CodeVersionIncompatible: "version_incompatible",
	protocol.CodeTokenMalformed:      "delegation_malformed",
	protocol.CodeTokenSignature:      "delegation_signature",
	protocol.CodeTokenTime:           "delegation_time",
	protocol.CodeTokenRevoked:        "delegation_revoked",
	protocol.CodeTokenScope:          "delegation_scope",
	protocol.CodeTokenAudience:       "delegation_audience",
	protocol.CodeTokenLimitSpent:     "delegation_limit",
}

// rejectionReasons are every reason the sidecar refuses a request or a
// call with, by code. The label takes only these values (and "other"), so
// no client can add series: TestRejectionReasonsAreAllKnown keeps the
// list in step with the code.
var rejectionReasons = map[int][]string{
	protocol.CodeParseError: {"invalid_utf8", "too_deep", "empty_body", "invalid_json", "unreadable_body", "bad_encoding"},
	protocol.CodeInvalidRequest: {"empty_batch", "batch_too_large", "duplicate_id", "not_an_object", "duplicate_member",
		"missing_id", "invalid_id", "wrong_jsonrpc_version", "missing_method", "unsupported_encoding",
		"method_not_allowed", "body_too_large", "envelope_id_reused"},
	protocol.CodeMethodNotFound: {"unknown_method"},
	protocol.CodeInvalidParams: {"params_not_object", "missing_envelope", "envelope_not_object", "control_character_in_id",
		"invalid_envelope", "missing_asap_version", "missing_sender", "missing_recipient", "missing_payload_type",
		"missing_payload", "payload_not_object", "invalid_sender_urn", "invalid_recipient_urn", "invalid_timestamp",
		"invalid_envelope_id", "invalid_extensions", "missing_correlation_id"},
	protocol.CodeVersionIncompatible: {"version_incompatible"},
	protocol.CodeTokenMalformed: {"missing_token", "token_too_large", "chain_too_deep", "parent_unreadable", "chain_loop",
		"not_compact_jws", "bad_base64", "bad_header", "crit_header", "bad_claims", "missing_iss", "chain_incomplete",
		"missing_aud", "missing_jti", "missing_exp", "missing_scp", "bad_prf", "claim_too_long", "too_many_scopes",
		"bad_max_tasks", "bad_cnf", "bad_header_jwk", "broken_prf"},
	protocol.CodeTokenSignature: {"bad_signature", "untrusted_issuer", "alg_not_allowed", "no_key_for_issuer",
		"missing_header_jwk", "jwk_thumbprint_mismatch", "header_jwk_not_bound"},
	protocol.CodeTokenTime:       {"expired", "not_yet_valid", "issued_in_future"},
	protocol.CodeTokenRevoked:    {"revoked"},
	protocol.CodeTokenScope:      {"scope_escalation", "time_window_escape", "max_tasks_escalation", "action_not_granted"},
	protocol.CodeTokenAudience:   {"issuer_not_parent_audience", "recipient_mismatch", "sender_not_audience"},
	protocol.CodeTokenLimitSpent: {"limit_unreadable", "max_tasks_reached", "fleet_unavailable"},
}

// otherLabel stands for a class or reason not in the lists above.
const otherLabel = "other"

var rejectionsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "asap", Name: "rejections_total",
	Help: "Requests and calls the sidecar refused, by agent, class (the JSON-RPC error kind) and reason.",
}, []string{"agent", "class", "reason"})

type rejectionKey struct {
	code   int
	reason string
}

// rejectionCounters are one agent's asap_rejections_total children,
// resolved once so that counting costs a map lookup and an add.
type rejectionCounters struct {
	byKey map[rejectionKey]prometheus.Counter
	other prometheus.Counter // unknown code
}

// newRejectionCounters creates every known series of agent at 0, so that
// alert rules see them from the start.
func newRejectionCounters(agent string) *rejectionCounters {
	rc := &rejectionCounters{byKey: map[rejectionKey]prometheus.Counter{}}
	for code, class := range rejectionClasses {
		for _, reason := range append(rejectionReasons[code], otherLabel) {
			rc.byKey[rejectionKey{code, reason}] = rejectionsTotal.WithLabelValues(agent, class, reason)
		}
	}
	rc.other = rejectionsTotal.WithLabelValues(agent, otherLabel, otherLabel)
	return rc
}

// count adds one refusal answered with code and reason.
func (rc *rejectionCounters) count(code int, reason string) {
	if c, ok := rc.byKey[rejectionKey{code, reason}]; ok {
		c.Inc()
	} else if c, ok := rc.byKey[rejectionKey{code, otherLabel}]; ok {
		c.Inc()
	} else {
		rc.other.Inc()
	}
}

// countCalls counts every refused call of req once.
func (rc *rejectionCounters) countCalls(req *protocol.Request) {
	for i := range req.Calls {
		if e := req.Calls[i].Err; e != nil {
			rc.count(e.Code, e.Reason)
		}
	}
}
