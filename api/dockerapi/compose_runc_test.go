package dockerapi

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"flotilla/internal/testenv"
)

// ComposePlugin is where scripts/setup.sh installs docker compose, as a
// CLI plugin every user's docker CLI finds.
const ComposePlugin = "/usr/local/lib/docker/cli-plugins/docker-compose"

// ComposeVersion is the docker compose release setup.sh builds and the
// end-to-end test drives.
const ComposeVersion = "v5.6.0"

// needCompose fails under CI (skips elsewhere) unless setup installed the
// docker compose plugin of the tested version.
func needCompose(t *testing.T, e *testEnv) {
	t.Helper()
	testenv.NeedFile(t, ComposePlugin, "docker compose "+ComposeVersion+", built by scripts/setup.sh")
	if out := e.ok("alice", "compose", "version", "--short"); strings.TrimSpace(out) != strings.TrimPrefix(ComposeVersion, "v") {
		testenv.Need(t, false, fmt.Sprintf("docker compose %s (found %q)", ComposeVersion, strings.TrimSpace(out)))
	}
}

// composeProject is a two-service project: db writes a value into a named
// volume and serves it over HTTP on 8080; web, which depends on db and
// shares a user network with it, finds db by its service name and fetches
// the value; db also answers to an alias, and web is on a second network
// too. Both stop at once on SIGTERM.
const composeProject = `services:
  db:
    image: busybox
    networks:
      back:
        aliases: [store]
    volumes: ["data:/data"]
    command:
      - sh
      - -c
      - |
        echo %[1]s >> /data/value
        httpd -p 8080 -h /data
        echo db-serving
        trap 'exit 0' TERM
        while :; do sleep 1 & wait; done
  web:
    image: busybox
    depends_on: [db]
    networks: [back, front]
    command:
      - sh
      - -c
      - |
        nslookup db
        nslookup store
        until printf 'GET /value HTTP/1.0\r\n\r\n' | nc -w 3 db 8080; do sleep 1; done
        echo web-fetched-from-db
        trap 'exit 0' TERM
        while :; do sleep 1 & wait; done
networks:
  back: {}
  front: {}
volumes:
  data: {}
`

// TestDockerComposeRunc drives the real docker compose against the Docker
// endpoint with a runc node: up -d, ps, logs, exec, down (the volume
// kept) and up again (the volume's data still there), then down -v, which
// leaves nothing of the project; every object compose makes carries its
// labels and is found by them. A project that remaps a port, or names a
// network driver this cloud has not, is refused with a clear error.
// composeHealthy is a project whose app waits for web to be healthy: web
// becomes ready a second after it starts, its failures before that within
// its start period (which would otherwise make it unhealthy and fail the
// up).
const composeHealthy = `services:
  web:
    image: busybox
    command: [sh, -c, "sleep 1; touch /tmp/ready; exec sleep 600"]
    stop_grace_period: 1s
    healthcheck:
      test: [CMD, test, -f, /tmp/ready]
      interval: 200ms
      timeout: 2s
      retries: 2
      start_period: 10s
      start_interval: 200ms
  app:
    image: busybox
    command: [sleep, "600"]
    stop_grace_period: 1s
    depends_on:
      web:
        condition: service_healthy
`

func TestDockerComposeRunc(t *testing.T) {
	re := newRuncEnv(t)
	e := re.testEnv
	needCompose(t, e)

	dir := t.TempDir()
	token := fmt.Sprintf("value-%d", rand.IntN(1e9))
	file := filepath.Join(dir, "compose.yaml")
	must(t, os.WriteFile(file, []byte(fmt.Sprintf(composeProject, token)), 0o644))
	compose := func(args ...string) []string { return append([]string{"compose", "-p", "shop", "-f", file}, args...) }

	up := func(t *testing.T) {
		e := e.with(t)
		t0 := time.Now()
		e.ok("alice", compose("up", "-d")...)
		t.Logf("figure: docker compose up -d (2 services, 2 networks, a volume) took %s", time.Since(t0).Round(time.Millisecond))
	}
	// webFetched waits until web's log shows what it fetched from db by
	// name and returns the log.
	webFetched := func(t *testing.T) string {
		t.Helper()
		var out string
		deadline := time.Now().Add(30 * time.Second)
		for {
			o, errOut, code := e.with(t).run("alice", compose("logs", "--no-color", "web")...)
			out = o + errOut
			if code == 0 && strings.Contains(out, "web-fetched-from-db") {
				return out
			}
			if time.Now().After(deadline) {
				t.Fatalf("docker compose logs web: exit %d, no sign web reached db:\n%s", code, out)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}

	t.Run("Up", up)
	t.Run("Ps", func(t *testing.T) {
		e := e.with(t)
		out := e.ok("alice", compose("ps", "--format", "{{.Service}} {{.State}} {{.Name}}")...)
		if !strings.Contains(out, "db running shop-db-1\n") || !strings.Contains(out, "web running shop-web-1\n") {
			t.Fatalf("docker compose ps:\n%s", out)
		}
		out = e.ok("alice", "ps", "--filter", "label=com.docker.compose.project=shop", "--format", "{{.Names}} {{.Label \"com.docker.compose.service\"}}")
		if !strings.Contains(out, "shop-db-1 db\n") || !strings.Contains(out, "shop-web-1 web\n") {
			t.Fatalf("docker ps by compose's project label:\n%s", out)
		}
	})
	t.Run("LogsWebReachedDBByName", func(t *testing.T) {
		out := webFetched(t)
		// What db wrote into the volume, served over HTTP, fetched by name.
		if !strings.Contains(out, token) || !strings.Contains(out, "200 OK") {
			t.Fatalf("web's log lacks db's answer %q:\n%s", token, out)
		}
		dbIP := strings.TrimSpace(e.with(t).ok("alice", "inspect", "--format", `{{(index .NetworkSettings.Networks "shop_back").IPAddress}}`, "shop-db-1"))
		if dbIP == "" || !strings.Contains(out, "Address: "+dbIP) || !strings.Contains(out, "Name:\tstore") {
			t.Fatalf("web's nslookup db and store do not give db's address %q on shop_back:\n%s", dbIP, out)
		}
		// Every service's log, prefixed and timestamped.
		all := e.with(t).ok("alice", compose("logs", "--no-color", "-t")...)
		for _, want := range []*regexp.Regexp{
			regexp.MustCompile(`(?m)^db-1 +\| 20\d\d-\d\d-\d\dT[0-9:.]+Z db-serving$`),
			regexp.MustCompile(`(?m)^web-1 +\| 20\d\d-\d\d-\d\dT[0-9:.]+Z web-fetched-from-db$`),
		} {
			if !want.MatchString(all) {
				t.Fatalf("docker compose logs -t lacks %s:\n%s", want, all)
			}
		}
	})
	t.Run("ExecReadsVolume", func(t *testing.T) {
		if out := e.with(t).ok("alice", compose("exec", "-T", "db", "cat", "/data/value")...); out != token+"\n" {
			t.Fatalf("db's /data/value: %q", out)
		}
	})
	t.Run("UpAgainUnchanged", func(t *testing.T) {
		e := e.with(t)
		before := e.ok("alice", compose("ps", "-q")...)
		_, errOut, code := e.run("alice", compose("up", "-d")...)
		if code != 0 || strings.Contains(errOut, "Recreate") || strings.Count(errOut, " Running") != 2 {
			t.Fatalf("a second up -d of an unchanged project: exit %d\n%s", code, errOut)
		}
		if after := e.ok("alice", compose("ps", "-q")...); after != before || len(strings.Fields(after)) != 2 {
			t.Fatalf("containers before %q, after a second up -d %q", before, after)
		}
	})
	t.Run("LabelledVolumeAndNetwork", func(t *testing.T) {
		e := e.with(t)
		var vols []struct {
			Name   string
			Labels map[string]string
		}
		must(t, json.Unmarshal([]byte(e.ok("alice", "volume", "inspect", "shop_data")), &vols))
		if len(vols) != 1 || vols[0].Labels["com.docker.compose.project"] != "shop" || vols[0].Labels["com.docker.compose.volume"] != "data" {
			t.Fatalf("volume inspect shop_data: %+v", vols)
		}
		if out := e.ok("alice", "inspect", "--format", "{{range .Mounts}}{{.Type}} {{.Name}} {{.Destination}} {{.RW}}{{end}}", "shop-db-1"); out != "volume shop_data /data true\n" {
			t.Fatalf("db's mounts: %q", out)
		}
		var nets []struct {
			Name       string
			Labels     map[string]string
			Containers map[string]struct{ Name string }
		}
		must(t, json.Unmarshal([]byte(e.ok("alice", "network", "inspect", "shop_back")), &nets))
		if len(nets) != 1 || nets[0].Labels["com.docker.compose.project"] != "shop" || nets[0].Labels["com.docker.compose.network"] != "back" ||
			len(nets[0].Containers) != 2 {
			t.Fatalf("network inspect shop_back: %+v", nets)
		}
		if out := e.ok("alice", "network", "ls", "-q", "--filter", "label=com.docker.compose.project=shop", "--format", "{{.Name}}"); out != "shop_back\nshop_front\n" {
			t.Fatalf("network ls by label: %q", out)
		}
		if out := e.ok("alice", "volume", "ls", "-q", "--filter", "label=com.docker.compose.project=shop"); out != "shop_data\n" {
			t.Fatalf("volume ls by label: %q", out)
		}
		// Another account sees none of it.
		if out := e.ok("bob", "ps", "-a", "-q"); out != "" {
			t.Fatalf("bob sees containers %q", out)
		}
		e.fails("bob", 1, "not found", "network", "inspect", "shop_back")
		if out := e.ok("bob", "compose", "-p", "shop", "-f", file, "ps", "-a", "-q"); out != "" {
			t.Fatalf("bob's compose ps shows %q", out)
		}
	})
	t.Run("DownKeepsVolume", func(t *testing.T) {
		e := e.with(t)
		t0 := time.Now()
		e.ok("alice", compose("down")...)
		t.Logf("figure: docker compose down (2 containers, 2 networks) took %s", time.Since(t0).Round(time.Millisecond))
		if out := e.ok("alice", "ps", "-a", "-q"); out != "" {
			t.Fatalf("containers left after down: %q", out)
		}
		if out := e.ok("alice", "network", "ls", "-q", "--filter", "name=shop_"); out != "" {
			t.Fatalf("networks left after down: %q", out)
		}
		if out := e.ok("alice", "volume", "ls", "-q"); out != "shop_data\n" {
			t.Fatalf("volumes after down (without -v): %q", out)
		}
	})
	t.Run("UpAgainSameVolume", func(t *testing.T) {
		up(t)
		webFetched(t)
		if out := e.with(t).ok("alice", compose("exec", "-T", "db", "cat", "/data/value")...); out != token+"\n"+token+"\n" {
			t.Fatalf("db's /data/value after a second up on the same volume: %q", out)
		}
	})
	t.Run("DownVolumes", func(t *testing.T) {
		e := e.with(t)
		t0 := time.Now()
		e.ok("alice", compose("down", "-v")...)
		t.Logf("figure: docker compose down -v (2 containers, 2 networks, a volume) took %s", time.Since(t0).Round(time.Millisecond))
		if out := e.ok("alice", "ps", "-a", "-q"); out != "" {
			t.Fatalf("containers left after down -v: %q", out)
		}
		if out := e.ok("alice", "network", "ls", "--format", "{{.Name}}"); strings.Contains(out, "shop") {
			t.Fatalf("networks after down -v:\n%s", out)
		}
		if out := e.ok("alice", "volume", "ls", "-q"); out != "" {
			t.Fatalf("volumes left after down -v: %q", out)
		}
		// The volume's storage left the node with it.
		if ents, err := os.ReadDir(filepath.Join(re.root, "volumes")); err != nil || len(ents) != 0 {
			t.Fatalf("volume storage left on the node after down -v: %v, %v", ents, err)
		}
		if out := e.ok("alice", compose("ps", "-a", "-q")...); out != "" {
			t.Fatalf("compose ps -a after down -v: %q", out)
		}
	})

	t.Run("ErrPortRemapped", func(t *testing.T) {
		e := e.with(t)
		f := filepath.Join(dir, "ports.yaml")
		must(t, os.WriteFile(f, []byte("services:\n  app:\n    image: busybox\n    command: [sleep, \"60\"]\n    ports: [\"8080:80\"]\n"), 0o644))
		_, errOut, code := e.run("alice", "compose", "-p", "ports", "-f", f, "up", "-d")
		if code == 0 || !strings.Contains(errOut, "remapping of port numbers is not allowed") || !strings.Contains(errOut, `"80"`) {
			t.Fatalf("up of a remapped port: exit %d\n%s", code, errOut)
		}
		// The same port unmapped is published on the container's own
		// address.
		must(t, os.WriteFile(f, []byte("services:\n  app:\n    image: busybox\n    command: [httpd, -f, -p, \"80\"]\n    stop_grace_period: 1s\n    ports: [\"80\"]\n"), 0o644))
		e.ok("alice", "compose", "-p", "ports", "-f", f, "up", "-d")
		if out := e.ok("alice", "compose", "-p", "ports", "-f", f, "ps", "--format", "{{.Service}} {{.State}} {{.Ports}}"); !strings.HasPrefix(out, "app running ") || !strings.Contains(out, ":80->80/tcp") {
			t.Fatalf("compose ps of a published port: %q", out)
		}
		e.ok("alice", "compose", "-p", "ports", "-f", f, "down")
		if out := e.ok("alice", "ps", "-a", "-q"); out != "" {
			t.Fatalf("containers left: %q", out)
		}
		if out := e.ok("alice", "network", "ls", "--format", "{{.Name}}"); strings.Contains(out, "ports_") {
			t.Fatalf("networks after down:\n%s", out)
		}
	})
	t.Run("ServiceHealthy", func(t *testing.T) {
		e := e.with(t)
		f := filepath.Join(dir, "health.yaml")
		must(t, os.WriteFile(f, []byte(composeHealthy), 0o644))
		t0 := time.Now()
		e.ok("alice", "compose", "-p", "health", "-f", f, "up", "-d")
		t.Logf("figure: docker compose up -d with app depending on web's service_healthy (web ready after 1s, 200ms probes in a 10s start period) took %s", time.Since(t0).Round(time.Millisecond))
		if out := e.ok("alice", "inspect", "-f", "{{.State.Health.Status}}", "health-web-1"); out != "healthy\n" {
			t.Fatalf("web after up: %q", out)
		}
		// app started only once web was healthy: web's first success is
		// before app's start.
		out := e.ok("alice", "inspect", "-f", "{{range .State.Health.Log}}{{if eq .ExitCode 0}}{{.End.UnixNano}} {{end}}{{end}}", "health-web-1")
		healthyAt, err := strconv.ParseInt(strings.Fields(out)[0], 10, 64)
		must(t, err)
		started, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(e.ok("alice", "inspect", "-f", "{{.State.StartedAt}}", "health-app-1")))
		must(t, err)
		if started.UnixNano() < healthyAt {
			t.Fatalf("app started at %v, before web's first healthy probe ended at %v", started, time.Unix(0, healthyAt))
		}
		if out := e.ok("alice", "compose", "-p", "health", "-f", f, "ps", "--format", "{{.Service}} {{.Status}}"); !regexp.MustCompile(`(?m)^web Up .* \(healthy\)$`).MatchString(out) {
			t.Fatalf("compose ps:\n%s", out)
		}
		e.ok("alice", "compose", "-p", "health", "-f", f, "down", "-t", "1")
		if out := e.ok("alice", "ps", "-a", "-q"); out != "" {
			t.Fatalf("containers left: %q", out)
		}
	})
	t.Run("BuildSection", func(t *testing.T) {
		e := e.with(t)
		bdir := filepath.Join(dir, "built")
		must(t, os.MkdirAll(bdir, 0o755))
		must(t, os.WriteFile(filepath.Join(bdir, "Dockerfile"), []byte("FROM busybox\nRUN echo built-by-compose > /msg\nCMD [\"cat\", \"/msg\"]\n"), 0o644))
		f := filepath.Join(bdir, "compose.yaml")
		must(t, os.WriteFile(f, []byte("services:\n  app:\n    build: .\n"), 0o644))
		// Attached: up builds, runs, shows the output and returns when app exits.
		t0 := time.Now()
		out := e.ok("alice", "compose", "-p", "built", "-f", f, "up")
		t.Logf("figure: docker compose up of a service with build: (one RUN step) took %s", time.Since(t0).Round(time.Millisecond))
		if !regexp.MustCompile(`(?m)^app-1 +\| built-by-compose$`).MatchString(out) {
			t.Fatalf("attached up of a built service:\n%s", out)
		}
		if out := e.ok("alice", "images", "--format", "{{.Repository}}:{{.Tag}}"); !strings.Contains(out, "built-app:latest\n") {
			t.Fatalf("images after the build:\n%s", out)
		}
		// down --rmi local removes the image compose built, right after its container.
		_, errOut, code := e.run("alice", "compose", "-p", "built", "-f", f, "down", "--rmi", "local")
		if code != 0 || strings.Contains(errOut, "still in use") {
			t.Fatalf("down --rmi local: exit %d\n%s", code, errOut)
		}
		if out := e.ok("alice", "images", "--format", "{{.Repository}}:{{.Tag}}"); strings.Contains(out, "built-app") {
			t.Fatalf("images after down --rmi local:\n%s", out)
		}
	})
}
