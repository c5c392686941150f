package caddymodule

import (
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"strings"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/api"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/fleet"
)

// collectorHandler serves what 'asap collect' offers: the Usage API of
// the api route table over the collector's store (the sidecar's own
// answers, fleet-wide), GET /fleet/checkpoints and GET /fleet/status.
// Every other path is 404. With a bearer, every request must carry it.
func collectorHandler(k *fleet.Collector, bearer string) http.Handler {
	services := &api.Services{Usage: k.Store()}
	usage := api.NewHandler(api.PublicMount, func(*http.Request) (*api.Services, error) { return services, nil })
	mux := http.NewServeMux()
	mux.HandleFunc("GET /fleet/checkpoints", func(w http.ResponseWriter, r *http.Request) {
		cs, err := k.Checkpoints()
		if err != nil {
			api.Error(w, http.StatusInternalServerError, "%v", err)
			return
		}
		writeCollectorJSON(w, cs)
	})
	mux.HandleFunc("GET /fleet/status", func(w http.ResponseWriter, r *http.Request) {
		writeCollectorJSON(w, k.Status(r.Context()))
	})
	mux.HandleFunc("/fleet/", func(w http.ResponseWriter, r *http.Request) {
		api.Error(w, http.StatusNotFound, "Not Found; the collector serves GET /fleet/checkpoints and GET /fleet/status")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/usage" && !strings.HasPrefix(r.URL.Path, "/usage/") {
			api.Error(w, http.StatusNotFound, "Not Found; the collector serves /usage/..., /fleet/checkpoints and /fleet/status")
			return
		}
		usage.ServeHTTP(w, r)
	})
	if bearer == "" {
		return mux
	}
	want := []byte("Bearer " + bearer)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="asap-collector"`)
			api.Error(w, http.StatusUnauthorized, "a bearer credential is required: send Authorization: Bearer <token>")
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func writeCollectorJSON(w http.ResponseWriter, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		api.Error(w, http.StatusInternalServerError, "encoding the answer: %v", err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}
