package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/tandem-project/tandem/nbd"
	"github.com/tandem-project/tandem/volume/blockfile"
)

// LocalVolumeSpec declares a local volume: a sparse file on this host
// served as it is, without a write log or replicas. Writes land in the
// page cache and are durable once the client sends FLUSH or FUA (the
// semantics of nbdkit's file plugin and of qemu-nbd with a writeback
// cache): a crash of the host loses the writes since the client's last
// FLUSH, and losing the host loses the volume. For scratch disks, and
// for data the guest replicates itself.
type LocalVolumeSpec struct {
	// Name is the export name.
	Name string
	// Size is the volume size in bytes (a file is grown, never shrunk).
	Size int64
	// ReadOnly serves an existing volume read-only.
	ReadOnly bool
}

// localPath is where the file of local volume name lives.
func localPath(dataDir, name string) string {
	return filepath.Join(dataDir, "local", name+".img")
}

// checkKinds refuses to serve a volume as one kind when the data
// directory holds it as the other: serving a replicated volume's name
// from an empty local file (or the reverse) would show its clients an
// empty disk.
func checkKinds(dataDir string, replicated []VolumeSpec, local []LocalVolumeSpec) error {
	for _, v := range replicated {
		if _, err := os.Stat(localPath(dataDir, v.Name)); err == nil {
			return fmt.Errorf("agent: volume %s is declared replicated, but %s holds it as a local volume: declare it local (--volume %s=SIZE,local) or remove the file", v.Name, localPath(dataDir, v.Name), v.Name)
		}
	}
	for _, v := range local {
		dir := filepath.Join(dataDir, "groups", v.Name)
		if _, err := os.Stat(dir); err == nil {
			return fmt.Errorf("agent: volume %s is declared local, but %s holds it as a replicated volume: drop ',local' or remove the directory", v.Name, dir)
		}
	}
	return nil
}

// openLocal opens (creating it if needed) the file of a local volume.
func openLocal(dataDir string, spec LocalVolumeSpec) (*blockfile.File, error) {
	path := localPath(dataDir, spec.Name)
	if spec.ReadOnly {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("agent: local volume %s is declared read-only but %s does not exist: serve it writable first, or check --data", spec.Name, path)
		}
	}
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.Mkdir(dir, 0o700); err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
		// The directory's name must survive a crash like the files in it.
		if err := blockfile.SyncDir(dataDir); err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
	}
	f, err := blockfile.Open(path, blockfile.Options{Size: spec.Size, Create: true, ReadOnly: spec.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("agent: local volume %s: %w", spec.Name, err)
	}
	return f, nil
}

// addLocal exports a local volume. Its backend never changes, so it is
// served directly, without a handoff.
func (e *exportSet) addLocal(name string, f *blockfile.File) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.listed(name)
	e.byName[name] = nbd.Export{Name: name, Description: "tandem local volume " + name + " (not replicated)", Backend: f}
}
