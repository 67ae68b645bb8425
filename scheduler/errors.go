package scheduler

import "fmt"

// Error is the scheduler's error. Code is one of the project's error codes
// ("invalid", "not_found", "insufficient_capacity"); errdefs.CodeOf reads it
// through ErrorCode, so this pure package needs nothing from the API layer.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }

// ErrorCode classifies the error for errdefs.CodeOf.
func (e *Error) ErrorCode() string { return e.Code }

func errInvalid(format string, args ...any) error {
	return &Error{Code: "invalid", Message: fmt.Sprintf(format, args...)}
}

func errNotFound(format string, args ...any) error {
	return &Error{Code: "not_found", Message: fmt.Sprintf(format, args...)}
}

func errNoFit(format string, args ...any) error {
	return &Error{Code: "insufficient_capacity", Message: fmt.Sprintf(format, args...)}
}
