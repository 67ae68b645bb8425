package dockerapi

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"flotilla/api/errdefs"
)

// TestCreateRunOptions posts create bodies with each run option: the ones
// this cloud cannot honour are refused with 400 and a message that names
// them, the ones it implements are accepted. None is silently ignored.
func TestCreateRunOptions(t *testing.T) {
	e := newTestEnv(t)
	c := e.client("alice")
	tests := []struct {
		name     string
		query    string
		host     string // HostConfig JSON
		net      string // NetworkingConfig JSON
		status   int
		contains string
	}{
		{"ErrInit", "", `{"Init":true}`, "", 400, "--init is not supported"},
		{"ErrPlatformArm", "platform=linux/arm64", `{}`, "", 400, `platform "linux/arm64" is not supported`},
		{"ErrPlatformWindows", "platform=windows/amd64", `{}`, "", 400, "is not supported"},
		{"ErrIP", "", `{}`, `{"EndpointsConfig":{"default":{"IPAMConfig":{"IPv4Address":"10.0.0.9"}}}}`, 400, "--ip"},
		{"ErrIP6", "", `{}`, `{"EndpointsConfig":{"default":{"IPAMConfig":{"IPv6Address":"fd00::9"}}}}`, 400, "--ip6"},
		{"ErrCapSysAdmin", "", `{"CapAdd":["SYS_ADMIN"]}`, "", 400, "capability SYS_ADMIN cannot be added"},
		{"ErrCapNetAdmin", "", `{"CapAdd":["CAP_NET_ADMIN"]}`, "", 400, "capability NET_ADMIN cannot be added"},
		{"ErrCapSysModule", "", `{"CapAdd":["sys_module"]}`, "", 400, "capability SYS_MODULE cannot be added"},
		{"ErrCapAll", "", `{"CapAdd":["ALL"]}`, "", 400, "capability ALL cannot be added"},
		{"ErrCapUnknown", "", `{"CapAdd":["FLY"]}`, "", 400, "unknown capability"},
		{"ErrCapDropUnknown", "", `{"CapDrop":["FLY"]}`, "", 400, "unknown capability to drop"},
		{"ErrTmpfsRelative", "", `{"Tmpfs":{"scratch":""}}`, "", 400, "invalid --tmpfs mount point"},
		{"ErrTmpfsRoot", "", `{"Tmpfs":{"/":""}}`, "", 400, "invalid --tmpfs mount point"},
		{"ErrTmpfsSuid", "", `{"Tmpfs":{"/t":"suid"}}`, "", 400, `--tmpfs option "suid" is not allowed`},
		{"ErrTmpfsSize", "", `{"Tmpfs":{"/t":"size=lots"}}`, "", 400, `invalid --tmpfs option "size=lots"`},
		{"ErrUlimitName", "", `{"Ulimits":[{"Name":"bogus","Soft":1,"Hard":1}]}`, "", 400, `invalid --ulimit "bogus"`},
		{"ErrUlimitSoftOverHard", "", `{"Ulimits":[{"Name":"nofile","Soft":10,"Hard":5}]}`, "", 400, "soft limit must not exceed"},
		{"ErrUlimitHuge", "", `{"Ulimits":[{"Name":"nofile","Soft":10,"Hard":99999999}]}`, "", 400, "at most"},
		{"ErrShmTiny", "", `{"ShmSize":12}`, "", 400, "invalid --shm-size"},
		{"ErrPidHost", "", `{"PidMode":"host"}`, "", 400, "--pid=host is not supported"},
		{"ErrIpcHost", "", `{"IpcMode":"host"}`, "", 400, "--ipc=host is not supported"},
		{"ErrUTSHost", "", `{"UTSMode":"host"}`, "", 400, "--uts=host is not supported"},
		{"ErrUsernsHost", "", `{"UsernsMode":"host"}`, "", 400, "--userns=host is not supported"},
		{"ErrDevice", "", `{"Devices":[{"PathOnHost":"/dev/kvm","PathInContainer":"/dev/kvm","CgroupPermissions":"rwm"}]}`, "", 400, "host devices"},
		{"ErrSysctl", "", `{"Sysctls":{"net.ipv4.ip_forward":"1"}}`, "", 400, "--sysctl is not supported"},
		{"ErrRuntime", "", `{"Runtime":"kata"}`, "", 400, `runtime "kata" is not supported`},
		{"ErrCgroupParent", "", `{"CgroupParent":"/x"}`, "", 400, "--cgroup-parent"},
		{"ErrSeccompUnconfined", "", `{"SecurityOpt":["seccomp=unconfined"]}`, "", 400, "--security-opt seccomp=unconfined"},
		{"ErrOomKillDisable", "", `{"OomKillDisable":true}`, "", 400, "--oom-kill-disable"},
		{"ErrStopSignal", "", `{}`, "", 400, "invalid --stop-signal"},
		{"OK", "", `{}`, "", 201, ""},
		{"OKPlatform", "platform=linux/amd64", `{}`, "", 201, ""},
		{"OKImplemented", "", `{"ReadonlyRootfs":true,"Tmpfs":{"/scratch":"size=1m,mode=1777"},"ShmSize":16777216,` +
			`"Ulimits":[{"Name":"nofile","Soft":1024,"Hard":2048}],"CapAdd":["SYS_NICE"],"CapDrop":["CHOWN"],` +
			`"SecurityOpt":["no-new-privileges"]}`, "", 201, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := `"Image":"busybox","Cmd":["true"]`
			if tc.name == "ErrStopSignal" {
				cfg += `,"StopSignal":"NOPE"`
			}
			body := `{` + cfg + `,"HostConfig":` + tc.host
			if tc.net != "" {
				body += `,"NetworkingConfig":` + tc.net
			}
			body += `}`
			url := e.srv.URL + "/v1.51/containers/create"
			if tc.query != "" {
				url += "?" + tc.query
			}
			resp, err := c.Post(url, "application/json", strings.NewReader(body))
			must(t, err)
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, b)
			}
			if tc.status != http.StatusCreated {
				var er struct{ Message string }
				if json.Unmarshal(b, &er) != nil || !strings.Contains(er.Message, tc.contains) {
					t.Fatalf("message %s, want it to contain %q", b, tc.contains)
				}
			}
		})
	}
	// Nothing refused was written.
	if out := e.ok("alice", "ps", "-a", "-q"); strings.Count(out, "\n") != 3 {
		t.Fatalf("containers after the table: %q, want the 3 accepted ones", out)
	}
}

// FuzzParseSignal checks that any signal string either parses to a Linux
// signal number or is refused as Invalid.
func FuzzParseSignal(f *testing.F) {
	for _, s := range []string{"", "KILL", "SIGKILL", "sighup", "9", "64", "65", "0", "-1", "RTMIN+3", "RTMAX-2", "SIGRTMIN+99", "NOPE", "SIG"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseSignal(s, 15)
		if err != nil {
			if !errdefs.Is(err, errdefs.Invalid) {
				t.Fatalf("parseSignal(%q): %v is not Invalid", s, err)
			}
			return
		}
		if n < 1 || n > 64 {
			t.Fatalf("parseSignal(%q) = %d", s, n)
		}
	})
}
