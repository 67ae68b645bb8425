// Package httpx holds the HTTP plumbing every Flotilla API shares: request
// ids, the access log, panic recovery, JSON decoding and encoding, and the
// adapter that turns func(w, r) error handlers into http.Handlers with
// dialect-specific error rendering.
//
// Imports: standard library and api/errdefs only.
package httpx

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"strings"
	"time"

	"flotilla/api/errdefs"
)

type ctxKey int

const (
	keyRequestID ctxKey = iota
	keyLogFields
	keyLogger // the Middleware's logger, for Fail
)

// RenderError writes err to w in an API's dialect.
type RenderError func(w http.ResponseWriter, r *http.Request, err error)

// HandlerFunc is a handler that returns its error for the adapter to render.
type HandlerFunc func(w http.ResponseWriter, r *http.Request) error

// Handle adapts fn: a returned error is logged (with its cause) and rendered.
func Handle(render RenderError, fn HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := fn(w, r); err != nil {
			Fail(w, r, render, err)
		}
	}
}

// Fail logs err when it is internal and renders it.
func Fail(w http.ResponseWriter, r *http.Request, render RenderError, err error) {
	if errdefs.CodeOf(err) == errdefs.Internal {
		logger, _ := r.Context().Value(keyLogger).(*slog.Logger)
		if logger == nil {
			logger = slog.Default()
		}
		logger.ErrorContext(r.Context(), "request failed", "request_id", RequestID(r.Context()), "error", err.Error())
	}
	SetLogField(r.Context(), "error", err.Error())
	render(w, r, err)
}

// NewRequestID returns a random UUID-shaped id.
func NewRequestID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// RequestID returns the request id stored by Middleware.
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(keyRequestID).(string)
	return id
}

type logFields struct{ attrs []any }

// SetLogField adds a key/value to the request's access-log line.
func SetLogField(ctx context.Context, key string, value any) {
	if f, ok := ctx.Value(keyLogFields).(*logFields); ok {
		f.attrs = append(f.attrs, key, value)
	}
}

// StatusWriter records the status and size of a response.
type StatusWriter struct {
	http.ResponseWriter
	Status int
	Bytes  int64
}

func (w *StatusWriter) WriteHeader(code int) {
	if w.Status == 0 {
		w.Status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *StatusWriter) Write(b []byte) (int, error) {
	if w.Status == 0 {
		w.Status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.Bytes += int64(n)
	return n, err
}

// Flush lets streaming handlers flush through the wrapper.
func (w *StatusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Hijack lets attach/exec take over the connection through the wrapper.
func (w *StatusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := w.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("connection cannot be hijacked")
	}
	if w.Status == 0 {
		w.Status = http.StatusSwitchingProtocols
	}
	return h.Hijack()
}

// Unwrap exposes the underlying writer to http.ResponseController.
func (w *StatusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Middleware assigns a request id (from Request-Id/X-Request-Id when sent),
// recovers panics as internal errors rendered by render, and writes one
// access-log line per request.
func Middleware(api string, logger *slog.Logger, render RenderError) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			id := r.Header.Get("Request-Id")
			if id == "" {
				id = r.Header.Get("X-Request-Id")
			}
			if id == "" || len(id) > 128 {
				id = NewRequestID()
			}
			fields := &logFields{}
			ctx := context.WithValue(context.WithValue(r.Context(), keyRequestID, id), keyLogFields, fields)
			ctx = context.WithValue(ctx, keyLogger, logger)
			r = r.WithContext(ctx)
			sw := &StatusWriter{ResponseWriter: w}
			defer func() {
				if p := recover(); p != nil {
					if p == http.ErrAbortHandler {
						panic(p)
					}
					logger.Error("panic", "api", api, "request_id", id, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
					if sw.Status == 0 {
						render(sw, r, errdefs.New(errdefs.Internal, "internal error"))
					}
				}
				attrs := []any{"api", api, "request_id", id, "method", r.Method, "path", r.URL.Path,
					"status", sw.Status, "bytes", sw.Bytes, "ms", float64(time.Since(start).Microseconds()) / 1000, "remote", r.RemoteAddr}
				attrs = append(attrs, fields.attrs...)
				logger.Info("request", attrs...)
			}()
			next.ServeHTTP(sw, r)
		})
	}
}

// DecodeJSON decodes a JSON body of at most limit bytes into v. An empty
// body leaves v untouched. Unknown fields are allowed unless strict.
func DecodeJSON(r *http.Request, limit int64, strict bool, v any) error {
	body, err := ReadBody(r, limit)
	if err != nil {
		return err
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		return errdefs.Wrap(errdefs.Invalid, err, "invalid JSON body: %s", jsonErrorText(err))
	}
	if dec.More() {
		return errdefs.InvalidArgument("invalid JSON body: trailing data after the JSON value")
	}
	return nil
}

// ErrTooLarge is the code-carrying error for an oversized body (the same
// sentinel as errdefs.ErrTooLarge, which layers without HTTP wrap).
var ErrTooLarge = errdefs.ErrTooLarge

// ReadBody reads at most limit bytes of the body; more is an Invalid error
// wrapping ErrTooLarge.
func ReadBody(r *http.Request, limit int64) ([]byte, error) {
	if r.Body == nil {
		return nil, nil
	}
	if r.ContentLength > limit {
		return nil, errdefs.Wrap(errdefs.Invalid, ErrTooLarge, "request body is larger than %d bytes", limit)
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Invalid, err, "reading request body")
	}
	if int64(len(b)) > limit {
		return nil, errdefs.Wrap(errdefs.Invalid, ErrTooLarge, "request body is larger than %d bytes", limit)
	}
	return b, nil
}

func jsonErrorText(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("syntax error at offset %d", syn.Offset)
	case errors.As(err, &typ):
		if typ.Field != "" {
			return fmt.Sprintf("field %q must be %s, not %s", typ.Field, typ.Type, typ.Value)
		}
		return fmt.Sprintf("expected %s, not %s", typ.Type, typ.Value)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "unexpected end of input"
	}
	return err.Error()
}

// WriteJSON writes v as JSON with status and an exact Content-Length.
func WriteJSON(w http.ResponseWriter, status int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "encoding response")
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", fmt.Sprint(len(b)))
	w.WriteHeader(status)
	_, err = w.Write(b)
	return err
}
