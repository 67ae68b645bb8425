package service

import (
	"context"
	"net/netip"
	"unicode/utf8"

	"github.com/google/uuid"

	"flotilla/api/errdefs"
	"flotilla/fwrule"
	"flotilla/store"
)

// maxFirewallDescription bounds a rule's description.
const maxFirewallDescription = 256

// FirewallRuleChange is a create or an update of a firewall rule; nil
// fields are left as they are (on create: disabled, no description).
type FirewallRuleChange struct {
	Rule        *string
	Enabled     *bool
	Description *string
}

// canonical parses text and returns its canonical form; a rule that does
// not parse is Invalid with the parser's explanation.
func canonicalRule(text string) (string, error) {
	r, err := fwrule.Parse(text)
	if err != nil {
		return "", err
	}
	return r.String(), nil
}

func (ch *FirewallRuleChange) normalise() error {
	if ch.Rule != nil {
		text, err := canonicalRule(*ch.Rule)
		if err != nil {
			return err
		}
		ch.Rule = &text
	}
	if ch.Description != nil {
		if !utf8.ValidString(*ch.Description) || len(*ch.Description) > maxFirewallDescription {
			return errdefs.InvalidArgument("description must be UTF-8 text of at most %d bytes", maxFirewallDescription)
		}
	}
	return nil
}

// CreateFirewallRule adds a rule to the caller's account. The rule text is
// required and stored in canonical form.
func (s *Service) CreateFirewallRule(ctx context.Context, c Caller, ch FirewallRuleChange) (store.FirewallRule, error) {
	if ch.Rule == nil || *ch.Rule == "" {
		return store.FirewallRule{}, &errdefs.Error{Code: errdefs.Invalid, Message: "rule is a required argument", Reason: "MissingParameter"}
	}
	if err := ch.normalise(); err != nil {
		return store.FirewallRule{}, err
	}
	r := store.FirewallRule{ID: uuid.NewString(), OwnerID: c.AccountID, Rule: *ch.Rule}
	if ch.Enabled != nil {
		r.Enabled = *ch.Enabled
	}
	if ch.Description != nil {
		r.Description = *ch.Description
	}
	return s.Store.CreateFirewallRule(ctx, r)
}

// UpdateFirewallRule changes the given fields of one of the caller's rules.
func (s *Service) UpdateFirewallRule(ctx context.Context, c Caller, id string, ch FirewallRuleChange) (store.FirewallRule, error) {
	if err := ch.normalise(); err != nil {
		return store.FirewallRule{}, err
	}
	return s.Store.UpdateFirewallRule(ctx, c.AccountID, id, store.FirewallRuleUpdate{Rule: ch.Rule, Enabled: ch.Enabled, Description: ch.Description})
}

// MemberOf is the instance as rules see it.
func MemberOf(in store.Instance) fwrule.Member {
	m := fwrule.Member{ID: in.ID, Tags: in.Tags}
	for _, n := range in.NICs {
		if a, err := netip.ParseAddr(n.IP); err == nil {
			m.IPs = append(m.IPs, a.Unmap())
		}
	}
	return m
}

// InstanceFirewallRules returns the caller's rules, enabled or not, that
// name the instance on either side (CloudAPI ListMachineFirewallRules).
func (s *Service) InstanceFirewallRules(ctx context.Context, c Caller, in store.Instance) ([]store.FirewallRule, error) {
	rules, err := s.Store.ListFirewallRules(ctx, c.AccountID)
	if err != nil {
		return nil, err
	}
	m := MemberOf(in)
	out := []store.FirewallRule{}
	for _, r := range rules {
		p, err := fwrule.Parse(r.Rule)
		if err != nil {
			s.Log.Warn("stored firewall rule does not parse", "account", c.AccountID, "rule", r.ID, "err", err)
			continue
		}
		if p.AppliesTo(m) {
			out = append(out, r)
		}
	}
	return out, nil
}

// FirewallRuleInstances returns the caller's live instances that rule id
// names on either side (CloudAPI ListFirewallRuleMachines).
func (s *Service) FirewallRuleInstances(ctx context.Context, c Caller, id string) ([]store.Instance, error) {
	r, err := s.Store.GetFirewallRule(ctx, c.AccountID, id)
	if err != nil {
		return nil, err
	}
	p, err := fwrule.Parse(r.Rule)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "stored firewall rule %s does not parse", id)
	}
	var out []store.Instance
	for offset := 0; ; offset += 1000 {
		page, err := s.Store.ListInstances(ctx, c.AccountID, store.InstanceFilter{Limit: 1000, Offset: offset})
		if err != nil {
			return nil, err
		}
		for _, in := range page {
			if p.AppliesTo(MemberOf(in)) {
				out = append(out, in)
			}
		}
		if len(page) < 1000 {
			return out, nil
		}
	}
}
