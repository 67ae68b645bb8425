package cloudapi

import (
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"

	"flotilla/api/errdefs"
	"flotilla/api/service"
	"flotilla/store"
)

func (s *Server) fwruleRoutes(r chi.Router) {
	getHead(r, "/fwrules", s.handle(s.listFwrules))
	r.Post("/fwrules", s.handle(s.createFwrule))
	getHead(r, "/fwrules/{id}", s.handle(s.getFwrule))
	r.Post("/fwrules/{id}", s.handle(s.updateFwrule))
	r.Post("/fwrules/{id}/enable", s.handle(s.setFwruleEnabled(true)))
	r.Post("/fwrules/{id}/disable", s.handle(s.setFwruleEnabled(false)))
	r.Delete("/fwrules/{id}", s.handle(s.deleteFwrule))
	getHead(r, "/fwrules/{id}/machines", s.handle(s.listFwruleMachines))
}

func fwruleJSON(f store.FirewallRule) map[string]any {
	m := map[string]any{"id": f.ID, "rule": f.Rule, "enabled": f.Enabled, "log": false}
	if f.Description != "" {
		m["description"] = f.Description
	}
	return m
}

func fwrulesJSON(list []store.FirewallRule) []any {
	out := make([]any, 0, len(list))
	for _, f := range list {
		out = append(out, fwruleJSON(f))
	}
	return out
}

// fwruleChange reads rule, enabled, log and description; log is accepted
// (rules are not logged) but must be a boolean.
func fwruleChange(r *http.Request) (service.FirewallRuleChange, error) {
	var ch service.FirewallRuleChange
	p, err := params(r)
	if err != nil {
		return ch, err
	}
	if v, ok := p["rule"]; ok && v != nil {
		text, ok := v.(string)
		if !ok {
			return ch, errdefs.InvalidArgument("rule must be a string")
		}
		ch.Rule = &text
	}
	if v, ok := p["description"]; ok && v != nil {
		d, ok := v.(string)
		if !ok {
			return ch, errdefs.InvalidArgument("description must be a string")
		}
		ch.Description = &d
	}
	for _, k := range []string{"enabled", "log"} {
		v, ok := p[k]
		if !ok || v == nil {
			continue
		}
		b, err := boolParam(v)
		if err != nil {
			return ch, errdefs.InvalidArgument("%s must be a boolean", k)
		}
		if k == "enabled" {
			ch.Enabled = &b
		}
	}
	return ch, nil
}

func (s *Server) listFwrules(w http.ResponseWriter, r *http.Request) error {
	list, err := s.store.ListFirewallRules(r.Context(), caller(r).AccountID)
	if err != nil {
		return err
	}
	return writeJSON(w, r, http.StatusOK, fwrulesJSON(list))
}

func (s *Server) getFwrule(w http.ResponseWriter, r *http.Request) error {
	f, err := s.store.GetFirewallRule(r.Context(), caller(r).AccountID, pathParam(r, "id"))
	if err != nil {
		return err
	}
	return writeJSON(w, r, http.StatusOK, fwruleJSON(f))
}

func (s *Server) createFwrule(w http.ResponseWriter, r *http.Request) error {
	ch, err := fwruleChange(r)
	if err != nil {
		return err
	}
	f, err := s.svc.CreateFirewallRule(r.Context(), caller(r), ch)
	if err != nil {
		return err
	}
	return writeJSON(w, r, http.StatusCreated, fwruleJSON(f))
}

func (s *Server) updateFwrule(w http.ResponseWriter, r *http.Request) error {
	ch, err := fwruleChange(r)
	if err != nil {
		return err
	}
	f, err := s.svc.UpdateFirewallRule(r.Context(), caller(r), pathParam(r, "id"), ch)
	if err != nil {
		return err
	}
	return writeJSON(w, r, http.StatusOK, fwruleJSON(f))
}

func (s *Server) setFwruleEnabled(on bool) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		f, err := s.svc.UpdateFirewallRule(r.Context(), caller(r), pathParam(r, "id"), service.FirewallRuleChange{Enabled: &on})
		if err != nil {
			return err
		}
		return writeJSON(w, r, http.StatusOK, fwruleJSON(f))
	}
}

func (s *Server) deleteFwrule(w http.ResponseWriter, r *http.Request) error {
	if err := s.store.DeleteFirewallRule(r.Context(), caller(r).AccountID, pathParam(r, "id")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) listFwruleMachines(w http.ResponseWriter, r *http.Request) error {
	list, err := s.svc.FirewallRuleInstances(r.Context(), caller(r), pathParam(r, "id"))
	if err != nil {
		return err
	}
	out := make([]any, 0, len(list))
	for _, in := range list {
		out = append(out, machineJSON(in, false))
	}
	w.Header().Set("x-resource-count", strconv.Itoa(len(out)))
	return writeJSON(w, r, http.StatusOK, out)
}

func (s *Server) listMachineFwrules(w http.ResponseWriter, r *http.Request) error {
	in, err := s.getOwned(r)
	if err != nil {
		return err
	}
	list, err := s.svc.InstanceFirewallRules(r.Context(), caller(r), in)
	if err != nil {
		return err
	}
	return writeJSON(w, r, http.StatusOK, fwrulesJSON(list))
}
