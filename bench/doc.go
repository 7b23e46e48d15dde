// Package bench is Tandem's benchmark harness: it measures Tandem the way a
// user would, against the NBD servers they would use instead, in the same
// run, so that the comparison holds on noisy shared machines.
//
// A run (see Run and Config) goes like this:
//
//  1. Systems under test are started (or taken from URIs): Tandem ("tandem
//     dev" as a child process, or an existing cluster), and baselines on a
//     file in the same filesystem as Tandem's data: "nbdkit file" and, when
//     installed, "nbd-server". Every export is pre-filled identically, so
//     reads hit real data.
//  2. Every workload of the suite (see StandardWorkloads) runs against every
//     system with the same client, interleaved A, B, A, B, … and repeated
//     Config.Repeat times. The client is fio's nbd engine when fio is
//     installed, or the built-in Go load generator (RunLoad) on
//     nbd/nbdclient.
//  3. Fault scenarios (see Scenario) run with the Go load generator against
//     Tandem and report what the client saw: the longest gap between two
//     completed I/Os, the errors, and whether the data read back is what was
//     written.
//  4. The report gives medians with min–max over the rounds, and every
//     Tandem figure as a ratio to each baseline (the ratio of the medians,
//     with the min–max of the per-round ratios). It is written as a Markdown
//     table, as JSON with every raw figure, and as an SVG bar chart.
//
// Every process the harness starts is stopped when Run returns, including
// on error and when its context is cancelled (Ctrl-C).
package bench
