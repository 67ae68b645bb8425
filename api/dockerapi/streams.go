package dockerapi

import "github.com/go-chi/chi/v5"

// streamRoutes registers the process streams (attach, logs, wait, exec, top,
// stats, cp). They live in their own files, owned separately.
func (s *Server) streamRoutes(r chi.Router) {}
