package cloudapi

import (
	"fmt"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"flotilla/api/errdefs"
	"flotilla/store"
)

func (s *Server) accountRoutes(r chi.Router) {
	getHead(r, "/", s.handle(s.getAccount))
	r.Post("/", s.handle(s.updateAccount))
	getHead(r, "/limits", s.handle(s.getLimits))
}

// isoTime renders times as CloudAPI does: UTC with milliseconds.
func isoTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }

func accountJSON(a store.Account) map[string]any {
	m := map[string]any{"id": a.ID, "login": a.Login, "email": a.Email}
	for k, v := range map[string]string{"companyName": a.CompanyName, "firstName": a.FirstName, "lastName": a.LastName,
		"address": a.Address, "postalCode": a.PostalCode, "city": a.City, "state": a.State, "country": a.Country, "phone": a.Phone} {
		if v != "" {
			m[k] = v
		}
	}
	m["triton_cns_enabled"] = a.TritonCNSEnabled
	m["updated"] = isoTime(a.UpdatedAt)
	m["created"] = isoTime(a.CreatedAt)
	return m
}

func (s *Server) getAccount(w http.ResponseWriter, r *http.Request) error {
	a, err := s.store.AccountByID(r.Context(), caller(r).AccountID)
	if err != nil {
		return err
	}
	return writeJSON(w, r, http.StatusOK, accountJSON(a))
}

func (s *Server) updateAccount(w http.ResponseWriter, r *http.Request) error {
	p, err := params(r)
	if err != nil {
		return err
	}
	var u store.AccountUpdate
	fields := map[string]**string{"email": &u.Email, "companyName": &u.CompanyName, "firstName": &u.FirstName,
		"lastName": &u.LastName, "address": &u.Address, "postalCode": &u.PostalCode, "city": &u.City,
		"state": &u.State, "country": &u.Country, "phone": &u.Phone}
	for k, dst := range fields {
		if v, ok := p[k]; ok {
			str, ok := v.(string)
			if !ok {
				return errdefs.InvalidArgument("%s must be a string", k)
			}
			*dst = &str
		}
	}
	if v, ok := p["triton_cns_enabled"]; ok {
		b, err := boolParam(v)
		if err != nil {
			return errdefs.InvalidArgument("triton_cns_enabled must be true or false")
		}
		u.TritonCNSEnabled = &b
	}
	a, err := s.store.UpdateAccount(r.Context(), caller(r).AccountID, u)
	if err != nil {
		return err
	}
	return writeJSON(w, r, http.StatusOK, accountJSON(a))
}

func (s *Server) getLimits(w http.ResponseWriter, r *http.Request) error {
	return writeJSON(w, r, http.StatusOK, []any{})
}

// boolParam accepts JSON booleans and the strings "true"/"false".
func boolParam(v any) (bool, error) {
	switch b := v.(type) {
	case bool:
		return b, nil
	case string:
		switch b {
		case "true":
			return true, nil
		case "false":
			return false, nil
		}
	}
	return false, fmt.Errorf("not a boolean: %v", v)
}

// stringParam returns p[k] as a string ("" when absent); other types are an error.
func stringParam(p map[string]any, k string) (string, error) {
	v, ok := p[k]
	if !ok || v == nil {
		return "", nil
	}
	switch s := v.(type) {
	case string:
		return s, nil
	default:
		return "", errdefs.InvalidArgument("%s must be a string", k)
	}
}
