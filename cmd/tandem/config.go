package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// configFlag names the flag that gives a command's YAML config file.
const configFlag = "config"

// loadAgentConfig applies the --config file of the agent command (if any)
// to its flags; see applyConfigFile. It runs at the start of RunE, after
// the root command's PersistentPreRunE, so it also starts the profiling
// endpoint when the file is what sets pprof.
func loadAgentConfig(cmd *cobra.Command, path string, g *globalFlags) error {
	if path == "" {
		return nil
	}
	set, err := applyConfigFile(cmd.Flags(), path)
	if err != nil {
		return err
	}
	for _, name := range set {
		if name == "pprof" {
			return g.startPprof()
		}
	}
	return nil
}

// applyConfigFile sets the flags of fs from the YAML file at path and
// returns the names of the flags it set, in file order.
//
// The file is one mapping whose keys are flag names without the dashes
// ("raft-listen", "heartbeat-timeout"). A scalar value is given to the
// flag as if typed after it on the command line (a duration "650ms", a
// size "500G", a bool true or false). A repeatable or list flag ("join",
// "peer", "volume") takes a YAML sequence, one element per value, or a
// scalar parsed like the command-line value. A flag given on the command
// line (Changed) keeps that value: the command line overrides the file.
//
// Every key must name a flag of fs other than help and config, appear
// once, and have a value the flag accepts; otherwise the error names the
// file, the line and the key; the flags may then be partly set, and the
// command must not run.
func applyConfigFile(fs *pflag.FlagSet, path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", configFlag, err)
	}
	m, err := parseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	var set []string
	seen := map[string]int{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], resolveAlias(m.Content[i+1])
		bad := func(format string, args ...any) error {
			return fmt.Errorf("config %s:%d: %s: %s", path, k.Line, k.Value, fmt.Sprintf(format, args...))
		}
		if k.Kind != yaml.ScalarNode || k.Tag == "!!null" || k.Value == "" {
			return nil, fmt.Errorf("config %s:%d: a key must be a flag name", path, k.Line)
		}
		if line, dup := seen[k.Value]; dup {
			return nil, bad("given twice (first on line %d)", line)
		}
		seen[k.Value] = k.Line
		f := fs.Lookup(k.Value)
		if f == nil || k.Value == "help" || k.Value == configFlag {
			return nil, bad("unknown key%s", suggestFlag(fs, k.Value))
		}
		if err := checkConfigValue(f, v); err != nil {
			return nil, bad("%v", err)
		}
		if f.Changed {
			continue // given on the command line, which wins
		}
		if err := setFromNode(fs, f, v); err != nil {
			return nil, bad("%v", err)
		}
		set = append(set, f.Name)
	}
	return set, nil
}

// parseConfig parses a config file: one YAML document holding a mapping,
// or nothing at all (an empty mapping).
func parseConfig(b []byte) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return &yaml.Node{Kind: yaml.MappingNode}, nil
		}
		return nil, err
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("line %d: a second YAML document; want one", extra.Line)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return nil, errors.New("want a mapping of flag names to values")
	}
	m := resolveAlias(doc.Content[0])
	if m.Kind == yaml.ScalarNode && m.Tag == "!!null" {
		return &yaml.Node{Kind: yaml.MappingNode}, nil // only comments
	}
	if m.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: want a mapping of flag names to values, e.g. \"name: n1\"", m.Line)
	}
	return m, nil
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// checkConfigValue reports whether v has a shape flag f takes: a scalar,
// or for a list flag a scalar or a sequence of scalars; never null.
func checkConfigValue(f *pflag.Flag, v *yaml.Node) error {
	_, isList := f.Value.(pflag.SliceValue)
	switch v.Kind {
	case yaml.ScalarNode:
		if v.Tag == "!!null" {
			return fmt.Errorf("no value (want a %s; remove the key to keep the default)", typeName(f))
		}
		return nil
	case yaml.SequenceNode:
		if !isList {
			return fmt.Errorf("want a single %s, not a list", typeName(f))
		}
		for _, e := range v.Content {
			if e = resolveAlias(e); e.Kind != yaml.ScalarNode || e.Tag == "!!null" {
				return fmt.Errorf("line %d: a list element must be a single value", e.Line)
			}
		}
		return nil
	case yaml.MappingNode:
		return fmt.Errorf("want a %s, not a mapping", typeName(f))
	}
	return fmt.Errorf("want a %s", typeName(f))
}

// setFromNode sets flag f from the checked value v and marks it Changed.
func setFromNode(fs *pflag.FlagSet, f *pflag.Flag, v *yaml.Node) error {
	if v.Kind == yaml.SequenceNode {
		items := make([]string, len(v.Content))
		for i, e := range v.Content {
			items[i] = resolveAlias(e).Value
		}
		if err := f.Value.(pflag.SliceValue).Replace(items); err != nil {
			return fmt.Errorf("%q is not a valid %s: %v", items, typeName(f), err)
		}
	} else if err := f.Value.Set(v.Value); err != nil {
		return fmt.Errorf("%q is not a valid %s: %v", v.Value, typeName(f), err)
	}
	f.Changed = true
	if f.Deprecated != "" {
		fmt.Fprintf(fs.Output(), "Flag --%s (in the config file) has been deprecated, %s\n", f.Name, f.Deprecated)
	}
	return nil
}

// typeName names the kind of value flag f takes, for error messages.
func typeName(f *pflag.Flag) string {
	switch t := f.Value.Type(); t {
	case "stringSlice", "stringArray":
		return "string or list of strings"
	case "bool":
		return "bool (true or false)"
	case "duration":
		return "duration such as 650ms or 30s"
	default:
		return t
	}
}

// suggestFlag returns ` (did you mean "x"?)` for a key close to the name of
// flag x, else "".
func suggestFlag(fs *pflag.FlagSet, key string) string {
	best, bestDist := "", 3
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Hidden || f.Name == "help" || f.Name == configFlag {
			return
		}
		if d := editDistance(strings.ReplaceAll(strings.ToLower(key), "_", "-"), f.Name); d < bestDist {
			best, bestDist = f.Name, d
		}
	})
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
