#!/usr/bin/env bash
# Runs the tests Tandem added to its copy of hashicorp/raft (the files
# marked "Tandem's addition" in third_party/hashicorp-raft). The copy is a
# module of its own, which `go test ./...` at the top does not enter; its
# upstream tests (about 2.5 minutes, mostly waiting) run with
# `cd third_party/hashicorp-raft && go test ./...`.
set -euo pipefail
cd "$(dirname "$0")/../third_party/hashicorp-raft"
files=$(grep -l "Tandem's addition" -- *_test.go)
tests=$(grep -ho '^func Test[A-Za-z0-9_]*' $files | sed 's/^func //' | paste -sd'|')
[ -n "$tests" ] || { echo "test-raft-copy: no Tandem tests found in $(pwd)" >&2; exit 1; }
exec "${GO:-go}" test -race -run "^($tests)\$" "$@" .
