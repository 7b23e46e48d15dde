package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// follow polls get every 200 ms until step says the operation it
// watches is over, drawing step's progress line on w: redrawn in place on
// a terminal, else a line every 2 s when it changed. what names the
// operation in errors ("the migration of VM web"), show the command that
// shows it ("tandem vm show web").
func follow[T any](ctx context.Context, w io.Writer, what, show string, get func(context.Context) (T, error), step func(T) (line string, done bool, err error)) (T, error) {
	tty := isTerminal(w)
	var last string
	var lastPrint time.Time
	defer func() {
		if tty && last != "" {
			fmt.Fprintln(w)
		}
	}()
	var zero T
	for {
		x, err := get(ctx)
		if err != nil && ctx.Err() != nil {
			return zero, fmt.Errorf("following %s: %w", what, err)
		}
		if err == nil {
			line, done, err := step(x)
			if done || err != nil {
				return x, err
			}
			switch {
			case tty:
				fmt.Fprintf(w, "\r%-100s", line)
			case line != last && time.Since(lastPrint) > 2*time.Second:
				fmt.Fprintln(w, line)
				lastPrint = time.Now()
			}
			last = line
		}
		select {
		case <-ctx.Done():
			return zero, fmt.Errorf("following %s: %w (it goes on; see %s)", what, ctx.Err(), show)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// bar renders fraction frac (0 to 1) of a progress bar 30 characters wide.
func bar(frac float64) string {
	const width = 30
	done := int(float64(width) * min(max(frac, 0), 1))
	return "[" + strings.Repeat("#", done) + strings.Repeat(".", width-done) + "]"
}

// isTerminal reports whether w is a terminal (progress is then redrawn in
// place).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
