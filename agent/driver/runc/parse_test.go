package runc

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"flotilla/agent/driver"
)

func TestLogRotationAndSelection(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, fileLog)
	w, err := openLogWriter(p, 2000, 3)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 200; i++ {
		w.Write("stdout", []byte(fmt.Sprintf("line %03d\n", i)))
	}
	w.Write("stderr", []byte("partial"))
	w.Write("stderr", []byte(" done\nno newline"))
	w.Close()
	for _, f := range []string{p, p + ".1", p + ".2"} {
		fi, err := os.Stat(f)
		if err != nil || fi.Size() > 2000 {
			t.Errorf("log file %s: %v (size limit 2000)", f, err)
		}
	}
	if _, err := os.Stat(p + ".3"); err == nil {
		t.Error("more log files kept than configured")
	}
	read := func(opts driver.LogOptions) []string {
		ch := make(chan driver.LogEntry, 1000)
		if err := readLogs(context.Background(), p, 3, opts, func() bool { return false }, ch); err != nil {
			t.Fatal(err)
		}
		close(ch)
		var out []string
		for e := range ch {
			out = append(out, e.Stream+":"+string(e.Line))
		}
		return out
	}
	all := read(driver.LogOptions{Stdout: true, Stderr: true, Tail: -1})
	if len(all) < 20 || all[len(all)-1] != "stderr:no newline" || all[len(all)-2] != "stderr:partial done\n" {
		t.Fatalf("unexpected tail of logs: %q", all[max(0, len(all)-3):])
	}
	for i := 1; i < len(all)-2; i++ {
		if all[i] <= all[i-1] {
			t.Fatalf("logs out of order at %d: %q after %q", i, all[i], all[i-1])
		}
	}
	if got := read(driver.LogOptions{Stdout: true, Tail: 2}); strings.Join(got, "") != "stdout:line 198\nstdout:line 199\n" {
		t.Errorf("tail 2 of stdout = %q", got)
	}
	if got := read(driver.LogOptions{Stdout: true, Stderr: true, Tail: -1, Since: time.Now().Add(time.Hour)}); len(got) != 0 {
		t.Errorf("since the future = %q", got)
	}
	if got := read(driver.LogOptions{Stdout: true, Stderr: true, Tail: -1, Until: time.Now().Add(-time.Hour)}); len(got) != 0 {
		t.Errorf("until the past = %q", got)
	}
}

func TestLogsFollow(t *testing.T) {
	needRuntime(t)
	d := newDriver(t, "")
	id := testID("follow")
	create(t, d, baseSpec(id, "/bin/sh", "-c", "trap 'exit 0' TERM; i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.1 & wait; done"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ch := make(chan driver.LogEntry, 100)
	errc := make(chan error, 1)
	go func() { errc <- d.Logs(ctx, id, driver.LogOptions{Stdout: true, Follow: true, Tail: 0}, ch) }()
	for i := 0; i < 3; i++ {
		select {
		case e := <-ch:
			if !strings.HasPrefix(string(e.Line), "tick ") {
				t.Errorf("followed line %q", e.Line)
			}
		case <-ctx.Done():
			t.Fatal("no lines while following")
		}
	}
	if err := d.Stop(context.Background(), id, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	go func() {
		for range ch {
		}
	}()
	select {
	case err := <-errc:
		if err != nil {
			t.Errorf("Logs: %v", err)
		}
	case <-ctx.Done():
		t.Error("following did not end when the container stopped")
	}
}

// FuzzDemux: the attach stream parser must not panic or loop on any input,
// and must reproduce what a well-framed stream carried.
func FuzzDemux(f *testing.F) {
	var good bytes.Buffer
	writeFrame(&good, 1, []byte("out"))
	writeFrame(&good, 2, []byte("err"))
	f.Add(good.Bytes())
	f.Add([]byte{1, 0, 0, 0, 255, 255, 255, 255, 'x'})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		var out, errb bytes.Buffer
		err := demux(bytes.NewReader(data), &out, &errb)
		if err == nil {
			// Re-framing what was read must parse to the same bytes.
			var again bytes.Buffer
			writeFrame(&again, 1, out.Bytes())
			var o2, e2 bytes.Buffer
			if demux(&again, &o2, &e2) != nil || !bytes.Equal(o2.Bytes(), out.Bytes()) {
				t.Fatal("round trip failed")
			}
		}
	})
}

// FuzzResolveUser: user strings and /etc/passwd or /etc/group contents from
// an image are untrusted.
func FuzzResolveUser(f *testing.F) {
	f.Add("root", "root:x:0:0:root:/root:/bin/sh\n", "root:x:0:\n")
	f.Add("1000:grp", "u:x:1000:1000::/:/bin/sh\n", "grp:x:77:\n")
	f.Add("nobody:", "nobody:x:65534\n", "")
	f.Add("::", ":::\n", ":\n")
	f.Fuzz(func(t *testing.T, user, passwd, group string) {
		root := t.TempDir()
		os.MkdirAll(filepath.Join(root, "etc"), 0o755)
		os.WriteFile(filepath.Join(root, "etc/passwd"), []byte(passwd), 0o644)
		os.WriteFile(filepath.Join(root, "etc/group"), []byte(group), 0o644)
		u, err := resolveUser(root, user)
		if err == nil && user == "" && (u.UID != 0 || u.GID != 0) {
			t.Fatalf("empty user resolved to %+v", u)
		}
	})
}

// FuzzReadLogs: a log file may be torn or corrupted; reading it must not
// panic and must only return selected streams.
func FuzzReadLogs(f *testing.F) {
	f.Add([]byte(`{"log":"a\n","stream":"stdout","time":"2024-01-01T00:00:00Z"}` + "\n" + `{"log":"b","stream":"stderr","time":"x"}` + "\n{"))
	f.Add([]byte("\n\n\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "l")
		os.WriteFile(p, data, 0o644)
		ch := make(chan driver.LogEntry, 1<<16)
		if err := readLogs(context.Background(), p, 1, driver.LogOptions{Stdout: true, Tail: -1}, func() bool { return false }, ch); err != nil {
			t.Fatal(err)
		}
		close(ch)
		for e := range ch {
			if e.Stream != "stdout" {
				t.Fatalf("stream %q returned for a stdout-only read", e.Stream)
			}
		}
	})
}

func TestDefaultShim(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "flotilla")
	if p, args := defaultShim(exe); p != exe || len(args) != 1 || args[0] != "runc-shim" {
		t.Errorf("without %s: %s %v", ShimBinary, p, args)
	}
	shim := filepath.Join(dir, ShimBinary)
	if err := os.WriteFile(shim, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if p, _ := defaultShim(exe); p != exe {
		t.Errorf("a %s that is not executable is used", ShimBinary)
	}
	os.Chmod(shim, 0o755)
	if p, args := defaultShim(exe); p != shim || len(args) != 0 {
		t.Errorf("with %s: %s %v", ShimBinary, p, args)
	}
}
