package api

import "net/http"

// handlerOf is the route table over fixed services, as a mount resolves
// them for every request.
func handlerOf(s *Services) *Handler {
	return NewHandler(PublicMount, func(*http.Request) (*Services, error) { return s, nil })
}

// adminHandlerOf is the same table as the admin endpoint mounts it.
func adminHandlerOf(s *Services) *Handler {
	return NewHandler(AdminMount, func(*http.Request) (*Services, error) { return s, nil })
}

// serve runs one request through the route table.
func serve(s *Services, w http.ResponseWriter, r *http.Request) { handlerOf(s).ServeHTTP(w, r) }
