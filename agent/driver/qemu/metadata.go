package qemu

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

// metaKeyFile matches metadata keys that are also safe file names on the
// FAT config drive.
var metaKeyFile = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$`)

// yq quotes s as a YAML double-quoted scalar (a JSON string is one).
func yq(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// shq quotes s for a POSIX shell.
func shq(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func hostnameOf(spec driver.Spec) string {
	for _, h := range []string{spec.Hostname, spec.Name, spec.ID} {
		if h != "" {
			return h
		}
	}
	return "vm"
}

// configDriveFiles renders the config drive of spec: relative path ->
// content (see the package doc).
func configDriveFiles(spec driver.Spec) map[string][]byte {
	files := map[string][]byte{}
	host := hostnameOf(spec)

	var md strings.Builder
	fmt.Fprintf(&md, "instance-id: %s\nlocal-hostname: %s\n", yq(spec.ID), yq(host))
	var keys []string
	for _, l := range strings.Split(spec.Metadata["root_authorized_keys"], "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			keys = append(keys, l)
		}
	}
	if len(keys) > 0 {
		md.WriteString("public-keys:\n")
		for _, k := range keys {
			fmt.Fprintf(&md, "  - %s\n", yq(k))
		}
	}
	files["meta-data"] = []byte(md.String())

	switch {
	case spec.Metadata["user-data"] != "":
		files["user-data"] = []byte(spec.Metadata["user-data"])
	case spec.Metadata["user-script"] != "":
		files["user-data"] = []byte(spec.Metadata["user-script"])
	default:
		files["user-data"] = []byte("#cloud-config\n{}\n")
	}

	var nc strings.Builder
	nc.WriteString("version: 2\nethernets:\n")
	for i, nic := range spec.NICs {
		mac := nicMAC(spec.ID, i, nic)
		fmt.Fprintf(&nc, "  net%d:\n    match:\n      macaddress: %s\n", i, yq(mac))
		if nic.IP != "" {
			fmt.Fprintf(&nc, "    addresses: [%s]\n", yq(fmt.Sprintf("%s/%d", nic.IP, nic.PrefixLen)))
		}
		if nic.Gateway != "" && (nic.Primary || len(spec.NICs) == 1) {
			fmt.Fprintf(&nc, "    gateway4: %s\n", yq(nic.Gateway))
		}
		// The primary NIC gets the instance's resolv.conf choice (the
		// node's resolver on its gateway, unless the user chose servers).
		resolvers, search := nic.Resolvers, []string(nil)
		if (nic.Primary || len(spec.NICs) == 1) && len(spec.DNS.Nameservers) > 0 {
			resolvers, search = spec.DNS.Nameservers, spec.DNS.Search
		}
		if len(resolvers) > 0 {
			var rs, ss []string
			for _, r := range resolvers {
				rs = append(rs, yq(r))
			}
			fmt.Fprintf(&nc, "    nameservers:\n      addresses: [%s]\n", strings.Join(rs, ", "))
			for _, d := range search {
				ss = append(ss, yq(d))
			}
			if len(ss) > 0 {
				fmt.Fprintf(&nc, "      search: [%s]\n", strings.Join(ss, ", "))
			}
		}
		gw := nic.Gateway
		if !(nic.Primary || len(spec.NICs) == 1) {
			gw = ""
		}
		files[fmt.Sprintf("flotilla/net%d.env", i)] = []byte(fmt.Sprintf(
			"MAC=%s\nIP=%s\nPREFIX=%d\nGATEWAY=%s\nRESOLVERS=%s\nHOSTNAME=%s\n",
			shq(mac), shq(nic.IP), nic.PrefixLen, shq(gw), shq(strings.Join(resolvers, " ")), shq(host)))
	}
	if len(spec.NICs) == 0 {
		nc.Reset()
		nc.WriteString("version: 2\n")
	}
	files["network-config"] = []byte(nc.String())

	md2 := spec.Metadata
	if md2 == nil {
		md2 = map[string]string{}
	}
	js, _ := json.MarshalIndent(md2, "", "  ")
	files["flotilla/metadata.json"] = append(js, '\n')
	names := make([]string, 0, len(md2))
	for k := range md2 {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if metaKeyFile.MatchString(k) {
			files["flotilla/meta/"+k] = []byte(md2[k])
		}
	}
	return files
}

// writeConfigDrive replaces dir with the config drive of spec.
func writeConfigDrive(dir string, spec driver.Spec) error {
	if err := os.RemoveAll(dir); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "clear config drive %s", dir)
	}
	for _, sub := range []string{"", "flotilla", "flotilla/meta"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return errdefs.Wrap(errdefs.Internal, err, "create config drive %s", dir)
		}
	}
	for name, data := range configDriveFiles(spec) {
		if err := os.WriteFile(filepath.Join(dir, filepath.FromSlash(name)), data, 0o644); err != nil {
			return errdefs.Wrap(errdefs.Internal, err, "write config drive file %s", name)
		}
	}
	return nil
}
