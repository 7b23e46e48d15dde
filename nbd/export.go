package nbd

import (
	"context"
	"errors"

	"github.com/tandem-project/tandem/volume"
)

// Export is one named disk offered by the server.
type Export struct {
	// Name is the export name clients ask for.
	Name string
	// Description is shown to clients that ask for it (NBD_INFO_DESCRIPTION).
	Description string
	// Backend serves the export's I/O.
	Backend volume.Backend
	// PassHandle gives the backend each request's NBD handle (cookie) in
	// its context (see RequestHandle). A client that chooses its handles
	// can use them as request identities.
	PassHandle bool
}

type handleKey struct{}

// RequestHandle returns the NBD handle of the request a backend call
// serves, when the export was declared with PassHandle.
func RequestHandle(ctx context.Context) (uint64, bool) {
	h, ok := ctx.Value(handleKey{}).(uint64)
	return h, ok
}

// Exports resolves export names for the server. Implementations must be safe
// for concurrent use; the set of exports may change while the server runs.
type Exports interface {
	// Lookup returns the export called name. The empty name asks for the
	// default export. It returns an error wrapping ErrUnknownExport when
	// there is no such export.
	Lookup(name string) (Export, error)
	// List returns the names of the exports that NBD_OPT_LIST shows.
	List() []string
}

// ErrUnknownExport is returned by Exports.Lookup for a name it does not know.
var ErrUnknownExport = errors.New("unknown export")

// StaticExports is an Exports over a fixed set of exports.
type StaticExports struct {
	byName map[string]Export
	names  []string
	def    string
}

// NewStaticExports returns an Exports serving exps. def names the export
// served for the empty name; "" means there is no default export.
func NewStaticExports(def string, exps ...Export) *StaticExports {
	s := &StaticExports{byName: make(map[string]Export, len(exps)), def: def}
	for _, e := range exps {
		s.byName[e.Name] = e
		s.names = append(s.names, e.Name)
	}
	return s
}

// Lookup implements Exports.
func (s *StaticExports) Lookup(name string) (Export, error) {
	if name == "" {
		name = s.def
	}
	e, ok := s.byName[name]
	if !ok || name == "" {
		return Export{}, ErrUnknownExport
	}
	return e, nil
}

// List implements Exports.
func (s *StaticExports) List() []string { return append([]string(nil), s.names...) }
