package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"flotilla/api/agentapi"
	"flotilla/api/auth"
	"flotilla/api/errdefs"
	"flotilla/scheduler"
	"flotilla/store"
)

const adminUsage = `Usage: flotilla admin [--db URL] TOPIC ACTION ...
  account create LOGIN --key FILE [--email E] [--operator]
  account list
  key add LOGIN FILE [--name NAME]
  package create --name N --memory MiB --disk MiB --vcpus N [--version V] [--group G] [--default] [--flexible-disk]
  package list
  network create --name N --subnet CIDR [--gateway IP] [--public] [--owner LOGIN [--vlan ID]] [--no-nat]
  network list [--owner LOGIN]
  network pool list | add CIDR | remove CIDR   (address space for tenant fabric networks)
  image import|load|pull|list ... (see 'flotilla admin image -h')
  node list [--json] | drain NAME | undrain NAME | join-token [--ttl DURATION] [--count N]
  node approve NAME [--ttl DURATION] | revoke NAME
  placement INSTANCE
`

// parseInterleaved parses flags that may come before, between or after positional arguments.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func runAdmin(ctx context.Context, args []string) error {
	// --db may come first.
	fs := flag.NewFlagSet("admin", flag.ContinueOnError)
	db := dbFlag(fs)
	fs.Usage = func() { fmt.Fprint(os.Stderr, adminUsage) }
	if err := fs.Parse(args); err != nil {
		return err
	}
	args = fs.Args()
	if len(args) < 1 {
		fmt.Fprint(os.Stderr, adminUsage)
		return usagef("say what to administer")
	}
	// The remaining flags may carry their own --db.
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "--db" || args[i] == "-db" {
			*db = args[i+1]
			args = append(args[:i:i], args[i+2:]...)
			break
		}
	}
	if *db == "" {
		return usagef("--db (or $FLOTILLA_DB) is required; `flotilla dev` writes it into env.sh")
	}
	st, err := store.Open(ctx, *db)
	if err != nil {
		return err
	}
	defer st.Close()
	topic, rest := args[0], args[1:]
	action := ""
	if len(rest) > 0 {
		action, rest = rest[0], rest[1:]
	}
	switch topic + " " + action {
	case "account create":
		return adminAccountCreate(ctx, st, rest)
	case "account list":
		return adminAccountList(ctx, st)
	case "key add":
		return adminKeyAdd(ctx, st, rest)
	case "package create":
		return adminPackageCreate(ctx, st, rest)
	case "package list":
		return adminPackageList(ctx, st)
	case "network create":
		return adminNetworkCreate(ctx, st, rest)
	case "network list":
		return adminNetworkList(ctx, st, rest)
	case "network pool":
		return adminNetworkPool(ctx, st, rest)
	case "node list":
		return adminNodeList(ctx, st, rest)
	case "node drain", "node undrain":
		if len(rest) != 1 {
			return usagef("node %s needs the node's name or id", action)
		}
		n, err := st.SetNodeDrained(ctx, rest[0], action == "drain")
		if err != nil {
			return err
		}
		fmt.Printf("node %s (%s) %sed\n", n.Name, n.ID, action)
		return nil
	case "node join-token":
		return adminJoinToken(ctx, st, rest)
	case "node approve":
		return adminNodeApprove(ctx, st, rest)
	case "node revoke":
		if len(rest) != 1 {
			return usagef("node revoke needs the node's name or id")
		}
		n, err := st.RevokeNodeCredential(ctx, rest[0])
		if err != nil {
			return errorText(err)
		}
		fmt.Printf("node %s (%s): credential revoked; its agent is refused until it registers again with a join token and `flotilla admin node approve %s`\n", n.Name, n.ID, n.Name)
		return nil
	case "image import", "image load", "image pull", "image list":
		return adminImage(ctx, st, action, rest)
	}
	if topic == "placement" && action != "" {
		return adminPlacement(ctx, st, action)
	}
	fmt.Fprint(os.Stderr, adminUsage)
	return usagef("unknown admin command %q", strings.TrimSpace(topic+" "+action))
}

// readKey reads and parses an OpenSSH public key file.
func readKey(path string) (*auth.ParsedKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading key: %w", err)
	}
	k, err := auth.ParsePublicKey(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, errdefs.MessageOf(err))
	}
	return k, nil
}

func adminAccountCreate(ctx context.Context, st *store.Store, args []string) error {
	fs := flag.NewFlagSet("account create", flag.ContinueOnError)
	keyFile := fs.String("key", "", "OpenSSH public key file")
	email := fs.String("email", "", "email address")
	operator := fs.Bool("operator", false, "operator: may act as other accounts")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("account create needs exactly one LOGIN")
	}
	var key *auth.ParsedKey
	if *keyFile != "" {
		if key, err = readKey(*keyFile); err != nil {
			return err
		}
	}
	if *email == "" {
		*email = pos[0] + "@localhost"
	}
	a, err := st.CreateAccount(ctx, store.Account{Login: pos[0], Email: *email, Operator: *operator})
	if err != nil {
		return errorText(err)
	}
	if key != nil {
		if _, err := st.CreateKey(ctx, store.Key{OwnerID: a.ID, Name: keyName(key), FingerprintMD5: key.MD5,
			FingerprintSHA256: key.SHA256, Text: key.OpenSSH}); err != nil {
			return errorText(err)
		}
	}
	fmt.Printf("account %s created (id %s)\n", a.Login, a.ID)
	return nil
}

// keyName names a key after its comment, else its fingerprint.
func keyName(k *auth.ParsedKey) string {
	if c := strings.Fields(k.Comment); len(c) > 0 {
		return c[0]
	}
	return k.MD5
}

// errorText turns a classified error into its client-safe message.
func errorText(err error) error {
	if errdefs.CodeOf(err) == errdefs.Internal {
		return err
	}
	return fmt.Errorf("%s", errdefs.MessageOf(err))
}

func adminAccountList(ctx context.Context, st *store.Store) error {
	accts, err := st.ListAccounts(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LOGIN\tID\tEMAIL\tOPERATOR")
	for _, a := range accts {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%v\n", a.Login, a.ID, a.Email, a.Operator)
	}
	return tw.Flush()
}

func adminKeyAdd(ctx context.Context, st *store.Store, args []string) error {
	fs := flag.NewFlagSet("key add", flag.ContinueOnError)
	name := fs.String("name", "", "key name (default: the key's comment)")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return usagef("key add needs LOGIN and FILE")
	}
	a, err := st.AccountByLogin(ctx, pos[0])
	if err != nil {
		return errorText(err)
	}
	key, err := readKey(pos[1])
	if err != nil {
		return err
	}
	if *name == "" {
		*name = keyName(key)
	}
	k, err := st.CreateKey(ctx, store.Key{OwnerID: a.ID, Name: *name, FingerprintMD5: key.MD5, FingerprintSHA256: key.SHA256, Text: key.OpenSSH})
	if err != nil {
		return errorText(err)
	}
	fmt.Printf("key %s (%s) added to %s\n", k.Name, k.FingerprintMD5, a.Login)
	return nil
}

func adminPackageCreate(ctx context.Context, st *store.Store, args []string) error {
	fs := flag.NewFlagSet("package create", flag.ContinueOnError)
	var p store.Package
	fs.StringVar(&p.Name, "name", "", "package name")
	fs.StringVar(&p.Version, "version", "1.0.0", "version")
	fs.Int64Var(&p.MemoryMiB, "memory", 0, "memory in MiB")
	fs.Int64Var(&p.DiskMiB, "disk", 0, "disk in MiB")
	fs.IntVar(&p.VCPUs, "vcpus", 1, "vCPUs")
	fs.StringVar(&p.Group, "group", "", "group")
	fs.StringVar(&p.Description, "description", "", "description")
	fs.StringVar(&p.Brand, "brand", "", "brand restriction")
	fs.BoolVar(&p.Default, "default", false, "the default package")
	fs.BoolVar(&p.FlexibleDisk, "flexible-disk", false, "VMs choose their disks within --disk (CloudAPI machine disks)")
	if _, err := parseInterleaved(fs, args); err != nil {
		return err
	}
	if p.Name == "" || p.MemoryMiB <= 0 || p.DiskMiB <= 0 {
		return usagef("package create needs --name, --memory and --disk (MiB, positive)")
	}
	p.Active = true
	out, err := st.CreatePackage(ctx, p)
	if err != nil {
		return errorText(err)
	}
	fmt.Printf("package %s created (id %s)\n", out.Name, out.ID)
	return nil
}

func adminPackageList(ctx context.Context, st *store.Store) error {
	pkgs, err := st.ListPackages(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tID\tMEMORY\tDISK\tVCPUS")
	for _, p := range pkgs {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\n", p.Name, p.ID, p.MemoryMiB, p.DiskMiB, p.VCPUs)
	}
	return tw.Flush()
}

func adminNetworkCreate(ctx context.Context, st *store.Store, args []string) error {
	fs := flag.NewFlagSet("network create", flag.ContinueOnError)
	var n store.Network
	var gw, owner string
	noNAT := fs.Bool("no-nat", false, "no outbound NAT")
	fs.StringVar(&n.Name, "name", "", "network name")
	fs.StringVar(&n.Subnet, "subnet", "", "IPv4 subnet, e.g. 10.10.0.0/24")
	fs.StringVar(&gw, "gateway", "", "gateway address (default: the subnet's first)")
	fs.StringVar(&n.ProvisionStart, "start", "", "first provisionable address")
	fs.StringVar(&n.ProvisionEnd, "end", "", "last provisionable address")
	fs.BoolVar(&n.Public, "public", false, "a public network")
	fs.StringVar(&owner, "owner", "", "owning account login (default: shared by all); makes a fabric network of that account")
	fs.IntVar(&n.VLANID, "vlan", store.DefaultFabricVLANID, "the owner's fabric VLAN (made if missing)")
	fs.StringVar(&n.Description, "description", "", "description")
	if _, err := parseInterleaved(fs, args); err != nil {
		return err
	}
	if n.Name == "" || n.Subnet == "" {
		return usagef("network create needs --name and --subnet")
	}
	if gw != "" {
		n.Gateway = &gw
	}
	n.InternetNAT = !*noNAT
	if owner != "" {
		a, err := st.AccountByLogin(ctx, owner)
		if err != nil {
			return errorText(err)
		}
		n.OwnerID = &a.ID
		name := fmt.Sprintf("VLAN-%d", n.VLANID)
		if n.VLANID == store.DefaultFabricVLANID {
			name = store.DefaultFabricVLANName
		}
		if _, err := st.EnsureFabricVLAN(ctx, store.FabricVLAN{OwnerID: a.ID, VLANID: n.VLANID, Name: name}); err != nil {
			return errorText(err)
		}
	}
	out, err := st.CreateNetwork(ctx, n)
	if err != nil {
		return errorText(err)
	}
	fmt.Printf("network %s created (id %s, %s, bridge %s)\n", out.Name, out.ID, out.Subnet, out.Bridge)
	return nil
}

func adminNetworkList(ctx context.Context, st *store.Store, args []string) error {
	fs := flag.NewFlagSet("network list", flag.ContinueOnError)
	owner := fs.String("owner", "", "show the networks this account can use")
	if _, err := parseInterleaved(fs, args); err != nil {
		return err
	}
	ownerID := "00000000-0000-0000-0000-000000000000"
	if *owner != "" {
		a, err := st.AccountByLogin(ctx, *owner)
		if err != nil {
			return errorText(err)
		}
		ownerID = a.ID
	}
	nets, err := st.ListNetworks(ctx, ownerID)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tID\tSUBNET\tPUBLIC\tBRIDGE")
	for _, n := range nets {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\n", n.Name, n.ID, n.Subnet, n.Public, n.Bridge)
	}
	return tw.Flush()
}

func adminNodeList(ctx context.Context, st *store.Store, args []string) error {
	fs := flag.NewFlagSet("node list", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := parseInterleaved(fs, args); err != nil {
		return err
	}
	nodes, err := st.ListNodes(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		out := make([]map[string]any, 0, len(nodes))
		for _, n := range nodes {
			out = append(out, map[string]any{"id": n.ID, "hostname": n.Name, "state": n.State, "drained": n.Drained,
				"driver": n.Driver, "brands": n.Brands,
				"capacity":       map[string]any{"memory_mib": n.MemoryMiB, "disk_mib": n.DiskMiB, "vcpus": float64(n.VCPUsMilli) / 1000, "instances": n.MaxInstances},
				"usage":          map[string]any{"memory_mib": n.UsedMemoryMiB, "disk_mib": n.UsedDiskMiB, "vcpus": float64(n.UsedVCPUsMilli) / 1000, "instances": n.Instances},
				"last_heartbeat": n.LastHeartbeat.UTC().Format(time.RFC3339Nano)})
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOSTNAME\tID\tSTATE\tDRIVER\tMEMORY (USED/CAP MiB)\tINSTANCES\tLAST HEARTBEAT")
	for _, n := range nodes {
		state := n.State
		if n.Drained {
			state += ",drained"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\t%d\t%s ago\n", n.Name, n.ID, state, n.Driver, n.UsedMemoryMiB,
			n.MemoryMiB, n.Instances, time.Since(n.LastHeartbeat).Round(time.Second))
	}
	return tw.Flush()
}

func adminJoinToken(ctx context.Context, st *store.Store, args []string) error {
	fs := flag.NewFlagSet("node join-token", flag.ContinueOnError)
	ttl := fs.Duration("ttl", time.Hour, "how long the tokens are valid")
	count := fs.Int("count", 1, "how many tokens to mint (each registers one node once)")
	if _, err := parseInterleaved(fs, args); err != nil {
		return err
	}
	if *ttl <= 0 {
		return usagef("--ttl must be positive: join tokens always expire")
	}
	if *count < 1 {
		return usagef("--count must be at least 1")
	}
	toks, err := mintJoinTokens(ctx, st, *count, *ttl)
	if err != nil {
		return err
	}
	for _, tok := range toks {
		fmt.Println(tok)
	}
	return nil
}

// mintJoinTokens records n single-use join tokens valid for ttl and returns them.
func mintJoinTokens(ctx context.Context, st *store.Store, n int, ttl time.Duration) ([]string, error) {
	out := make([]string, n)
	for i := range out {
		out[i] = agentapi.NewToken()
		if err := st.CreateJoinToken(ctx, agentapi.HashToken(out[i]), time.Now().Add(ttl)); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func adminNodeApprove(ctx context.Context, st *store.Store, args []string) error {
	fs := flag.NewFlagSet("node approve", flag.ContinueOnError)
	ttl := fs.Duration("ttl", time.Hour, "how long the approval waits for the node's registration")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *ttl <= 0 {
		return usagef("node approve needs the node's name or id (and a positive --ttl)")
	}
	n, err := st.ApproveNodeReregistration(ctx, pos[0], *ttl)
	if err != nil {
		return errorText(err)
	}
	fmt.Printf("node %s (%s): the next registration with a join token within %s replaces its credential\n", n.Name, n.ID, *ttl)
	return nil
}

func adminPlacement(ctx context.Context, st *store.Store, id string) error {
	in, err := st.InstanceByID(ctx, id)
	if err != nil {
		return errorText(err)
	}
	fmt.Printf("instance %s (%s), owner %s, %d MiB, state %s\n", in.Name, in.ID, in.OwnerID, in.MemoryMiB, in.State)
	if len(in.Placement) == 0 {
		fmt.Println("no placement record")
		return nil
	}
	var d scheduler.Decision
	if err := json.Unmarshal(in.Placement, &d); err != nil {
		return fmt.Errorf("placement record unreadable: %w", err)
	}
	fmt.Println(d.Explain())
	return nil
}

func adminNetworkPool(ctx context.Context, st *store.Store, args []string) error {
	if len(args) == 0 {
		return usagef("network pool needs list, add CIDR or remove CIDR")
	}
	switch {
	case args[0] == "list" && len(args) == 1:
		pool, err := st.SubnetPool(ctx)
		if err != nil {
			return errorText(err)
		}
		for _, p := range pool {
			fmt.Println(p)
		}
		return nil
	case args[0] == "add" && len(args) == 2:
		p, err := st.AddSubnetPool(ctx, args[1])
		if err != nil {
			return errorText(err)
		}
		fmt.Printf("%s added to the tenant subnet pool\n", p)
		return nil
	case args[0] == "remove" && len(args) == 2:
		if err := st.RemoveSubnetPool(ctx, args[1]); err != nil {
			return errorText(err)
		}
		fmt.Printf("%s removed from the tenant subnet pool\n", args[1])
		return nil
	}
	return usagef("network pool needs list, add CIDR or remove CIDR")
}
