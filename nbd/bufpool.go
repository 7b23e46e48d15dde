package nbd

import (
	"math/bits"
	"sync"
)

// bufPool recycles payload buffers in power-of-two size classes from 4 KiB to
// MaxPayload. Fresh memory is expensive (page faults on first touch), so
// every READ and WRITE payload comes from here.
type bufPool struct {
	classes [numClasses]sync.Pool
}

const (
	minClassShift = 12 // 4 KiB
	maxClassShift = 25 // 32 MiB == MaxPayload
	numClasses    = maxClassShift - minClassShift + 1
)

func classOf(n int) int {
	if n <= 1<<minClassShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minClassShift
}

// get returns a buffer of length n (n <= MaxPayload).
func (p *bufPool) get(n int) []byte {
	c := classOf(n)
	if b, ok := p.classes[c].Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return make([]byte, n, 1<<(c+minClassShift))
}

// put returns a buffer obtained from get.
func (p *bufPool) put(b []byte) {
	c := cap(b)
	if c < 1<<minClassShift || c > 1<<maxClassShift || c&(c-1) != 0 {
		return // not one of ours
	}
	b = b[:c]
	p.classes[bits.Len(uint(c))-1-minClassShift].Put(&b)
}
