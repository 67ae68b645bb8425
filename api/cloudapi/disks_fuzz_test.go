package cloudapi

import (
	"testing"

	"flotilla/api/errdefs"
)

// FuzzDiskRequests feeds arbitrary JSON as CreateMachine's disks and a
// disk size: the parsers answer Invalid or sizes in range, never panic.
func FuzzDiskRequests(f *testing.F) {
	for _, seed := range []string{
		`[{"size":64}]`, `[{"boot":true},{"size":"remaining"}]`, `[{"size":"64"}]`, `"[{\"size\":1}]"`,
		`[{"size":-1}]`, `[{"size":1.5}]`, `[{"size":1e30}]`, `[{"size":"remaining","boot":"true","block_size":512}]`,
		`[{"block_size":4096}]`, `[1,2]`, `{}`, `null`, `"not json"`, `[{},{},{},{},{},{},{},{},{}]`,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, body string) {
		var v any
		if jsonUnmarshal([]byte(body), &v) != nil {
			return
		}
		reqs, err := diskRequests(v)
		if err != nil {
			if !errdefs.Is(err, errdefs.Invalid) {
				t.Fatalf("disks %s: %v is not Invalid", body, err)
			}
			return
		}
		if len(reqs) > 8 {
			t.Fatalf("disks %s: %d disks accepted", body, len(reqs))
		}
		for _, r := range reqs {
			if r.Remaining && r.SizeMiB != 0 || r.SizeMiB < 0 || r.SizeMiB > maxDiskMiB {
				t.Fatalf("disks %s: accepted %+v", body, r)
			}
		}
		size, remaining, err := diskSize(v, "size", true)
		if err == nil && !remaining && (size <= 0 || size > maxDiskMiB) {
			t.Fatalf("size %s: accepted %d", body, size)
		}
	})
}
