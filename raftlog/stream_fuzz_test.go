package raftlog

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/tandem-project/tandem/internal/fuzzconn"
)

// fuzzVolumeSize is the size of the volume FuzzReceiveVolume pulls into.
const fuzzVolumeSize = 256 << 10

// streamScript builds what a volume stream's source sends.
type streamScript []byte

func newStreamScript(resp streamResponse) streamScript {
	b, _ := json.Marshal(resp)
	return append(b, '\n')
}

func (s streamScript) rec(kind uint8, off, n int64, data []byte) streamScript {
	s = append(s, kind)
	s = binary.BigEndian.AppendUint64(s, uint64(off))
	s = binary.BigEndian.AppendUint32(s, uint32(n))
	return append(s, data...)
}

// streamCase is a stream a replica pulls from offset from, and whether it
// must accept it.
type streamCase struct {
	name   string
	from   int64
	stream streamScript
	accept bool
}

// streamCases are FuzzReceiveVolume's seeds, and TestReceiveVolume's cases.
func streamCases() []streamCase {
	data := bytes.Repeat([]byte{0xa5}, 4096)
	ok := newStreamScript(streamResponse{Size: fuzzVolumeSize})
	return []streamCase{
		{"whole", 0, ok.rec(recData, 0, 4096, data).rec(recZero, 4096, fuzzVolumeSize-8192, nil).
			rec(recData, fuzzVolumeSize-4096, 4096, data).rec(recEnd, fuzzVolumeSize, 0, nil), true},
		{"resumed", 8192, ok.rec(recZero, 8192, fuzzVolumeSize-8192, nil).rec(recEnd, fuzzVolumeSize, 0, nil), true},
		{"grown", 0, newStreamScript(streamResponse{Size: fuzzVolumeSize + 4096}).rec(recZero, 0, fuzzVolumeSize, nil).
			rec(recData, fuzzVolumeSize, 4096, data).rec(recEnd, fuzzVolumeSize+4096, 0, nil), true},
		{"refused", 0, newStreamScript(streamResponse{Error: "not yet"}), false},
		{"record past the end", 0, ok.rec(recData, 0, 1<<32-1, nil), false},
		{"gap", 0, ok.rec(recZero, 4096, 4096, nil), false},
		{"cut short", 0, ok.rec(recData, 0, 4096, data[:100]), false},
		{"no end", 0, ok.rec(recZero, 0, fuzzVolumeSize, nil), false},
	}
}

// FuzzReceiveVolume feeds arbitrary source bytes to the receiving end of a
// volume stream (a replica catching up pulls its volume from a peer). It
// must never panic or write before the offset it resumes from, and when it
// accepts a stream, the volume must hold exactly what the records said.
func FuzzReceiveVolume(f *testing.F) {
	for _, c := range streamCases() {
		f.Add(c.from, []byte(c.stream))
	}
	f.Fuzz(func(t *testing.T, from int64, stream []byte) {
		_, _ = receiveFuzzed(t, min(max(from, 0), fuzzVolumeSize), stream)
	})
}

// TestReceiveVolume checks FuzzReceiveVolume's seeds: that the good ones
// are accepted (so that the fuzzer's check of the result runs) and the bad
// ones refused.
func TestReceiveVolume(t *testing.T) {
	for _, c := range streamCases() {
		t.Run(c.name, func(t *testing.T) {
			if _, err := receiveFuzzed(t, c.from, c.stream); (err == nil) != c.accept {
				t.Fatalf("error %v, want accepted %v", err, c.accept)
			}
		})
	}
}

// receiveFuzzed pulls stream into a volume of fuzzVolumeSize bytes of 0x11
// from offset from, and checks the result.
func receiveFuzzed(t *testing.T, from int64, stream []byte) (pullStats, error) {
	file := openTestFile(t, filepath.Join(t.TempDir(), "v"), fuzzVolumeSize)
	before := bytes.Repeat([]byte{0x11}, fuzzVolumeSize)
	if err := file.WriteAt(context.Background(), before, 0, 0); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := receiveVolume(ctx, fuzzconn.New(stream), "source", 1, from, file, nil, nil, time.Now())
	if ctx.Err() != nil {
		t.Fatal("the pull outlived its stream")
	}
	got := make([]byte, from)
	if err := file.ReadAt(context.Background(), got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, before[:from]) {
		t.Fatalf("bytes before %d, where the pull resumed, changed", from)
	}
	if err != nil || file.Size() > 4<<20 { // too large to compare
		return st, err
	}
	want, ok := streamImage(stream, from, before)
	if !ok {
		t.Fatal("a malformed stream was accepted")
	}
	if !bytes.Equal(readAll(t, file), want) {
		t.Fatal("the volume does not hold what the stream said")
	}
	return st, nil
}

// streamImage is what a volume of content becomes once stream, resumed at
// from, is applied, by the wire format's rules read plainly; false when the
// stream breaks them.
func streamImage(stream []byte, from int64, content []byte) ([]byte, bool) {
	i := bytes.IndexByte(stream, '\n')
	if i < 0 {
		return nil, false
	}
	var resp streamResponse
	if json.Unmarshal(stream[:i], &resp) != nil || resp.Error != "" || resp.Size < int64(len(content)) {
		return nil, false
	}
	img := append(bytes.Clone(content), make([]byte, resp.Size-int64(len(content)))...)
	rest := stream[i+1:]
	for next := from; len(rest) >= 13; {
		kind, off, n := rest[0], int64(binary.BigEndian.Uint64(rest[1:])), int64(binary.BigEndian.Uint32(rest[9:]))
		rest = rest[13:]
		if off != next || off+n > resp.Size {
			return nil, false
		}
		switch kind {
		case recEnd:
			return img, n == 0 && off == resp.Size
		case recZero:
			clear(img[off : off+n])
		case recData:
			if n > streamChunk || int64(len(rest)) < n {
				return nil, false
			}
			copy(img[off:], rest[:n])
			rest = rest[n:]
		default:
			return nil, false
		}
		next = off + n
	}
	return nil, false
}
