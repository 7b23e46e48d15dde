package qmp

import (
	"context"
	"fmt"
	"slices"
)

// Subscription receives the events QEMU sends on a Conn. Its methods are
// safe for concurrent use, but its events are meant for one reader.
type Subscription struct {
	c  *Conn
	ch chan Event
	// err is why ch was closed; written under c.mu before closing ch.
	err error
}

// Subscribe returns a subscription to every event QEMU sends from now on.
// Subscribe before running the command whose events you wait for, so that
// none is missed. The subscription holds up to EventBuffer unread events;
// if it is full when another arrives it is dropped (see Subscription.Err).
// Close it when done. On a Conn that has ended, the subscription is
// already closed with the Conn's error.
func (c *Conn) Subscribe() *Subscription {
	s := &Subscription{c: c, ch: make(chan Event, EventBuffer)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		s.err = c.err
		close(s.ch)
		return s
	}
	c.subs[s] = struct{}{}
	return s
}

// publish gives ev to every subscriber, dropping those that are full.
func (c *Conn) publish(ev Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for s := range c.subs {
		select {
		case s.ch <- ev:
		default:
			delete(c.subs, s)
			s.err = fmt.Errorf("%w (buffer of %d events full at %s)", ErrSlowSubscriber, EventBuffer, ev.Name)
			close(s.ch)
		}
	}
}

// Events returns the channel of events. It is closed when the
// subscription ends: Close, the end of the Conn, or the subscriber falling
// behind; Err then says which.
func (s *Subscription) Events() <-chan Event { return s.ch }

// Err returns nil while the subscription is active, then why its channel
// was closed: ErrClosed after Close, an error wrapping ErrSlowSubscriber
// if events were dropped, or the Conn's error.
func (s *Subscription) Err() error {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.err
}

// Close ends the subscription and closes its channel (unless it was
// already closed). Events still buffered remain readable.
func (s *Subscription) Close() {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.subs[s]; ok {
		delete(c.subs, s)
		s.err = ErrClosed
		close(s.ch)
	}
}

// Wait reads events until one named in names arrives (any event if names
// is empty) and returns it; the events read before it are consumed. It
// returns an error when ctx ends or the subscription ends.
func (s *Subscription) Wait(ctx context.Context, names ...string) (Event, error) {
	for {
		select {
		case ev, ok := <-s.ch:
			if !ok {
				return Event{}, fmt.Errorf("qmp: waiting for event %v: %w", names, s.Err())
			}
			if len(names) == 0 || slices.Contains(names, ev.Name) {
				return ev, nil
			}
		case <-ctx.Done():
			return Event{}, fmt.Errorf("qmp: waiting for event %v: %w", names, ctx.Err())
		}
	}
}

// WaitEvent waits for the next event named in names (any event if names is
// empty) that QEMU sends after WaitEvent was called. To wait for an event
// caused by a command, use a Subscription made before the command instead:
// the event may come before WaitEvent subscribes.
func (c *Conn) WaitEvent(ctx context.Context, names ...string) (Event, error) {
	s := c.Subscribe()
	defer s.Close()
	return s.Wait(ctx, names...)
}
