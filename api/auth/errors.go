package auth

import (
	"flotilla/api/errdefs"
)

// Messages CloudAPI sends for authentication failures (sdc-cloudapi
// lib/auth.js). Clients and people grep for them, so they are kept verbatim.
const (
	// MsgAuthRequired answers a request without usable credentials.
	MsgAuthRequired = "You must make authenticated requests to use CloudAPI"
	// MsgInvalidCredentials answers an unknown login, unknown key or bad
	// signature alike, so that a caller cannot probe which one it was.
	MsgInvalidCredentials = "Invalid authorization credentials supplied"
	// MsgAccountDisabled answers a disabled account or user.
	MsgAccountDisabled = "Account or user is disabled"

	msgInvalidHeaderPrefix = "Authorization header invalid: "
)

// ErrAuthRequired returns the 401 InvalidCredentials error for a request that
// carries no Authorization header or one in a scheme other than Signature.
func ErrAuthRequired() *errdefs.Error {
	return errdefs.New(errdefs.Unauthorized, MsgAuthRequired)
}

// ErrInvalidCredentials returns the 401 InvalidCredentials error for an unknown
// login or key or a signature that does not verify. cause is kept for logs only.
func ErrInvalidCredentials(cause error) *errdefs.Error {
	return &errdefs.Error{Code: errdefs.Unauthorized, Message: MsgInvalidCredentials, Err: cause}
}

// ErrAccountDisabled returns the 403 NotAuthorized error for a disabled account.
func ErrAccountDisabled() *errdefs.Error {
	return errdefs.New(errdefs.Forbidden, MsgAccountDisabled)
}

// ErrThrottled returns the 429 error a rate-limited request gets, with the
// message restify's throttle sends (rate in requests per second).
func ErrThrottled(rate float64) *errdefs.Error {
	return errdefs.New(errdefs.TooManyRequests, "You have exceeded your request rate of %g r/s.", rate)
}

func errInvalidHeader(format string, args ...any) *errdefs.Error {
	return errdefs.New(errdefs.Invalid, msgInvalidHeaderPrefix+format, args...)
}

// RestCode returns the CloudAPI error code ("restCode") for an error returned by
// this package: InvalidCredentials (401), InvalidHeader (400), NotAuthorized
// (403) or TooManyRequests (429); InternalError for anything else. Pair it with
// errdefs.MessageOf for the body {"code":..,"message":..}. It is meant for
// errors from this package only: a generic Invalid error from elsewhere is a
// CloudAPI InvalidArgument, not an InvalidHeader.
func RestCode(err error) string {
	switch errdefs.CodeOf(err) {
	case errdefs.Unauthorized:
		return "InvalidCredentials"
	case errdefs.Invalid:
		return "InvalidHeader"
	case errdefs.Forbidden:
		return "NotAuthorized"
	case errdefs.TooManyRequests:
		return "TooManyRequests"
	default:
		return "InternalError"
	}
}
