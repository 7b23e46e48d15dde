package raftlog

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/tandem-project/tandem/raftlog/mux"
	"github.com/tandem-project/tandem/volume"
	"github.com/tandem-project/tandem/volume/blockfile"
)

// Volume streaming: a replica that must catch up from a snapshot pulls the
// volume from a replica that has applied at least the snapshot's index. The
// stream is a fuzzy copy (blocks are read while entries keep being applied
// at the source); raft then applies every entry after the snapshot index on
// top, which makes the result exact because entries are idempotent range
// assignments (docs/replication.md).
//
// Wire format, after the mux header (KindStream, volume name):
//
//	client: one JSON line streamRequest
//	server: one JSON line streamResponse, then records:
//	  [kind u8][off u64][len u32] followed by len bytes for recData
//	  recEnd has len 0 and ends the stream.

const (
	recData uint8 = 1 // bytes at off
	recZero uint8 = 2 // [off, off+len) reads as zeroes (a hole at the source)
	recEnd  uint8 = 3 // end of stream

	streamChunk    = 1 << 20
	streamWaitMax  = 30 * time.Second
	streamIOTimout = 60 * time.Second
)

type streamRequest struct {
	MinIndex uint64 `json:"min_index"`
	From     int64  `json:"from"`
}

type streamResponse struct {
	Error string `json:"error,omitempty"`
	Size  int64  `json:"size"`
}

// serveStream answers one stream request on c for group g.
func serveStream(g *Group, c net.Conn) error {
	return serveFile(c, g.file, func(minIndex uint64) error {
		ctx, cancel := context.WithTimeout(context.Background(), streamWaitMax)
		err := g.fsm.waitApplied(ctx, minIndex)
		cancel()
		if err == nil {
			err = g.fsm.err()
		}
		if err != nil {
			return fmt.Errorf("replica %s cannot serve index %d: %w", g.cfg.Local, minIndex, err)
		}
		return nil
	})
}

// serveFile answers one stream request on c from file, once ready says the
// file holds the requested index.
func serveFile(c net.Conn, file *blockfile.File, ready func(minIndex uint64) error) error {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(streamIOTimout))
	br := bufio.NewReader(c)
	line, err := br.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("raftlog: stream request: %w", err)
	}
	var req streamRequest
	if err := json.Unmarshal(line, &req); err != nil {
		return fmt.Errorf("raftlog: stream request: %w", err)
	}
	w := bufio.NewWriterSize(c, 256<<10)
	respond := func(r streamResponse) error {
		b, _ := json.Marshal(r)
		if _, err := w.Write(append(b, '\n')); err != nil {
			return err
		}
		return w.Flush()
	}
	if err := ready(req.MinIndex); err != nil {
		return respond(streamResponse{Error: err.Error()})
	}
	size := file.Size()
	if err := respond(streamResponse{Size: size}); err != nil {
		return err
	}
	buf := make([]byte, streamChunk)
	var hdr [13]byte
	rec := func(kind uint8, off, n int64, data []byte) error {
		hdr[0] = kind
		binary.BigEndian.PutUint64(hdr[1:], uint64(off))
		binary.BigEndian.PutUint32(hdr[9:], uint32(n))
		if _, err := w.Write(hdr[:]); err != nil {
			return err
		}
		_, err := w.Write(data)
		return err
	}
	bg := context.Background()
	for off := req.From; off < size; {
		_ = c.SetDeadline(time.Now().Add(streamIOTimout))
		ext, err := file.Extents(bg, off, min(size-off, 64*streamChunk), 1)
		if err != nil {
			return err
		}
		e := ext[0]
		if e.Flags&volume.Zero != 0 {
			if err := rec(recZero, off, e.Length, nil); err != nil {
				return err
			}
			off += e.Length
			continue
		}
		for end := off + e.Length; off < end; {
			n := min(end-off, streamChunk)
			if err := file.ReadAt(bg, buf[:n], off); err != nil {
				return err
			}
			if err := rec(recData, off, n, buf[:n]); err != nil {
				return err
			}
			off += n
		}
	}
	if err := rec(recEnd, size, 0, nil); err != nil {
		return err
	}
	return w.Flush()
}

// errStreamRefused is a source replica saying it cannot serve the stream.
var errStreamRefused = errors.New("raftlog: stream refused")

// pullVolume copies volume name from the replica at addr (a host's raft
// address) into file, starting at byte from, as of at least minIndex.
// progress is called now and then with the offset up to which the copy is
// complete. It returns the number of bytes transferred.
//
// meter (nil for none) counts the bytes as they arrive and limits their rate.
func pullVolume(ctx context.Context, addr, name string, minIndex uint64, from int64, file *blockfile.File, meter *copyMeter, progress func(int64)) (int64, error) {
	c, err := mux.Dial(addr, mux.KindStream, name, 10*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	b, _ := json.Marshal(streamRequest{MinIndex: minIndex, From: from})
	_ = c.SetDeadline(time.Now().Add(streamWaitMax + streamIOTimout))
	if _, err := c.Write(append(b, '\n')); err != nil {
		return 0, err
	}
	br := bufio.NewReaderSize(c, 256<<10)
	line, err := br.ReadBytes('\n')
	if err != nil {
		return 0, fmt.Errorf("raftlog: stream response from %s: %w", addr, err)
	}
	var resp streamResponse
	if err := json.Unmarshal(line, &resp); err != nil {
		return 0, fmt.Errorf("raftlog: stream response from %s: %w", addr, err)
	}
	if resp.Error != "" {
		return 0, fmt.Errorf("%w by %s: %s", errStreamRefused, addr, resp.Error)
	}
	if resp.Size > file.Size() {
		if err := file.Grow(resp.Size); err != nil {
			return 0, err
		}
	}
	buf := make([]byte, streamChunk)
	var hdr [13]byte
	var moved, lastReport int64
	for {
		_ = c.SetDeadline(time.Now().Add(streamIOTimout))
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return moved, fmt.Errorf("raftlog: stream from %s: %w", addr, err)
		}
		kind := hdr[0]
		off := int64(binary.BigEndian.Uint64(hdr[1:]))
		n := int64(binary.BigEndian.Uint32(hdr[9:]))
		if off < 0 || n < 0 || off > resp.Size || n > resp.Size-off || (kind == recData && n > streamChunk) {
			return moved, fmt.Errorf("raftlog: stream from %s: bad record %d at %d+%d", addr, kind, off, n)
		}
		switch kind {
		case recData:
			if _, err := io.ReadFull(br, buf[:n]); err != nil {
				return moved, fmt.Errorf("raftlog: stream from %s: %w", addr, err)
			}
			if err := file.WriteAt(ctx, buf[:n], off, 0); err != nil {
				return moved, err
			}
			moved += n
			if err := meter.add(ctx, n, off+n); err != nil {
				return moved, err
			}
		case recZero:
			if err := file.Zero(ctx, off, n, 0); err != nil {
				return moved, err
			}
			_ = meter.add(ctx, 0, off+n)
		case recEnd:
			if err := file.Flush(ctx); err != nil {
				return moved, err
			}
			if progress != nil {
				progress(resp.Size)
			}
			return moved, nil
		default:
			return moved, fmt.Errorf("raftlog: stream from %s: unknown record %d", addr, kind)
		}
		if progress != nil && off+n-lastReport >= 256<<20 {
			if err := file.Flush(ctx); err != nil {
				return moved, err
			}
			lastReport = off + n
			progress(lastReport)
		}
	}
}
