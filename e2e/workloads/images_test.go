package workloads

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runcExec runs argv in container id on the dev node with runc itself.
func (c *cloud) runcExec(t *testing.T, id string, argv ...string) (string, error) {
	t.Helper()
	root := filepath.Join(c.Data, "nodes", "node-1", "runc", "runc")
	out, err := exec.Command("runc", append([]string{"--root", root, "exec", id}, argv...)...).CombinedOutput()
	return string(out), err
}

// TestImageFromMachine makes an image of a running container with
// `triton image create` (CreateImageFromMachine) and creates an instance
// of it with `triton create`: the new instance sees the files the first
// one added and not those it deleted.
func TestImageFromMachine(t *testing.T) {
	c := startDev(t, "img", "runc")
	pub := c.addNetwork(t, "img-pub", "")
	other := c.addAccount(t, "img2")
	src, _ := c.createAs(t, c.Owner, "src", "busybox@1.36", "g1-nano-256M", "--network", pub.Name)
	if out, err := c.runcExec(t, src.ID, "sh", "-c", "mkdir -p /srv && echo made > /srv/made.txt && rm /etc/group"); err != nil {
		t.Fatalf("runc exec in src: %v\n%s", err, out)
	}

	t0 := time.Now()
	out := c.tri(t, "image", "create", "-w", "src", "srcimg", "1.0.0")
	figure("image create -w from a container (triton)", "%.0f ms", float64(time.Since(t0).Milliseconds()))
	if !strings.Contains(out, "srcimg@1.0.0") {
		t.Errorf("triton image create printed: %s", out)
	}
	var img struct {
		ID, Name, Version, State, Type string
	}
	raw := c.tri(t, "image", "get", "-j", "srcimg@1.0.0")
	if err := json.Unmarshal([]byte(raw), &img); err != nil {
		t.Fatalf("triton image get: %v\n%s", err, raw)
	}
	if img.State != "active" || img.Name != "srcimg" || img.Version != "1.0.0" {
		t.Fatalf("the new image: %+v", img)
	}

	dst, _ := c.createAs(t, c.Owner, "dst", "srcimg@1.0.0", "g1-nano-256M", "--network", pub.Name)
	got, err := c.runcExec(t, dst.ID, "sh", "-c", "cat /srv/made.txt; test -e /etc/group && echo group-back; cat /etc/passwd >/dev/null && echo base-ok")
	if err != nil || got != "made\nbase-ok\n" {
		t.Fatalf("in an instance of the new image: %q (%v), want made and base-ok only", got, err)
	}

	t.Run("Errors", func(t *testing.T) {
		if out, errOut, err := c.tritonAs(c.Owner, "image", "create", "nosuch", "x", "1"); err == nil {
			t.Errorf("image create from an unknown instance succeeded: %s", out)
		} else if !strings.Contains(errOut, "nosuch") {
			t.Errorf("image create from an unknown instance: %s", errOut)
		}
		// Another account sees neither the instance nor the image.
		if out, _, err := c.tritonAs(other, "image", "create", src.ID, "stolen", "1"); err == nil {
			t.Errorf("another account made an image of src: %s", out)
		}
		if out, _, err := c.tritonAs(other, "image", "get", img.ID); err == nil {
			t.Errorf("another account sees the image: %s", out)
		}
		if list := c.triAs(t, other, "image", "list", "-H", "-o", "name"); strings.Contains(list, "stolen") || strings.Contains(list, "srcimg") {
			t.Errorf("the other account's image list: %s", list)
		}
	})
}
