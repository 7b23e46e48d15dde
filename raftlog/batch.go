package raftlog

import (
	"slices"
	"sync"
)

// batcher turns concurrent volume mutations into few, large log entries
// (group commit). The first mutation goes straight to the log; while
// maxInflight entries are being committed, later mutations queue and leave
// together, up to maxBytes per entry, as soon as an entry completes.
// Keeping several entries in flight lets the leader's and the followers'
// syncs of successive entries overlap.
type batcher struct {
	// apply commits one entry and returns after it is applied, with the
	// ids of the ops refused as fenced.
	apply       func(data []byte) (fenced []uint64, err error)
	maxInflight int
	maxBytes    int

	mu       sync.Mutex
	queue    []*pendingOp
	inflight int
}

type pendingOp struct {
	op   *op
	done chan error
}

// submit commits o (in some entry) and returns the result of that entry,
// or ErrFenced if the FSM refused o.
// o.data must stay valid until submit returns.
func (b *batcher) submit(o *op) error {
	p := &pendingOp{op: o, done: make(chan error, 1)}
	b.mu.Lock()
	b.queue = append(b.queue, p)
	if b.inflight < b.maxInflight {
		// Room in flight: this goroutine commits the queue itself (no
		// hand-off), and starts further entries if more room is left.
		batch := b.takeLocked()
		b.inflight++
		b.kickLocked()
		b.mu.Unlock()
		b.run(batch)
	} else {
		b.mu.Unlock()
	}
	return <-p.done
}

// takeLocked removes the next entry's worth of ops from the queue.
func (b *batcher) takeLocked() []*pendingOp {
	n, size := 0, entryHeader
	for n < len(b.queue) && (n == 0 || size+b.queue[n].op.encodedLen() <= b.maxBytes) {
		size += b.queue[n].op.encodedLen()
		n++
	}
	batch := make([]*pendingOp, n)
	copy(batch, b.queue)
	b.queue = append(b.queue[:0], b.queue[n:]...)
	return batch
}

// kickLocked starts entries on new goroutines while there is room in
// flight.
func (b *batcher) kickLocked() {
	for b.inflight < b.maxInflight && len(b.queue) > 0 {
		batch := b.takeLocked()
		b.inflight++
		go b.run(batch)
	}
}

func (b *batcher) run(batch []*pendingOp) {
	ops := make([]*op, len(batch))
	for i, p := range batch {
		ops[i] = p.op
	}
	data := encodeEntry(ops)
	fenced, err := b.apply(data)
	for _, p := range batch {
		if err == nil && p.op.id != 0 && slices.Contains(fenced, p.op.id) {
			p.done <- ErrFenced
			continue
		}
		p.done <- err
	}
	b.mu.Lock()
	b.inflight--
	b.kickLocked()
	b.mu.Unlock()
}
