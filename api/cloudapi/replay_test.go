package cloudapi_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"flotilla/api/auth"
	"flotilla/api/errdefs"
)

// TestSignatureReplay: triton-go signs the Date alone, so the signature says
// nothing of the request it was made for. A signature captured from one
// request (here a harmless GET) must not authorise another (here adding the
// attacker's key to the account, which would hand the account over).
func TestSignatureReplay(t *testing.T) {
	e := newEnv(t)
	spare := authorizedKey(t, e.keys.spare, "attacker@evil")
	// Each subtest signs its own second: RSA signs one Date the same way.
	second := 0
	sign := func(form auth.Form, method, path string) http.Header {
		t.Helper()
		second++
		at := time.Now().Add(time.Duration(-second) * time.Second)
		s := e.newSigner("alice", e.keys.rsa, auth.WithForm(form), auth.WithClock(func() time.Time { return at }))
		req, _ := http.NewRequest(method, e.srv.URL+path, nil)
		if err := s.Sign(req); err != nil {
			t.Fatal(err)
		}
		return http.Header{"Authorization": req.Header.Values("Authorization"), "Date": req.Header.Values("Date")}
	}
	// Each party has its own connections: the victim keeps one alive, the
	// attacker opens a new one for every request.
	victim := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}}
	attacker := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	t.Cleanup(victim.CloseIdleConnections)
	send := func(c *http.Client, h http.Header, method, path string, body any) (int, []byte) {
		t.Helper()
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequest(method, e.srv.URL+path, rd)
		for k, v := range h {
			req.Header[k] = v
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	evilKey := map[string]string{"name": "evil", "key": spare}

	t.Run("ErrDateOnlyReplayedAsAnotherRequest", func(t *testing.T) {
		h := sign(auth.FormTritonGo, "GET", "/alice/machines")
		if code, b := send(victim, h, "GET", "/alice/machines", nil); code != http.StatusOK {
			t.Fatalf("victim's GET: %d %s", code, b)
		}
		code, b := send(attacker, h, "POST", "/alice/keys", evilKey)
		if code != http.StatusUnauthorized {
			t.Fatalf("captured GET signature replayed as POST /alice/keys: %d %s, want 401", code, b)
		}
		var body map[string]string
		json.Unmarshal(b, &body)
		if body["code"] != "InvalidCredentials" || body["message"] != errdefs.MessageOf(auth.ErrSignatureReplayed()) {
			t.Errorf("error body %s", b)
		}
		if _, err := e.st.GetKey(e.ctx, e.alice.ID, "evil"); err == nil {
			t.Fatal("the attacker's key was added")
		}
	})

	t.Run("ErrDateOnlyUsedFirstElsewhere", func(t *testing.T) {
		// Replayed before its own request arrived: the first use holds it.
		h := sign(auth.FormTritonGo, "GET", "/alice/machines")
		if code, b := send(attacker, h, "DELETE", "/alice/keys/nothing", nil); code != http.StatusNotFound {
			t.Fatalf("first use: %d %s", code, b)
		}
		if code, b := send(victim, h, "GET", "/alice/machines", nil); code != http.StatusUnauthorized {
			t.Fatalf("second use for another request on another connection: %d %s, want 401", code, b)
		}
	})

	t.Run("OKDateOnlyOneClientWithinASecond", func(t *testing.T) {
		// triton-go with an RSA key signs one Date the same way: its
		// requests within a second carry the same signature.
		h := sign(auth.FormTritonGo, "GET", "/alice/packages")
		if code, b := send(victim, h, "GET", "/alice/packages", nil); code != http.StatusOK {
			t.Fatalf("GET: %d %s", code, b)
		}
		if code, b := send(victim, h, "POST", "/alice/keys", map[string]string{"name": "second", "key": spare}); code != http.StatusCreated {
			t.Fatalf("POST on the same connection: %d %s, want 201", code, b)
		}
		if code, b := send(attacker, h, "GET", "/alice/packages", nil); code != http.StatusOK {
			t.Fatalf("the same request again: %d %s, want 200", code, b)
		}
	})

	t.Run("ErrRequestTargetReplayedAsAnotherRequest", func(t *testing.T) {
		h := sign(auth.FormNodeTriton, "GET", "/alice/machines")
		if code, b := send(attacker, h, "POST", "/alice/keys", evilKey); code != http.StatusUnauthorized {
			t.Fatalf("node-triton signature replayed as POST: %d %s, want 401", code, b)
		}
	})
}
