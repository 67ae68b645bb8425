package errdefs

import (
	"errors"
	"fmt"
	"testing"
)

type coded struct{ code, msg string }

func (c coded) Error() string     { return c.msg }
func (c coded) ErrorCode() string { return c.code }

func TestClassify(t *testing.T) {
	cases := []struct {
		name     string
		err      error
		wantCode Code
		wantMsg  string
	}{
		{"Typed", New(NotFound, "VM %s not found", "x"), NotFound, "VM x not found"},
		{"Wrapped", fmt.Errorf("ctx: %w", Conflictf("taken")), Conflict, "taken"},
		{"CauseHidden", Wrap(Invalid, errors.New("pq: secret detail"), "bad input"), Invalid, "bad input"},
		{"Coded", fmt.Errorf("placing: %w", coded{"insufficient_capacity", "no node fits"}), InsufficientCapacity, "no node fits"},
		{"PlainIsInternal", errors.New("dial tcp: refused"), Internal, "internal error"},
		{"InternalHidesMessage", Wrap(Internal, errors.New("x"), "database error"), Internal, "internal error"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := CodeOf(c.err); got != c.wantCode {
				t.Errorf("CodeOf = %q, want %q", got, c.wantCode)
			}
			if got := MessageOf(c.err); got != c.wantMsg {
				t.Errorf("MessageOf = %q, want %q", got, c.wantMsg)
			}
		})
	}
	if CodeOf(nil) != "" {
		t.Error("CodeOf(nil) must be empty")
	}
	e := &Error{Code: Conflict, Message: "m", Reason: "CannotDestroyMachine", Detail: 42}
	if ReasonOf(fmt.Errorf("w: %w", e)) != "CannotDestroyMachine" || DetailOf(e) != 42 {
		t.Error("reason or detail lost through wrapping")
	}
}

// Every code but internal survives a trip through Flotilla's own HTTP APIs
// even when the body is lost; insufficient capacity travels as a conflict.
func TestHTTPStatusRoundTrip(t *testing.T) {
	for _, c := range []Code{Invalid, NotFound, Conflict, Unauthorized, Forbidden, Gone, Unavailable,
		NotImplemented, TooManyRequests, Unprocessable} {
		if got := CodeForStatus(HTTPStatus(c)); got != c {
			t.Errorf("%s -> %d -> %s", c, HTTPStatus(c), got)
		}
	}
	if HTTPStatus(InsufficientCapacity) != 409 || HTTPStatus(Internal) != 500 || CodeForStatus(502) != Unavailable {
		t.Error("capacity must be 409, internal 500, a bad gateway unavailable")
	}
}
