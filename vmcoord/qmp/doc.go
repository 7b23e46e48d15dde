// Package qmp is a small client for the QEMU Machine Protocol (QMP), the
// JSON protocol QEMU speaks on its monitor socket.
//
// We wrote our own instead of using github.com/digitalocean/go-qemu
// because the VM coordinator needs two things it does not offer: context
// cancellation on every command, and event subscriptions by several
// waiters at once (the supervisor watching for BLOCK_IO_ERROR while a
// migration waits for MIGRATION events). The protocol is small enough that
// a client of our own costs less than working around those gaps.
//
// # Use
//
//	c, err := qmp.Dial(ctx, "unix", "/run/vm1/qmp.sock") // greeting + qmp_capabilities
//	sub := c.Subscribe()                                // before the command whose events you want
//	defer sub.Close()
//	var st struct{ Status string }
//	err = c.Execute(ctx, "query-status", nil, &st)
//	ev, err := sub.Wait(ctx, "STOP", "SHUTDOWN")
//	...
//	<-c.Done() // QEMU closed the socket (it exited), or Close was called
//
// # Commands
//
// Execute may be called from any number of goroutines. Every command
// carries an id and replies are matched by it, so concurrent commands do
// not mix up their replies. QEMU (without the "oob" capability, which this
// client does not enable) runs commands one at a time in the order it reads
// them. A QMP error reply is returned as a *Error (wrapped with the
// command's name; use errors.As). When the context ends first, Execute
// returns at once with the context's error; the command may or may not
// have been sent and run, and its late reply is discarded.
//
// # Events
//
// Each Subscription receives every event QEMU sends after Subscribe
// returned, in order, in a buffer of EventBuffer events. The connection's
// reader never blocks on a subscriber: a subscriber whose buffer is full
// when an event arrives is dropped, its channel is closed and its Err
// returns ErrSlowSubscriber, so it knows it missed events (instead of
// silently losing one). A subscriber that must not miss an event reads
// promptly or resubscribes and re-reads the state with a query command.
//
// # End of the connection
//
// Done is closed when the connection ends: QEMU closed it (QEMU exits
// when it quits), a read or write failed, QEMU sent something that is not
// QMP, or Close was called. Err then says which. Commands waiting for a
// reply return that error, and subscriptions are closed with it.
//
// QMP is a local, trusted input, but a garbled message must never crash
// the coordinator: the decoder rejects anything that is not one JSON
// object of a known kind (greeting, reply or event) and the connection is
// closed with an error wrapping ErrProtocol. FuzzDecode and FuzzReader
// check that no input panics.
package qmp
