package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

func TestRemoveStaleBuilds(t *testing.T) {
	tmp := t.TempDir()
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	dirs := map[string]bool{ // name → kept
		fmt.Sprintf("tandem-testbin-%d-1", os.Getpid()):      true,
		fmt.Sprintf("tandem-testbin-%d-2", gone.Process.Pid): false,
		"tandem-testbin-123456789":                           true,  // older naming, recent
		"tandem-testbin-987654321":                           false, // older naming, old
		"unrelated":                                          true,
	}
	for name := range dirs {
		if err := os.Mkdir(filepath.Join(tmp, name), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(filepath.Join(tmp, "tandem-testbin-987654321"), old, old); err != nil {
		t.Fatal(err)
	}
	removeStaleBuilds(tmp)
	for name, kept := range dirs {
		if _, err := os.Stat(filepath.Join(tmp, name)); (err == nil) != kept {
			t.Errorf("%s: kept %v, want %v", name, err == nil, kept)
		}
	}
}
