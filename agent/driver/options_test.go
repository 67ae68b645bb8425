package driver

import (
	"slices"
	"strings"
	"testing"

	"flotilla/api/errdefs"
)

func TestContainerOptionsCheck(t *testing.T) {
	tests := []struct {
		name string
		o    ContainerOptions
		err  string // "" = valid
	}{
		{"OK", ContainerOptions{ReadOnly: true, ShmSize: 1 << 20, Tmpfs: map[string]string{"/run": "size=1m,mode=755,noexec"},
			Ulimits: []Ulimit{{Name: "nofile", Soft: 10, Hard: 20}}, CapAdd: []string{"sys_nice", "CAP_CHOWN"}, CapDrop: []string{"ALL"}}, ""},
		{"ErrCapAddSysAdmin", ContainerOptions{CapAdd: []string{"SYS_ADMIN"}}, "cannot be added"},
		{"ErrCapAddUnknown", ContainerOptions{CapAdd: []string{"X"}}, "unknown capability"},
		{"ErrTmpfsDev", ContainerOptions{Tmpfs: map[string]string{"/x": "dev"}}, "not allowed"},
		{"ErrTmpfsMode", ContainerOptions{Tmpfs: map[string]string{"/x": "mode=999"}}, "invalid --tmpfs option"},
		{"ErrTmpfsComma", ContainerOptions{Tmpfs: map[string]string{"/x,y": ""}}, "mount point"},
		{"ErrUlimitNegative", ContainerOptions{Ulimits: []Ulimit{{Name: "core", Soft: -1, Hard: 0}}}, "soft limit"},
		{"ErrShm", ContainerOptions{ShmSize: -1}, "--shm-size"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.o.Check()
			if tc.err == "" {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				return
			}
			if !errdefs.Is(err, errdefs.Invalid) || !strings.Contains(errdefs.MessageOf(err), tc.err) {
				t.Fatalf("Check: %v, want Invalid containing %q", err, tc.err)
			}
		})
	}
}

// FuzzTmpfsMountOptions checks that any --tmpfs option string is either
// refused as Invalid or becomes mount options that keep nosuid and nodev
// and never turn them off.
func FuzzTmpfsMountOptions(f *testing.F) {
	for _, s := range []string{"", "size=64m", "size=64m,mode=1777,noexec", "suid", "dev", "mode=abc", "uid=0,gid=0", ",,ro,", "size=", "nr_inodes=10k,strictatime"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		opts, err := TmpfsMountOptions(s)
		if err != nil {
			if !errdefs.Is(err, errdefs.Invalid) {
				t.Fatalf("TmpfsMountOptions(%q): %v is not Invalid", s, err)
			}
			return
		}
		if !slices.Contains(opts, "nosuid") || !slices.Contains(opts, "nodev") || slices.Contains(opts, "suid") || slices.Contains(opts, "dev") {
			t.Fatalf("TmpfsMountOptions(%q) = %q", s, opts)
		}
	})
}
