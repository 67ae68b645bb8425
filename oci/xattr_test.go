package oci

import "golang.org/x/sys/unix"

func unixGetxattr(p, attr string, buf []byte) (int, error) { return unix.Lgetxattr(p, attr, buf) }
