package e2e

import (
	"regexp"
	"strings"
	"testing"
)

var createdRuleRE = regexp.MustCompile(`Created firewall rule ([0-9a-f-]{36})( \(disabled\))?`)

// TestTritonFirewallRules drives firewall rules and an instance's firewall
// with the triton CLI.
func TestTritonFirewallRules(t *testing.T) {
	requireTriton(t)
	webID := tritonCreate(t, "e2e-fw-web", "-t", "role=fwweb")
	// Other tests count the account's instances: leave none behind.
	t.Cleanup(func() {
		tri(t, "delete", "-f", "-w", webID)
	})

	out := tri(t, "fwrule", "create", "-D", "web from anywhere", `FROM any TO (tag "role" = "fwweb") ALLOW tcp PORT 80`)
	m := createdRuleRE.FindStringSubmatch(out)
	if m == nil || m[2] != "" {
		t.Fatalf("fwrule create printed %q, want \"Created firewall rule <uuid>\"", out)
	}
	id := m[1]
	out = tri(t, "fwrule", "create", "-d", `FROM all vms TO all vms BLOCK udp PORTS 5000-5010`)
	m = createdRuleRE.FindStringSubmatch(out)
	if m == nil || m[2] == "" {
		t.Fatalf("fwrule create -d printed %q, want \"Created firewall rule <uuid> (disabled)\"", out)
	}
	disabledID := m[1]
	t.Cleanup(func() {
		runTriton(t, nil, "fwrule", "delete", "-f", id, disabledID)
	})

	t.Run("Get", func(t *testing.T) {
		var r map[string]any
		triJSON(t, &r, "fwrule", "get", id)
		if field(r, "rule") != `FROM any TO tag "role" = "fwweb" ALLOW tcp PORT 80` || field(r, "enabled") != "true" ||
			field(r, "description") != "web from anywhere" {
			t.Errorf("fwrule get = %v", r)
		}
	})
	t.Run("List", func(t *testing.T) {
		var list []map[string]any
		triJSON(t, &list, "fwrule", "list", "-j")
		found := map[string]string{}
		for _, r := range list {
			found[field(r, "id")] = field(r, "enabled")
		}
		if found[id] != "true" || found[disabledID] != "false" {
			t.Errorf("fwrule list -j = %v, want both rules (enabled, disabled)", list)
		}
		// The table shows the short id and the rule text.
		table := tri(t, "fwrule", "list")
		if !strings.Contains(table, id[:8]) || !strings.Contains(table, "BLOCK udp PORTS 5000 - 5010") {
			t.Errorf("fwrule list:\n%s", table)
		}
	})
	t.Run("EnableDisable", func(t *testing.T) {
		tri(t, "fwrule", "enable", disabledID)
		var r map[string]any
		triJSON(t, &r, "fwrule", "get", disabledID)
		if field(r, "enabled") != "true" {
			t.Errorf("after enable: %v", r)
		}
		tri(t, "fwrule", "disable", disabledID)
		triJSON(t, &r, "fwrule", "get", disabledID)
		if field(r, "enabled") != "false" {
			t.Errorf("after disable: %v", r)
		}
	})
	t.Run("Update", func(t *testing.T) {
		tri(t, "fwrule", "update", disabledID, `rule=FROM all vms TO all vms BLOCK udp PORT 5000`)
		var r map[string]any
		triJSON(t, &r, "fwrule", "get", disabledID)
		if field(r, "rule") != "FROM all vms TO all vms BLOCK udp PORT 5000" {
			t.Errorf("after update: %v", r)
		}
	})
	t.Run("Instances", func(t *testing.T) {
		var list []map[string]any
		triJSON(t, &list, "fwrule", "instances", "-j", id)
		if len(list) != 1 || field(list[0], "id") != webID {
			t.Errorf("fwrule instances = %v, want only e2e-fw-web", list)
		}
	})
	t.Run("InstanceFirewall", func(t *testing.T) {
		tri(t, "instance", "enable-firewall", "-w", "e2e-fw-web")
		if in := instGet(t, webID); field(in, "firewall_enabled") != "true" {
			t.Errorf("after enable-firewall: firewall_enabled = %s", field(in, "firewall_enabled"))
		}
		var list []map[string]any
		triJSON(t, &list, "instance", "fwrules", "-j", "e2e-fw-web")
		ids := map[string]bool{}
		for _, r := range list {
			ids[field(r, "id")] = true
		}
		if len(list) != 2 || !ids[id] || !ids[disabledID] {
			t.Errorf("instance fwrules = %v, want the tag rule and the all-vms rule", list)
		}
		tri(t, "instance", "disable-firewall", "-w", "e2e-fw-web")
		if in := instGet(t, webID); field(in, "firewall_enabled") != "false" {
			t.Errorf("after disable-firewall: firewall_enabled = %s", field(in, "firewall_enabled"))
		}
	})
	t.Run("ErrBadRule", func(t *testing.T) {
		triFails(t, `port "0" is not a number from 1 to 65535`, "fwrule", "create", `FROM any TO all vms ALLOW tcp PORT 0`)
	})
	t.Run("Delete", func(t *testing.T) {
		tri(t, "fwrule", "delete", "-f", id)
		triFails(t, "not found", "fwrule", "get", id)
	})
}
