// Package errdefs holds Flotilla's one error type. Every layer below the HTTP
// handlers returns *Error (or wraps one); the public APIs classify an error once
// with CodeOf and render it in their own dialect.
//
// Imports: standard library only.
package errdefs

import (
	"errors"
	"fmt"
	"net/http"
)

// ErrTooLarge marks an Invalid error about something over a size limit or
// a quota (a request body, an image, an account's stored bytes): the APIs
// answer it with 413 instead of 400.
var ErrTooLarge = errors.New("request body too large")

// Code classifies an error independently of any wire protocol.
type Code string

// The codes. Each maps to exactly one HTTP status per API dialect.
const (
	Invalid              Code = "invalid"
	NotFound             Code = "not_found"
	Conflict             Code = "conflict"
	Unauthorized         Code = "unauthorized"
	Forbidden            Code = "forbidden"
	Gone                 Code = "gone"
	Unavailable          Code = "unavailable"
	InsufficientCapacity Code = "insufficient_capacity"
	NotImplemented       Code = "not_implemented"
	TooManyRequests      Code = "too_many_requests"
	Unprocessable        Code = "unprocessable"
	Internal             Code = "internal"
)

// Error is an application error: Code classifies it, Message is safe to show a
// client, Err carries the cause for logs only.
type Error struct {
	Code    Code
	Message string
	Err     error
	// Detail is an optional value a dialect may render (for example the
	// instance of a 410 Gone).
	Detail any
	// Reason is an optional finer classification a dialect may use for its
	// own error code (e.g. "CannotDestroyMachine").
	Reason string
}

func (e *Error) Error() string {
	switch {
	case e.Err != nil && e.Message != "":
		return e.Message + ": " + e.Err.Error()
	case e.Err != nil:
		return e.Err.Error()
	default:
		return e.Message
	}
}

func (e *Error) Unwrap() error { return e.Err }

// New returns an error with the given code and client-safe message.
func New(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Wrap returns an error with the given code and message that keeps err as its cause.
func Wrap(code Code, err error, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), Err: err}
}

// Shorthands for the common codes.
func InvalidArgument(format string, args ...any) *Error { return New(Invalid, format, args...) }
func NotFoundf(format string, args ...any) *Error       { return New(NotFound, format, args...) }
func Conflictf(format string, args ...any) *Error       { return New(Conflict, format, args...) }

// Coded is implemented by errors of pure packages that cannot import this
// one (the scheduler): ErrorCode returns one of the Code values.
type Coded interface {
	error
	ErrorCode() string
}

// CodeOf returns the code of the first *Error (or Coded error) in err's
// chain, or Internal.
func CodeOf(err error) Code {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	var c Coded
	if errors.As(err, &c) {
		return Code(c.ErrorCode())
	}
	return Internal
}

// MessageOf returns the client-safe message of err: the *Error's message, or a
// generic text for internal errors so that no cause leaks to a client.
func MessageOf(err error) string {
	var e *Error
	if errors.As(err, &e) && e.Code != Internal && e.Message != "" {
		return e.Message
	}
	var c Coded
	if errors.As(err, &c) && Code(c.ErrorCode()) != Internal {
		return c.Error()
	}
	return "internal error"
}

// DetailOf returns the Detail of the first *Error in err's chain, if any.
func DetailOf(err error) any {
	var e *Error
	if errors.As(err, &e) {
		return e.Detail
	}
	return nil
}

// ReasonOf returns the Reason of the first *Error in err's chain, or "".
func ReasonOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

// Is reports whether err carries the given code.
func Is(err error, code Code) bool { return err != nil && CodeOf(err) == code }

// HTTPStatus is the status Flotilla's own HTTP APIs (the agent API and the
// node stream API) answer for a code, with {"code","message"} bodies. The
// public dialects keep their own tables (CloudAPI, Docker).
func HTTPStatus(c Code) int {
	switch c {
	case Invalid:
		return http.StatusBadRequest
	case NotFound:
		return http.StatusNotFound
	case Conflict, InsufficientCapacity:
		return http.StatusConflict
	case Unauthorized:
		return http.StatusUnauthorized
	case Forbidden:
		return http.StatusForbidden
	case Gone:
		return http.StatusGone
	case Unavailable:
		return http.StatusServiceUnavailable
	case NotImplemented:
		return http.StatusNotImplemented
	case TooManyRequests:
		return http.StatusTooManyRequests
	case Unprocessable:
		return http.StatusUnprocessableEntity
	}
	return http.StatusInternalServerError
}

// CodeForStatus classifies an HTTP status whose body carried no code.
func CodeForStatus(status int) Code {
	switch status {
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusMethodNotAllowed:
		return Invalid
	case http.StatusNotFound:
		return NotFound
	case http.StatusConflict:
		return Conflict
	case http.StatusUnauthorized:
		return Unauthorized
	case http.StatusForbidden:
		return Forbidden
	case http.StatusGone:
		return Gone
	case http.StatusTooManyRequests:
		return TooManyRequests
	case http.StatusUnprocessableEntity:
		return Unprocessable
	case http.StatusNotImplemented:
		return NotImplemented
	case http.StatusServiceUnavailable, http.StatusBadGateway, http.StatusGatewayTimeout:
		return Unavailable
	}
	return Internal
}
