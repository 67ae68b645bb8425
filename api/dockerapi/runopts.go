package dockerapi

import (
	"runtime"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

// runOptions turns the run options of a create into the container's,
// refusing (400, saying what to do instead) every option this cloud cannot
// honour: none is silently ignored. platform is the create's ?platform=.
func runOptions(hc container.HostConfig, nc *network.NetworkingConfig, platform string) (driver.ContainerOptions, error) {
	var o driver.ContainerOptions
	if err := checkPlatform(platform); err != nil {
		return o, err
	}
	if hc.Init != nil && *hc.Init {
		return o, errdefs.InvalidArgument("--init is not supported by this cloud: no init binary is injected into containers; run an init such as tini as the image's entrypoint instead")
	}
	if nc != nil {
		for name, ep := range nc.EndpointsConfig {
			if ep != nil && ep.IPAMConfig != nil && (ep.IPAMConfig.IPv4Address != "" || ep.IPAMConfig.IPv6Address != "" || len(ep.IPAMConfig.LinkLocalIPs) > 0) {
				return o, errdefs.InvalidArgument("a fixed address (--ip, --ip6) on network %s is not supported by this cloud yet: every container gets an address from its network's IPAM; leave --ip out", name)
			}
		}
	}
	for _, m := range []struct{ flag, mode string }{{"--pid", string(hc.PidMode)}, {"--ipc", string(hc.IpcMode)},
		{"--uts", string(hc.UTSMode)}, {"--userns", string(hc.UsernsMode)}, {"--cgroupns", string(hc.CgroupnsMode)}} {
		switch m.mode {
		case "", "private", "shareable", "none":
			if m.mode == "none" && m.flag != "--ipc" {
				return o, errdefs.InvalidArgument("%s=none is not supported by this cloud: every container has its own namespaces", m.flag)
			}
		default:
			return o, errdefs.InvalidArgument("%s=%s is not supported by this cloud: every container has its own namespaces", m.flag, m.mode)
		}
	}
	switch {
	case len(hc.Devices) > 0 || len(hc.DeviceRequests) > 0 || len(hc.DeviceCgroupRules) > 0:
		return o, errdefs.InvalidArgument("host devices (--device, --gpus, --device-cgroup-rule) are not supported by this cloud: containers never reach their node's devices")
	case len(hc.Sysctls) > 0:
		return o, errdefs.InvalidArgument("--sysctl is not supported by this cloud: kernel parameters are the node's")
	case hc.Runtime != "" && hc.Runtime != "runc":
		return o, errdefs.InvalidArgument("runtime %q is not supported by this cloud: containers run under runc", hc.Runtime)
	case hc.CgroupParent != "":
		return o, errdefs.InvalidArgument("--cgroup-parent is not supported by this cloud: the node places every container's cgroup")
	case hc.OomKillDisable != nil && *hc.OomKillDisable:
		return o, errdefs.InvalidArgument("--oom-kill-disable is not supported by this cloud: a container over its memory limit is killed")
	}
	for _, so := range hc.SecurityOpt {
		if so != "no-new-privileges" && so != "no-new-privileges:true" && so != "no-new-privileges=true" {
			return o, errdefs.InvalidArgument("--security-opt %s is not supported by this cloud: containers always run with the default seccomp profile and no-new-privileges", so)
		}
	}
	o.ReadOnly = hc.ReadonlyRootfs
	o.ShmSize = hc.ShmSize
	if len(hc.Tmpfs) > 0 {
		o.Tmpfs = map[string]string{}
		for k, v := range hc.Tmpfs {
			o.Tmpfs[k] = v
		}
	}
	for _, u := range hc.Ulimits {
		if u != nil {
			o.Ulimits = append(o.Ulimits, driver.Ulimit{Name: u.Name, Soft: u.Soft, Hard: u.Hard})
		}
	}
	o.CapAdd, o.CapDrop = []string(hc.CapAdd), []string(hc.CapDrop)
	if h, w := hc.ConsoleSize[0], hc.ConsoleSize[1]; h > 0 && w > 0 && h <= 65535 && w <= 65535 {
		o.ConsoleHeight, o.ConsoleWidth = h, w
	}
	if err := o.Check(); err != nil {
		return o, err
	}
	return o, nil
}

// checkPlatform accepts the platform the nodes run (linux, linux/amd64 on
// amd64 nodes) and refuses others: no node could run the image.
func checkPlatform(p string) error {
	if p == "" {
		return nil
	}
	os, arch, _ := strings.Cut(strings.ToLower(p), "/")
	arch, _, _ = strings.Cut(arch, "/")
	if arch == "x86_64" || arch == "x86-64" {
		arch = "amd64"
	}
	if arch == "aarch64" {
		arch = "arm64"
	}
	if os != "linux" || arch != "" && arch != runtime.GOARCH {
		return errdefs.InvalidArgument("platform %q is not supported by this cloud: its nodes run linux/%s; use --platform linux/%s or leave it out", p, runtime.GOARCH, runtime.GOARCH)
	}
	return nil
}
