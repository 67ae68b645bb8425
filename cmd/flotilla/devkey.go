package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"
	sshagent "golang.org/x/crypto/ssh/agent"

	"flotilla/agent/driver"
	"flotilla/api/auth"
)

// devKey is the SSH key pair of dev's account.
type devKey struct {
	Pub       string // public key file
	Priv      string // private key file next to it ("" if there is none)
	Generated bool   // made by dev in its data directory
}

// resolveDevKey picks the account's key: the --key file when given, else
// the user's default key in ~/.ssh, else a key dev generates (once) in
// DATA/ssh/id_ed25519. The private key is the public key's file name
// without ".pub", when that file exists.
func resolveDevKey(flagKey, data string) (devKey, error) {
	k := devKey{Pub: flagKey}
	if k.Pub == "" {
		k.Pub = defaultKeyFile()
	}
	if k.Pub == "" {
		priv := filepath.Join(data, "ssh", "id_ed25519")
		if _, err := os.Stat(priv + ".pub"); err != nil {
			if err := generateKey(priv, "flotilla-dev"); err != nil {
				return k, fmt.Errorf("generating the dev account's SSH key in %s: %w", filepath.Dir(priv), err)
			}
		}
		k.Pub, k.Generated = priv+".pub", true
		// The triton CLI fails when ~/.ssh is missing, before it asks the
		// SSH agent dev serves; an empty one is what ssh-keygen would make.
		if home, err := os.UserHomeDir(); err == nil {
			os.Mkdir(filepath.Join(home, ".ssh"), 0o700)
		}
	}
	if priv, ok := strings.CutSuffix(k.Pub, ".pub"); ok {
		if _, err := os.Stat(priv); err == nil {
			k.Priv = priv
		}
	}
	return k, nil
}

// generateKey writes an unencrypted Ed25519 key pair to path (OpenSSH
// format, as ssh-keygen writes it) and path.pub.
func generateKey(path, comment string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return err
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return err
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub))) + " " + comment + "\n"
	return os.WriteFile(path+".pub", []byte(line), 0o644)
}

// plainAgent hides the keyring's SignWithFlags: the triton CLI's agent
// client asks for rsa-sha2-256 with every key, which OpenSSH's agent
// ignores for Ed25519 keys and x/crypto's keyring refuses. The key dev
// generates is Ed25519, for which the flag means nothing.
type plainAgent struct{ sshagent.Agent }

// agentSocketPath is where dev serves its SSH agent: DATA/ssh/agent.sock,
// or elsewhere when that path is too long for a Unix socket
// (driver.SocketPath).
func agentSocketPath(data string) string {
	return driver.SocketPath(filepath.Join(data, "ssh"), "agent.sock")
}

// serveSSHAgent serves an SSH agent holding only the key in privFile on a
// Unix socket until ctx ends, and removes the socket then. The triton CLI
// finds keys in ~/.ssh or an agent only; this is how it finds a key dev
// generated in its data directory.
func serveSSHAgent(ctx context.Context, sock, privFile string, log *slog.Logger) error {
	b, err := os.ReadFile(privFile)
	if err != nil {
		return err
	}
	key, err := auth.LoadPrivateKey(b)
	if err != nil {
		return err
	}
	kr := sshagent.NewKeyring()
	if err := kr.Add(sshagent.AddedKey{PrivateKey: key, Comment: privFile}); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
		return err
	}
	os.Remove(sock) // a socket left by a killed dev
	l, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("SSH agent socket: %w", err)
	}
	os.Chmod(sock, 0o600)
	go func() {
		<-ctx.Done()
		l.Close()
		os.Remove(sock)
	}()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					log.Warn("SSH agent socket", "error", err)
				}
				return
			}
			go func() {
				defer c.Close()
				sshagent.ServeAgent(plainAgent{kr}, c)
			}()
		}
	}()
	return nil
}
