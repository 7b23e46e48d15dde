// Command tandem is the single Tandem binary: the per-host agent, a
// self-contained dev cluster, and a CLI.
package main

import (
	"context"
	"fmt"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if a := os.Getenv("TANDEM_PPROF"); a != "" {
		go http.ListenAndServe(a, nil) //nolint:errcheck
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "tandem:", err)
		os.Exit(1)
	}
}
