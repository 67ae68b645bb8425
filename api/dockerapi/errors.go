package dockerapi

import (
	"encoding/json"
	"errors"
	"net/http"

	"flotilla/api/errdefs"
	"flotilla/api/httpx"

	"github.com/docker/docker/api/types"
)

// notModified is returned by start and stop when there is nothing to do:
// dockerd answers 304 and the CLI treats it as success.
var errNotModified = errors.New("not modified")

// StatusOf maps an error to dockerd's HTTP status: classify once, render here.
func StatusOf(err error) int {
	if errors.Is(err, errNotModified) {
		return http.StatusNotModified
	}
	switch errdefs.CodeOf(err) {
	case errdefs.Invalid, errdefs.Unprocessable:
		if errors.Is(err, httpx.ErrTooLarge) {
			return http.StatusRequestEntityTooLarge
		}
		return http.StatusBadRequest
	case errdefs.NotFound, errdefs.Gone:
		return http.StatusNotFound
	case errdefs.Conflict:
		return http.StatusConflict
	case errdefs.Unauthorized:
		return http.StatusUnauthorized
	case errdefs.Forbidden:
		return http.StatusForbidden
	case errdefs.Unavailable:
		return http.StatusServiceUnavailable
	case errdefs.InsufficientCapacity:
		return http.StatusServiceUnavailable
	case errdefs.NotImplemented:
		return http.StatusNotImplemented
	case errdefs.TooManyRequests:
		return http.StatusTooManyRequests
	}
	return http.StatusInternalServerError
}

// RenderError writes err as dockerd does: {"message": ...} with a
// Content-Type of exactly application/json (the CLI compares the string).
func RenderError(w http.ResponseWriter, r *http.Request, err error) {
	status := StatusOf(err)
	if status == http.StatusNotModified {
		w.WriteHeader(status)
		return
	}
	msg := errdefs.MessageOf(err)
	if errdefs.CodeOf(err) == errdefs.Internal {
		msg = "internal error (request " + httpx.RequestID(r.Context()) + ")"
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(types.ErrorResponse{Message: msg})
}

// writeJSON writes v with status and dockerd's JSON content type.
func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}
