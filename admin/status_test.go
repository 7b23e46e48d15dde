package admin

import (
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/tandem-project/tandem/cluster/catalog"
)

// TestCatalogStatus checks the HTTP status of refused catalog commands: a
// refusal is a 4xx, which agents and the CLI take as final (a 5xx would be
// retried, as it was for a step of a migration that no longer exists).
func TestCatalogStatus(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{catalog.ErrNotFound, http.StatusNotFound},
		{catalog.ErrInvalid, http.StatusBadRequest},
		{catalog.ErrExists, http.StatusConflict},
		{catalog.ErrNoMigration, http.StatusConflict},
		{catalog.ErrNoMove, http.StatusConflict},
		{catalog.ErrNoDiskMove, http.StatusConflict},
		{errors.New("disk on fire"), 0},
	} {
		got, ok := catalogStatus(fmt.Errorf("catalog: VM \"g\": %w", tc.err))
		if got != tc.want || ok != (tc.want != 0) {
			t.Errorf("%v: status %d (%v), want %d", tc.err, got, ok, tc.want)
		}
	}
}
