// Package testnet gives tests addresses to listen on.
package testnet

import (
	"fmt"
	"math/rand/v2"
	"net"
	"testing"
)

// FreeAddr returns a TCP address "127.A.B.C:PORT" that was free a moment
// ago, on a random loopback address. A port freed and bound again on
// 127.0.0.1 can be taken in between as the local port of any outgoing
// loopback connection (a machine running other tests makes thousands); one
// on an address of its own, only by another bind there.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ip := fmt.Sprintf("127.%d.%d.%d", 1+rand.IntN(254), 1+rand.IntN(254), 1+rand.IntN(254))
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
