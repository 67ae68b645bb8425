package testenv

import (
	"fmt"
	"testing"
)

// recorder records what Need asked of the test.
type recorder struct {
	testing.TB
	fatal, skip string
}

func (r *recorder) Helper()                      {}
func (r *recorder) Fatalf(f string, args ...any) { r.fatal = fmt.Sprintf(f, args...) }
func (r *recorder) Skipf(f string, args ...any)  { r.skip = fmt.Sprintf(f, args...) }

func TestNeed(t *testing.T) {
	t.Setenv("CI", "")
	r := &recorder{}
	NeedCommand(r, "no-such-tool-anywhere", "no-such-package")
	if r.skip == "" || r.fatal != "" {
		t.Fatalf("outside CI a missing tool skips: fatal %q, skip %q", r.fatal, r.skip)
	}
	t.Setenv("CI", "true")
	r = &recorder{}
	NeedFile(r, "/no/such/file", "no-such-package")
	if r.fatal == "" || r.skip != "" {
		t.Fatalf("under CI a missing tool fails: fatal %q, skip %q", r.fatal, r.skip)
	}
	r = &recorder{}
	NeedCommand(r, "sh", "dash")
	if r.fatal != "" || r.skip != "" {
		t.Fatalf("a present tool neither fails nor skips: fatal %q, skip %q", r.fatal, r.skip)
	}
}
