package main

import (
	"flag"
	"fmt"
	"strings"

	units "github.com/docker/go-units"

	"flotilla/api/dockerapi"
	"flotilla/api/service"
)

// imageFlags are the operator's limits on image content, registry pulls
// and upload bodies, shared by serve and dev.
type imageFlags struct {
	RegistryAllow        string
	RegistryAllowPrivate bool
	ImageMax             sizeFlag
	AccountQuota         sizeFlag
	UploadMax            sizeFlag
	UploadInflight       sizeFlag
}

func (f *imageFlags) flags(fs *flag.FlagSet) {
	fs.StringVar(&f.RegistryAllow, "registry-allow", "", "comma-separated registries (host or host:port) that docker pull may reach (empty: any public registry)")
	fs.BoolVar(&f.RegistryAllowPrivate, "registry-allow-private", false, "let docker pull connect to loopback, link-local and private-network addresses")
	f.ImageMax = sizeFlag(service.DefaultMaxImageBytes)
	fs.Var(&f.ImageMax, "image-max-size", "largest image (config and layers) an account may pull or load, e.g. 10GiB")
	f.AccountQuota = sizeFlag(service.DefaultAccountImageBytes)
	fs.Var(&f.AccountQuota, "account-image-quota", "total size of the images one account may store, e.g. 50GiB")
	f.UploadMax = sizeFlag(dockerapi.DefaultUploadMaxBytes)
	fs.Var(&f.UploadMax, "upload-max-size", "largest body of one docker load, docker import or docker cp into a container, e.g. 2GiB")
	f.UploadInflight = sizeFlag(dockerapi.DefaultUploadInflightBytes)
	fs.Var(&f.UploadInflight, "upload-inflight-quota", "total of one account's docker load/import/cp bodies being received at once, e.g. 4GiB")
}

// policy is the service layer's image policy the flags describe.
func (f imageFlags) policy() service.ImagePolicy {
	var allow []string
	for _, a := range strings.Split(f.RegistryAllow, ",") {
		if a = strings.TrimSpace(a); a != "" {
			allow = append(allow, a)
		}
	}
	return service.ImagePolicy{RegistryAllow: allow, RegistryAllowPrivate: f.RegistryAllowPrivate,
		MaxImageBytes: int64(f.ImageMax), AccountImageBytes: int64(f.AccountQuota)}
}

// sizeFlag is a byte count given as "512MiB", "2GiB", "1g" or plain bytes.
type sizeFlag int64

func (s *sizeFlag) String() string { return units.BytesSize(float64(*s)) }

func (s *sizeFlag) Set(v string) error {
	n, err := units.RAMInBytes(v)
	if err != nil || n <= 0 {
		return fmt.Errorf("%q is not a size (say 512MiB or 2GiB)", v)
	}
	*s = sizeFlag(n)
	return nil
}
