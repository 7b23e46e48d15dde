package vmhost

import (
	"context"
	"slices"
	"testing"
)

// TestLauncherStorageReady checks that a VM's QEMU options ask the
// launcher's StorageReady about the VM's own volumes on the local agent,
// and about nothing for a VM without any (external NBD disks, image
// files), or without a hook.
func TestLauncherStorageReady(t *testing.T) {
	for _, tc := range []struct {
		name  string
		disks []string // as the catalog records them
		hook  bool
		want  []string // nil: no StorageReady
	}{
		{"volumes", []string{"a", "b"}, true, []string{"a", "b"}},
		{"a volume among other disks", []string{"nbd://10.0.0.1:10809/x", "a", "raw:/images/x.img"}, true, []string{"a"}},
		{"no volume", []string{"nbd://10.0.0.1:10809/x", "qcow2:/images/y.qcow2"}, true, nil},
		{"no hook", []string{"a"}, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var asked []string
			l := QEMULauncher{}
			if tc.hook {
				l.StorageReady = func(_ context.Context, vols []string) error {
					asked = vols
					return nil
				}
			}
			var s Spec
			for i, d := range tc.disks {
				s.Disks = append(s.Disks, launchDisk(i, d, 7))
			}
			o := l.options(s)
			if (o.StorageReady != nil) != (tc.want != nil) {
				t.Fatalf("StorageReady set: %v, want %v", o.StorageReady != nil, tc.want != nil)
			}
			if o.StorageReady == nil {
				return
			}
			if err := o.StorageReady(context.Background()); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(asked, tc.want) {
				t.Fatalf("asked about %v, want %v", asked, tc.want)
			}
		})
	}
}
