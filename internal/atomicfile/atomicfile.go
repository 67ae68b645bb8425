// Package atomicfile writes files so that a reader, or a process killed in the
// middle, sees the old content or the new, never a torn write.
//
// Imports: standard library only.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// Options tune WriteFile.
type Options struct {
	// DirPerm is used when the parent directory must be created (0 = 0o700).
	DirPerm os.FileMode
	// Sync flushes the data to disk before the rename (exit statuses and
	// other records that must survive a machine crash).
	Sync bool
}

// WriteFile writes data to path through a temporary file in the same
// directory and a rename, creating the directory when missing.
func WriteFile(path string, data []byte, perm os.FileMode, opts Options) error {
	dir := filepath.Dir(path)
	if opts.DirPerm == 0 {
		opts.DirPerm = 0o700
	}
	if err := os.MkdirAll(dir, opts.DirPerm); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	name := f.Name()
	err = f.Chmod(perm)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil && opts.Sync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		if err = os.Rename(name, path); err != nil {
			err = fmt.Errorf("rename %s: %w", name, err)
		}
	}
	if err != nil {
		os.Remove(name)
	}
	return err
}
