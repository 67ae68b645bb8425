package agent

import (
	"bufio"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"flotilla/api/errdefs"
)

// hostMemoryMiB reads MemTotal from /proc/meminfo.
func hostMemoryMiB() (int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, errdefs.Wrap(errdefs.Internal, err, "agent: detect memory (set MemoryMiB explicitly)")
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil {
				break
			}
			return kb / 1024, nil
		}
	}
	return 0, errdefs.New(errdefs.Internal, "agent: no MemTotal in /proc/meminfo (set MemoryMiB explicitly)")
}

// hostDiskMiB returns the space available to unprivileged users on the
// file system holding dir.
func hostDiskMiB(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, errdefs.Wrap(errdefs.Internal, err, "agent: statfs %s (set DiskMiB explicitly)", dir)
	}
	return int64(st.Bavail) * int64(st.Bsize) / (1 << 20), nil
}

func hostVCPUs() float64 { return float64(runtime.NumCPU()) }
