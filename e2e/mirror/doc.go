// Package mirror holds the end-to-end tests of replica moves (tandem
// volume move, docs/mirror.md) on real multi-process clusters: a move
// under a verified write load, and a move whose destination is killed.
package mirror
