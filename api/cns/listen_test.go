package cns

import (
	"net"
	"strings"
	"testing"
)

// TestListenPair binds UDP and TCP on one port, and reports a TCP port that
// is already taken when the caller named it.
func TestListenPair(t *testing.T) {
	pc, ln, err := listenPair("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	defer ln.Close()
	if u, tc := pc.LocalAddr().(*net.UDPAddr).Port, ln.Addr().(*net.TCPAddr).Port; u != tc || u == 0 {
		t.Fatalf("udp port %d, tcp port %d: want one port", u, tc)
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	if pc2, ln2, err := listenPair(taken.Addr().String()); err == nil {
		pc2.Close()
		ln2.Close()
		t.Fatalf("listenPair(%s) bound a TCP port already in use", taken.Addr())
	} else if !strings.Contains(err.Error(), "listen on tcp") {
		t.Fatalf("err = %v, want the tcp listen error", err)
	}
}
