package raftlog

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
)

// BenchmarkReplicatedWrite measures durable writes through the leader of a
// 3-replica volume in one process (WAL on the test's temp dir), for block
// sizes and numbers of concurrent writers. Run with -benchtime and compare
// against the same machine's baseline: go test -run X -bench Replicated ./raftlog/
func BenchmarkReplicatedWrite(b *testing.B) {
	for _, bs := range []int{4 << 10, 1 << 20} {
		for _, qd := range []int{1, 32} {
			if bs == 1<<20 && qd == 32 {
				qd = 8
			}
			b.Run(fmt.Sprintf("bs=%d/qd=%d", bs, qd), func(b *testing.B) {
				c := newBenchCluster(b)
				v := c.hosts[c.leader("vol")].vol["vol"]
				buf := make([]byte, bs)
				var next atomic.Int64
				b.SetBytes(int64(bs))
				b.SetParallelism(qd)
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						k := next.Add(1)
						off := (k * int64(bs)) % (64 << 20)
						if err := v.WriteAt(context.Background(), buf, off, 0); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}

func newBenchCluster(b *testing.B) *testCluster {
	c := newTestClusterTB(b, 3, nil)
	c.open(VolumeSpec{Name: "vol", Size: 64 << 20})
	return c
}
