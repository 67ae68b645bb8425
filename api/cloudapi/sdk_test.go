package cloudapi_test

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	triton "github.com/joyent/triton-go"
	"github.com/joyent/triton-go/account"
	"github.com/joyent/triton-go/authentication"
	"github.com/joyent/triton-go/client"
	"github.com/joyent/triton-go/compute"
	tgerrors "github.com/joyent/triton-go/errors"
	"github.com/joyent/triton-go/identity"
	"github.com/joyent/triton-go/network"
	"golang.org/x/crypto/ssh/agent"
)

// tritonConfig is what a triton-go user configures: alice's RSA key, signed
// by the SDK's own PrivateKeySigner (rsa-sha1 over "date", UTC-zone Date).
func (e *env) tritonConfig(t *testing.T) *triton.ClientConfig {
	t.Helper()
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY",
		Bytes: x509.MarshalPKCS1PrivateKey(e.keys.rsa.(*rsa.PrivateKey))})
	signer, err := authentication.NewPrivateKeySigner(authentication.PrivateKeySignerInput{
		KeyID: fingerprint(t, e.keys.rsa), PrivateKeyMaterial: keyPEM, AccountName: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	return &triton.ClientConfig{TritonURL: e.srv.URL, AccountName: "alice", Signers: []authentication.Signer{signer}}
}

// useValidatingClient routes an SDK client's requests through the env's
// client, so that every response it gets is checked against the spec.
func (e *env) useValidatingClient(c *client.Client) { c.HTTPClient = e.client }

// apiErr returns the SDK's APIError in err's chain.
func apiErr(t *testing.T, err error) *tgerrors.APIError {
	t.Helper()
	var ae *tgerrors.APIError
	for cur := err; cur != nil; {
		if a, ok := cur.(*tgerrors.APIError); ok {
			ae = a
			break
		}
		u, ok := cur.(interface{ Cause() error })
		if !ok {
			break
		}
		cur = u.Cause()
	}
	if ae == nil {
		t.Fatalf("error %v (%T) carries no APIError", err, err)
	}
	return ae
}

// TestTritonGoSDK drives the server with the triton-go SDK, as Terraform and
// Packer do, and checks the fields the SDK decodes.
func TestTritonGoSDK(t *testing.T) {
	e := newEnv(t)
	e.startAgent()
	cfg := e.tritonConfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	acc, err := account.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.useValidatingClient(acc.Client)
	cmp, err := compute.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.useValidatingClient(cmp.Client)
	netc, err := network.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.useValidatingClient(netc.Client)
	idc, err := identity.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.useValidatingClient(idc.Client)

	t.Run("Account", func(t *testing.T) {
		a, err := acc.Get(ctx, &account.GetInput{})
		if err != nil {
			t.Fatal(err)
		}
		if a.ID != e.alice.ID || a.Login != "alice" || a.Email != "alice@example.com" || a.FirstName != "Alice" ||
			a.LastName != "Example" || a.Created.IsZero() || a.Updated.Before(a.Created) || a.TritonCNSEnabled {
			t.Errorf("account %+v", a)
		}
	})

	t.Run("Keys", func(t *testing.T) {
		keys, err := acc.Keys().List(ctx, &account.ListKeysInput{})
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, k := range keys {
			names = append(names, k.Name)
		}
		slices.Sort(names)
		if strings.Join(names, ",") != "id_ecdsa,id_ed25519,id_rsa" {
			t.Errorf("keys %v", names)
		}
		rsaFP := fingerprint(t, e.keys.rsa)
		k, err := acc.Keys().Get(ctx, &account.GetKeyInput{KeyName: "id_rsa"})
		if err != nil {
			t.Fatal(err)
		}
		if k.Name != "id_rsa" || k.Fingerprint != rsaFP || !strings.HasPrefix(k.Key, "ssh-rsa AAAA") {
			t.Errorf("GetKey id_rsa: %+v", k)
		}
		// By fingerprint too (it has colons; the SDK does not escape them).
		if k, err := acc.Keys().Get(ctx, &account.GetKeyInput{KeyName: rsaFP}); err != nil || k.Name != "id_rsa" {
			t.Errorf("GetKey by fingerprint: %+v, %v", k, err)
		}
		line := authorizedKey(t, e.keys.spare, "sdk@test")
		created, err := acc.Keys().Create(ctx, &account.CreateKeyInput{Name: "sdk", Key: line})
		if err != nil {
			t.Fatal(err)
		}
		if created.Name != "sdk" || created.Fingerprint != fingerprint(t, e.keys.spare) || created.Key != line {
			t.Errorf("CreateKey: %+v", created)
		}
		_, err = acc.Keys().Create(ctx, &account.CreateKeyInput{Name: "sdk", Key: line})
		if ae := apiErr(t, err); ae.StatusCode != http.StatusConflict {
			t.Errorf("duplicate key: %+v", ae)
		}
		if err := acc.Keys().Delete(ctx, &account.DeleteKeyInput{KeyName: "sdk"}); err != nil {
			t.Fatal(err)
		}
		_, err = acc.Keys().Get(ctx, &account.GetKeyInput{KeyName: "sdk"})
		if !tgerrors.IsResourceNotFoundError(err) || apiErr(t, err).StatusCode != http.StatusNotFound {
			t.Errorf("deleted key: %v", err)
		}
	})

	t.Run("PackagesImagesNetworks", func(t *testing.T) {
		pkgs, err := cmp.Packages().List(ctx, &compute.ListPackagesInput{})
		if err != nil {
			t.Fatal(err)
		}
		if len(pkgs) != 7 {
			t.Errorf("%d packages, want 7", len(pkgs))
		}
		nano, err := cmp.Packages().Get(ctx, &compute.GetPackageInput{ID: "g1-nano-256M"})
		if err != nil {
			t.Fatal(err)
		}
		if nano.Memory != 256 || nano.Disk != 10240 || nano.VCPUs != 1 || nano.Group != "g1" || !nano.Default || nano.ID == "" {
			t.Errorf("package %+v", nano)
		}
		if byID, err := cmp.Packages().Get(ctx, &compute.GetPackageInput{ID: nano.ID}); err != nil || byID.Name != "g1-nano-256M" {
			t.Errorf("package by id: %+v, %v", byID, err)
		}

		imgs, err := cmp.Images().List(ctx, &compute.ListImagesInput{})
		if err != nil {
			t.Fatal(err)
		}
		if len(imgs) != 1 || imgs[0].ID != e.image.ID {
			t.Fatalf("images %+v", imgs)
		}
		im, err := cmp.Images().Get(ctx, &compute.GetImageInput{ImageID: e.image.ID})
		if err != nil {
			t.Fatal(err)
		}
		if im.Name != "base-64" || im.Version != "24.4.0" || im.OS != "smartos" || im.Type != "zone-dataset" ||
			im.State != "active" || !im.Public || im.PublishedAt.IsZero() || len(im.Files) != 1 || im.Files[0].Size != 1<<20 {
			t.Errorf("image %+v", im)
		}
		_, err = cmp.Images().Get(ctx, &compute.GetImageInput{ImageID: "0e1b9a3c-0000-4000-8000-000000000000"})
		if !tgerrors.IsResourceNotFoundError(err) {
			t.Errorf("unknown image: %v", err)
		}

		nets, err := netc.List(ctx, &network.ListInput{})
		if err != nil {
			t.Fatal(err)
		}
		byName := map[string]*network.Network{}
		for _, n := range nets {
			byName[n.Name] = n
		}
		pub, priv := byName["public"], byName["private"]
		if len(nets) != 2 || pub == nil || priv == nil || !pub.Public || priv.Public || pub.Subnet != "10.198.0.0/20" {
			t.Fatalf("networks %+v", nets)
		}
		got, err := netc.Get(ctx, &network.GetInput{ID: pub.Id})
		if err != nil {
			t.Fatal(err)
		}
		if got.Name != "public" || got.ProvisioningStartIP == "" || got.ProvisioningEndIP == "" || got.Fabric {
			t.Errorf("network %+v", got)
		}
	})

	t.Run("Identity", func(t *testing.T) {
		// Flotilla has no RBAC users: the SDK must still get a clean 404 it can decode.
		_, err := idc.Users().List(ctx, &identity.ListUsersInput{})
		ae := apiErr(t, err)
		if ae.StatusCode != http.StatusNotFound || ae.Code != "ResourceNotFound" || ae.Message != "/alice/users does not exist" {
			t.Errorf("users: %+v", ae)
		}
	})

	t.Run("Instances", func(t *testing.T) {
		nets, err := netc.List(ctx, &network.ListInput{})
		if err != nil {
			t.Fatal(err)
		}
		var private string
		for _, n := range nets {
			if n.Name == "private" {
				private = n.Id
			}
		}
		inst, err := cmp.Instances().Create(ctx, &compute.CreateInstanceInput{
			Name: "sdk-1", Package: "g1-nano-256M", Image: e.image.ID, Networks: []string{private},
			Metadata: map[string]string{"user-script": "#!/bin/sh\necho hi"}, Tags: map[string]string{"role": "db"},
		})
		if err != nil {
			t.Fatalf("create (with triton-go's locality {\"strict\":false}): %v", err)
		}
		if inst.ID == "" || inst.Name != "sdk-1" || inst.Package != "g1-nano-256M" || inst.Memory != 256 ||
			inst.Image != e.image.ID || inst.State != "provisioning" || inst.Tags["role"] != "db" {
			t.Errorf("created %+v", inst)
		}
		id := inst.ID
		wait := func(want string) *compute.Instance {
			t.Helper()
			deadline := time.Now().Add(20 * time.Second)
			for {
				got, err := cmp.Instances().Get(ctx, &compute.GetInstanceInput{ID: id})
				if err != nil {
					t.Fatalf("get: %v", err)
				}
				if got.State == want {
					return got
				}
				if time.Now().After(deadline) {
					t.Fatalf("state %s, want %s", got.State, want)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		got := wait("running")
		if len(got.IPs) != 1 || got.PrimaryIP != got.IPs[0] || !strings.HasPrefix(got.PrimaryIP, "10.199.") ||
			len(got.Networks) != 1 || got.Networks[0] != private || got.ComputeNode == "" || got.Brand != "joyent-minimal" ||
			got.Type != "smartmachine" || got.Metadata["user-script"] != "#!/bin/sh\necho hi" ||
			!strings.Contains(got.Metadata["root_authorized_keys"], "ssh-rsa ") || got.Created.IsZero() {
			t.Errorf("running instance %+v", got)
		}

		list, err := cmp.Instances().List(ctx, &compute.ListInstancesInput{Name: "sdk-1"})
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 1 || list[0].ID != id {
			t.Errorf("list by name: %+v", list)
		}
		list, err = cmp.Instances().List(ctx, &compute.ListInstancesInput{Tags: map[string]any{"role": "db"}})
		if err != nil || len(list) != 1 || list[0].ID != id {
			t.Errorf("list by tag: %+v, %v", list, err)
		}
		if n, err := cmp.Instances().Count(ctx, &compute.ListInstancesInput{}); err != nil || n != 1 {
			t.Errorf("count (HEAD): %d, %v", n, err)
		}

		if err := cmp.Instances().Stop(ctx, &compute.StopInstanceInput{InstanceID: id}); err != nil {
			t.Fatal(err)
		}
		wait("stopped")
		if err := cmp.Instances().Start(ctx, &compute.StartInstanceInput{InstanceID: id}); err != nil {
			t.Fatal(err)
		}
		wait("running")
		if err := cmp.Instances().Reboot(ctx, &compute.RebootInstanceInput{InstanceID: id}); err != nil {
			t.Fatal(err)
		}
		e.waitAudit(id, "reboot")
		wait("running")

		if err := cmp.Instances().Rename(ctx, &compute.RenameInstanceInput{ID: id, Name: "sdk-renamed"}); err != nil {
			t.Fatal(err)
		}
		if got := wait("running"); got.Name != "sdk-renamed" {
			t.Errorf("renamed to %q", got.Name)
		}

		// Tags: triton-go sends strings; JSON numbers and booleans sent by
		// other clients come back typed through the SDK.
		if err := cmp.Instances().AddTags(ctx, &compute.AddTagsInput{ID: id, Tags: map[string]string{"env": "prod"}}); err != nil {
			t.Fatal(err)
		}
		resp, b := e.post("/alice/machines/"+id+"/tags", map[string]any{"count": 3, "ratio": 0.5, "on": true})
		wantStatus(t, resp, b, http.StatusOK)
		tags, err := cmp.Instances().ListTags(ctx, &compute.ListTagsInput{ID: id})
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]any{"role": "db", "env": "prod", "count": float64(3), "ratio": 0.5, "on": true}
		if len(tags) != len(want) {
			t.Errorf("tags %v, want %v", tags, want)
		}
		for k, v := range want {
			if tags[k] != v {
				t.Errorf("tag %s = %#v (%T), want %#v (%T)", k, tags[k], tags[k], v, v)
			}
		}
		if v, err := cmp.Instances().GetTag(ctx, &compute.GetTagInput{ID: id, Key: "env"}); err != nil || v != "prod" {
			t.Errorf("GetTag env: %q, %v", v, err)
		}
		if got := wait("running"); got.Tags["on"] != true || got.Tags["count"] != float64(3) {
			t.Errorf("GetMachine tags %v", got.Tags)
		}
		if err := cmp.Instances().ReplaceTags(ctx, &compute.ReplaceTagsInput{ID: id, Tags: map[string]string{"only": "this"}}); err != nil {
			t.Fatal(err)
		}
		if tags, err := cmp.Instances().ListTags(ctx, &compute.ListTagsInput{ID: id}); err != nil || len(tags) != 1 || tags["only"] != "this" {
			t.Errorf("after replace: %v, %v", tags, err)
		}
		if err := cmp.Instances().DeleteTag(ctx, &compute.DeleteTagInput{ID: id, Key: "only"}); err != nil {
			t.Fatal(err)
		}
		if tags, err := cmp.Instances().ListTags(ctx, &compute.ListTagsInput{ID: id}); err != nil || len(tags) != 0 {
			t.Errorf("after delete: %v, %v", tags, err)
		}

		md, err := cmp.Instances().UpdateMetadata(ctx, &compute.UpdateMetadataInput{ID: id, Metadata: map[string]string{"foo": "bar"}})
		if err != nil {
			t.Fatal(err)
		}
		if md["foo"] != "bar" || md["user-script"] == "" || md["root_authorized_keys"] == "" {
			t.Errorf("UpdateMetadata returned %v", md)
		}
		// triton-go returns GetMachineMetadata's body as is: the value as a JSON string.
		if v, err := cmp.Instances().GetMetadata(ctx, &compute.GetMetadataInput{ID: id, Key: "foo"}); err != nil || v != `"bar"` {
			t.Errorf("GetMetadata foo: %q, %v", v, err)
		}
		if err := cmp.Instances().DeleteMetadata(ctx, &compute.DeleteMetadataInput{ID: id, Key: "foo"}); err != nil {
			t.Fatal(err)
		}
		md, err = cmp.Instances().ListMetadata(ctx, &compute.ListMetadataInput{ID: id})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := md["foo"]; ok || md["user-script"] == "" {
			t.Errorf("metadata after delete: %v", md)
		}

		if err := cmp.Instances().Delete(ctx, &compute.DeleteInstanceInput{ID: id}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(20 * time.Second)
		for {
			got, err := cmp.Instances().Get(ctx, &compute.GetInstanceInput{ID: id})
			if err != nil {
				ae := apiErr(t, err)
				if ae.StatusCode != http.StatusGone {
					t.Fatalf("get after delete: %v", err)
				}
				if got == nil || got.ID != id || got.State != "deleted" || got.Name != "sdk-renamed" {
					t.Errorf("410 instance %+v", got)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("still %s after delete", got.State)
			}
			time.Sleep(50 * time.Millisecond)
		}
		// Deleting again is 410, as CloudAPI answers (the SDK surfaces it as
		// an APIError; its Delete only tolerates a 410 it can read).
		err = cmp.Instances().Delete(ctx, &compute.DeleteInstanceInput{ID: id})
		if ae := apiErr(t, err); ae.StatusCode != http.StatusGone {
			t.Errorf("second delete: %+v", ae)
		}
		if n, err := cmp.Instances().Count(ctx, &compute.ListInstancesInput{}); err != nil || n != 0 {
			t.Errorf("count after delete: %d, %v", n, err)
		}
	})
}

// waitAudit polls MachineAudit until an entry with action succeeded.
func (e *env) waitAudit(id, action string) {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		resp, b := e.get("/alice/machines/" + id + "/audit")
		wantStatus(e.t, resp, b, http.StatusOK)
		for _, a := range decode[[]map[string]any](e.t, b) {
			if a["action"] == action && a["success"] == "yes" {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.t.Fatalf("no successful %s in machine %s's audit", action, id)
}

// TestTritonGoSSHAgentSigner signs with triton-go's SSHAgentSigner, as users
// with keys in ssh-agent do: ECDSA (ecdsa-sha256) and RSA (rsa-sha1) keys
// held by an in-process agent on a unix socket.
func TestTritonGoSSHAgentSigner(t *testing.T) {
	e := newEnv(t)
	dir, err := os.MkdirTemp("", "agent")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatalf("unix socket for the ssh agent: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	keyring := agent.NewKeyring()
	for _, k := range []crypto.Signer{e.keys.ecdsa, e.keys.rsa} {
		if err := keyring.Add(agent.AddedKey{PrivateKey: k}); err != nil {
			t.Fatal(err)
		}
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); agent.ServeAgent(keyring, c) }()
		}
	}()
	t.Setenv("SSH_AUTH_SOCK", sock)

	for _, k := range []struct {
		name string
		key  crypto.Signer
	}{{"ecdsa", e.keys.ecdsa}, {"rsa", e.keys.rsa}} {
		t.Run(k.name, func(t *testing.T) {
			s, err := authentication.NewSSHAgentSigner(authentication.SSHAgentSignerInput{
				KeyID: fingerprint(t, k.key), AccountName: "alice"})
			if err != nil {
				t.Fatal(err)
			}
			acc, err := account.NewClient(&triton.ClientConfig{TritonURL: e.srv.URL, AccountName: "alice",
				Signers: []authentication.Signer{s}})
			if err != nil {
				t.Fatal(err)
			}
			e.useValidatingClient(acc.Client)
			a, err := acc.Get(context.Background(), &account.GetInput{})
			if err != nil {
				t.Fatalf("GetAccount signed by the agent's %s key: %v", k.name, err)
			}
			if a.Login != "alice" || a.ID != e.alice.ID {
				t.Errorf("account %+v", a)
			}
		})
	}
}
