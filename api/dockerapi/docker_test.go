package dockerapi

import (
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

var fullID = regexp.MustCompile(`^[0-9a-f]{64}$`)

func TestDockerCLI(t *testing.T) {
	e := newTestEnv(t)
	t0 := time.Now().Add(-time.Second)

	t.Run("Version", func(t *testing.T) {
		e := e.with(t)
		out := e.ok("alice", "version")
		for _, want := range []string{"API version:      1.51 (minimum version 1.44)", "Flotilla test-dc"} {
			if !strings.Contains(out, want) {
				t.Errorf("docker version lacks %q:\n%s", want, out)
			}
		}
	})
	t.Run("Info", func(t *testing.T) {
		e := e.with(t)
		out := e.ok("alice", "info")
		for _, want := range []string{"Account: alice", "CPUs: 32", "Total Memory: 64GiB", "Storage Driver: flotilla"} {
			if !strings.Contains(out, want) {
				t.Errorf("docker info lacks %q:\n%s", want, out)
			}
		}
	})

	var webID string
	t.Run("RunDetached", func(t *testing.T) {
		e := e.with(t)
		out := strings.TrimSpace(e.ok("alice", "run", "-d", "--name", "web", "-p", "80:80", "-m", "512m", "--label", "role=web", "busybox:1.36", "sleep", "1000"))
		if !fullID.MatchString(out) {
			t.Fatalf("docker run -d printed %q, want a 64-hex id", out)
		}
		webID = out
		ps := e.ok("alice", "ps", "--format", "{{.ID}} {{.Names}} {{.Status}} {{.Ports}}")
		if !strings.HasPrefix(ps, webID[:12]+" web Up") || !strings.Contains(ps, ":80->80/tcp") {
			t.Fatalf("docker ps: %q", ps)
		}
	})
	t.Run("Inspect", func(t *testing.T) {
		e := e.with(t)
		out := e.ok("alice", "inspect", "--format", "{{.Id}} {{.State.Status}} {{index .Config.Labels \"com.joyent.package\"}} {{.HostConfig.Memory}} {{.Config.Image}}", "web")
		want := webID + " running g1-micro-512M 536870912 busybox:1.36\n"
		if out != want {
			t.Fatalf("inspect: %q, want %q", out, want)
		}
		if out := e.ok("alice", "inspect", "--format", "{{.Name}}", webID[:12]); out != "/web\n" {
			t.Fatalf("inspect by short id: %q", out)
		}
	})
	t.Run("Port", func(t *testing.T) {
		e := e.with(t)
		out := e.ok("alice", "port", "web")
		if !regexp.MustCompile(`^80/tcp -> 10\.\d+\.\d+\.\d+:80\n$`).MatchString(out) {
			t.Fatalf("docker port: %q", out)
		}
	})
	t.Run("ErrRemapPort", func(t *testing.T) {
		e := e.with(t)
		e.fails("alice", 125, "remapping of port numbers is not allowed", "run", "-d", "-p", "8080:80", "busybox:1.36")
	})
	t.Run("Healthcheck", func(t *testing.T) {
		e := e.with(t)
		e.fails("alice", 125, "Interval in Healthcheck cannot be less than 1ms", "run", "-d", "--health-cmd", "true", "--health-interval", "500us", "busybox:1.36")
		e.fails("alice", 125, "StartInterval in Healthcheck cannot be less than 1ms", "run", "-d", "--health-cmd", "true", "--health-start-interval", "10us", "busybox:1.36")
		e.ok("alice", "create", "--name", "hc", "--health-cmd", "true", "--health-interval", "1s", "--health-retries", "5", "busybox:1.36")
		if out := e.ok("alice", "inspect", "-f", "{{json .Config.Healthcheck}} {{json .State.Health}}", "hc"); out != `{"Test":["CMD-SHELL","true"],"Interval":1000000000,"Retries":5} null`+"\n" {
			t.Fatalf("inspect of a created container with a health check: %q", out)
		}
		e.ok("alice", "rm", "hc")
		// Turning the image's health check off asks for nothing.
		e.ok("alice", "create", "--name", "nohealth", "--no-healthcheck", "busybox:1.36")
		if out := e.ok("alice", "ps", "-a", "--filter", "health=none", "--format", "{{.Names}}"); !strings.Contains(out, "nohealth\n") {
			t.Fatalf("ps --filter health=none: %q", out)
		}
		e.fails("alice", 1, "Unrecognised filter value for health: sickly", "ps", "--filter", "health=sickly")
		e.ok("alice", "rm", "nohealth")
	})
	t.Run("ErrNameTaken", func(t *testing.T) {
		e := e.with(t)
		e.fails("alice", 1, `Conflict. The container name "/web" is already in use by container "`+webID, "create", "--name", "web", "busybox:1.36")
	})
	t.Run("ErrNoSuchImage", func(t *testing.T) {
		e := e.with(t)
		_, errOut, code := e.run("alice", "create", "--pull", "never", "nosuch:1")
		if code != 1 || !strings.Contains(errOut, "No such image: nosuch:1") {
			t.Fatalf("exit %d: %s", code, errOut)
		}
	})
	t.Run("CreateStartStop", func(t *testing.T) {
		e := e.with(t)
		id := strings.TrimSpace(e.ok("alice", "create", "--name", "db", "--cpus", "2", "busybox:1.36", "sleep", "1000"))
		if out := e.ok("alice", "ps", "-a", "--filter", "status=created", "--format", "{{.ID}}", "--no-trunc"); out != id+"\n" {
			t.Fatalf("ps status=created: %q, want %s", out, id)
		}
		if out := e.ok("alice", "inspect", "--format", "{{index .Config.Labels \"com.joyent.package\"}}", "db"); out != "g1-medium-2G\n" {
			t.Fatalf("--cpus 2 got package %q", out)
		}
		e.ok("alice", "start", "db")
		if out := e.ok("alice", "ps", "-q", "--filter", "name=^db$"); out != id[:12]+"\n" {
			t.Fatalf("ps -q name=^db$: %q", out)
		}
		e.ok("alice", "stop", "db")
		out := e.ok("alice", "ps", "-a", "--filter", "status=exited", "--format", "{{.Names}} {{.Status}}")
		if !strings.HasPrefix(out, "db Exited (") {
			t.Fatalf("ps status=exited: %q", out)
		}
		e.ok("alice", "rename", "db", "db2")
		e.ok("alice", "inspect", "db2")
		e.fails("alice", 1, "No such object: db", "inspect", "db")
	})
	t.Run("RestartKill", func(t *testing.T) {
		e := e.with(t)
		e.ok("alice", "restart", "web")
		if out := e.ok("alice", "inspect", "--format", "{{.State.Running}}", "web"); out != "true\n" {
			t.Fatalf("after restart running=%q", out)
		}
		e.ok("alice", "kill", "web")
		if out := e.ok("alice", "inspect", "--format", "{{.State.Status}}", "web"); out != "exited\n" {
			t.Fatalf("after kill status=%q", out)
		}
		e.fails("alice", 1, "is not running", "kill", "web")
	})
	t.Run("PsFiltersAndLimit", func(t *testing.T) {
		e := e.with(t)
		out := e.ok("alice", "ps", "-a", "--filter", "label=role=web", "--filter", "ancestor=busybox", "--format", "{{.Names}}")
		if out != "web\n" {
			t.Fatalf("label+ancestor: %q", out)
		}
		if out := e.ok("alice", "ps", "-a", "--filter", "id="+webID[:8], "-q"); out != webID[:12]+"\n" {
			t.Fatalf("id filter: %q", out)
		}
		if out := e.ok("alice", "ps", "-l", "--format", "{{.Names}}"); out != "db2\n" {
			t.Fatalf("ps -l: %q", out)
		}
		if out := e.ok("alice", "ps", "-a", "-n", "2", "-q"); len(strings.Fields(out)) != 2 {
			t.Fatalf("ps -n 2: %q", out)
		}
		// Only web publishes a port, so only web has a public NIC; every
		// container is on the account's default fabric network.
		if out := e.ok("alice", "ps", "-a", "--filter", "network=public", "-q"); out != webID[:12]+"\n" {
			t.Fatalf("network=public: %q", out)
		}
		if out := e.ok("alice", "ps", "-a", "--filter", "network=My-Fabric-Network", "-q"); len(strings.Fields(out)) != 2 {
			t.Fatalf("network=My-Fabric-Network: %q", out)
		}
		e.fails("alice", 1, "invalid filter 'status=sleepy'", "ps", "--filter", "status=sleepy")
		e.fails("alice", 1, "invalid filter 'colour'", "ps", "--filter", "colour=red")
	})
	t.Run("RemoveRunning", func(t *testing.T) {
		e := e.with(t)
		e.ok("alice", "run", "-d", "--name", "tmp", "busybox:1.36", "sleep", "1000")
		e.fails("alice", 1, `cannot remove container "/tmp": container is running`, "rm", "tmp")
		e.ok("alice", "rm", "-f", "tmp")
		e.fails("alice", 1, "No such container: tmp", "rm", "tmp")
	})
	t.Run("OtherAccountSeesNothing", func(t *testing.T) {
		e := e.with(t)
		if out := e.ok("bob", "ps", "-a", "-q"); out != "" {
			t.Fatalf("bob sees %q", out)
		}
		e.fails("bob", 1, "No such container: web", "rm", "web")
		e.fails("bob", 0, "No such container: web", "rm", "-f", "web") // the CLI forgives NotFound with -f
		if out := e.ok("alice", "ps", "-a", "-q", "--filter", "name=^web$"); out == "" {
			t.Fatal("bob's rm -f removed alice's container")
		}
		e.fails("bob", 1, "No such container: "+webID[:12], "start", webID[:12])
		e.fails("bob", 1, "No such object: "+webID, "inspect", webID)
		e.fails("bob", 1, "No such container: web", "rename", "web", "mine")
	})
	t.Run("Images", func(t *testing.T) {
		e := e.with(t)
		out := e.ok("alice", "images", "--format", "{{.Repository}}:{{.Tag}} {{.Size}}")
		if !strings.Contains(out, "busybox:1.36 4.19MB") || !strings.Contains(out, "busybox:latest") {
			t.Fatalf("images: %q", out)
		}
		if out := e.ok("alice", "image", "inspect", "--format", "{{.Os}} {{index .Config.Cmd 0}} {{len .RootFS.Layers}}", "busybox"); out != "linux sh 1\n" {
			t.Fatalf("image inspect: %q", out)
		}
		if out := e.ok("alice", "history", "--format", "{{.CreatedBy}}", "busybox:1.36"); !strings.HasPrefix(out, "CMD [\"sh\"]\nADD rootfs.tar /") {
			t.Fatalf("history: %q", out)
		}
		e.fails("alice", 1, "No such image: nope:latest", "image", "inspect", "nope")
	})
	t.Run("Networks", func(t *testing.T) {
		e := e.with(t)
		id := strings.TrimSpace(e.ok("alice", "network", "create", "--subnet", "192.168.50.0/24", "mynet"))
		if !fullID.MatchString(id) {
			t.Fatalf("network create printed %q", id)
		}
		out := e.ok("alice", "network", "ls", "--format", "{{.Name}} {{.Driver}}")
		if !strings.Contains(out, "mynet flotilla") || !strings.Contains(out, "public flotilla") {
			t.Fatalf("network ls: %q", out)
		}
		e.ok("alice", "run", "-d", "--name", "n1", "--network", "mynet", "busybox:1.36", "sleep", "1000")
		out = e.ok("alice", "network", "inspect", "--format", "{{range .Containers}}{{.Name}} {{.IPv4Address}}{{end}} {{(index .IPAM.Config 0).Subnet}}", "mynet")
		if !regexp.MustCompile(`^n1 192\.168\.50\.\d+/24 192\.168\.50\.0/24\n$`).MatchString(out) {
			t.Fatalf("network inspect: %q", out)
		}
		e.fails("alice", 1, "has active endpoints", "network", "rm", "mynet")
		e.fails("alice", 1, "network with name mynet already exists", "network", "create", "mynet")
		if out := e.ok("bob", "network", "ls", "--format", "{{.Name}}"); strings.Contains(out, "mynet") {
			t.Fatalf("bob sees alice's network: %q", out)
		}
		e.fails("bob", 1, "network mynet not found", "network", "rm", "mynet")
		e.ok("alice", "rm", "-f", "n1")
		deadline := time.Now().Add(15 * time.Second)
		for {
			_, errOut, code := e.run("alice", "network", "rm", "mynet")
			if code == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("network rm after the container went: %s", errOut)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
	t.Run("Events", func(t *testing.T) {
		e := e.with(t)
		until := strconv.FormatInt(time.Now().Add(time.Second).Unix(), 10)
		out := e.ok("alice", "events", "--since", strconv.FormatInt(t0.Unix(), 10), "--until", until,
			"--filter", "container=web", "--format", "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}")
		for _, want := range []string{"container create web", "container start web", "container die web"} {
			if !strings.Contains(out, want) {
				t.Errorf("events lack %q:\n%s", want, out)
			}
		}
		if out := e.ok("bob", "events", "--since", strconv.FormatInt(t0.Unix(), 10), "--until", until); out != "" {
			t.Errorf("bob sees alice's events: %q", out)
		}
	})
	t.Run("ErrNoClientCert", func(t *testing.T) {
		e := e.with(t)
		resp, err := e.client("").Get(e.srv.URL + "/v1.51/containers/json")
		must(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("Content-Type") != "application/json" || !strings.Contains(string(body), "client certificate is required") {
			t.Fatalf("%d %s %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
		resp, err = e.client("").Head(e.srv.URL + "/_ping")
		must(t, err)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Api-Version") != MaxAPIVersion || resp.Header.Get("Ostype") != "linux" {
			t.Fatalf("ping: %d %v", resp.StatusCode, resp.Header)
		}
	})
	t.Run("ErrVersionTooOld", func(t *testing.T) {
		e := e.with(t)
		resp, err := e.client("alice").Get(e.srv.URL + "/v1.40/version")
		must(t, err)
		var body struct{ Message string }
		json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != 400 || !strings.Contains(body.Message, "client version 1.40 is too old. Minimum supported API version is 1.44") {
			t.Fatalf("%d %q", resp.StatusCode, body.Message)
		}
	})
}
