package wal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/dgraph-io/badger/v4"
	"github.com/hashicorp/raft"
)

// badgerStore is a minimal raft.LogStore on badger v4 with SyncWrites, the
// baseline the benchmarks compare against: one transaction (and its syncs)
// per StoreLogs call, keys are big-endian indexes.
type badgerStore struct {
	db          *badger.DB
	mu          sync.RWMutex
	first, last uint64
}

func openBadgerStore(dir string) (*badgerStore, error) {
	opts := badger.DefaultOptions(dir).WithSyncWrites(true).WithLogger(nil)
	db, err := badger.Open(opts)
	if err != nil {
		return nil, err
	}
	s := &badgerStore{db: db}
	// Recover the bounds from the first and last keys.
	err = db.View(func(txn *badger.Txn) error {
		for _, reverse := range []bool{false, true} {
			o := badger.DefaultIteratorOptions
			o.PrefetchValues, o.Reverse = false, reverse
			it := txn.NewIterator(o)
			it.Rewind()
			if it.Valid() {
				i := binary.BigEndian.Uint64(it.Item().Key())
				if reverse {
					s.last = i
				} else {
					s.first = i
				}
			}
			it.Close()
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

func (s *badgerStore) Close() error { return s.db.Close() }

func badgerKey(i uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], i)
	return k[:]
}

func (s *badgerStore) FirstIndex() (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.first, nil
}

func (s *badgerStore) LastIndex() (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.last, nil
}

func (s *badgerStore) GetLog(index uint64, out *raft.Log) error {
	return s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(badgerKey(index))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return raft.ErrLogNotFound
		}
		if err != nil {
			return err
		}
		v, err := item.ValueCopy(nil)
		if err != nil {
			return err
		}
		if len(v) < 21 {
			return fmt.Errorf("badger store: short value for %d", index)
		}
		out.Index = index
		out.Term = binary.LittleEndian.Uint64(v)
		out.Type = raft.LogType(v[8])
		out.AppendedAt = decodeTime(int64(binary.LittleEndian.Uint64(v[9:])))
		n := binary.LittleEndian.Uint32(v[17:])
		out.Data, out.Extensions = nil, nil
		if n > 0 {
			out.Data = v[21 : 21+n]
		}
		if len(v) > int(21+n) {
			out.Extensions = v[21+n:]
		}
		return nil
	})
}

func (s *badgerStore) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

func (s *badgerStore) StoreLogs(logs []*raft.Log) error {
	for len(logs) > 0 {
		n := 0
		err := s.db.Update(func(txn *badger.Txn) error {
			for _, l := range logs {
				v := make([]byte, 21+len(l.Data)+len(l.Extensions))
				binary.LittleEndian.PutUint64(v, l.Term)
				v[8] = byte(l.Type)
				binary.LittleEndian.PutUint64(v[9:], uint64(encodeTime(l.AppendedAt)))
				binary.LittleEndian.PutUint32(v[17:], uint32(len(l.Data)))
				copy(v[21:], l.Data)
				copy(v[21+len(l.Data):], l.Extensions)
				if err := txn.Set(badgerKey(l.Index), v); err != nil {
					if errors.Is(err, badger.ErrTxnTooBig) && n > 0 {
						return nil // commit what fits, continue in a new txn
					}
					return err
				}
				n++
			}
			return nil
		})
		if err != nil {
			return err
		}
		s.mu.Lock()
		if s.first == 0 {
			s.first = logs[0].Index
		}
		s.last = max(s.last, logs[n-1].Index)
		s.mu.Unlock()
		logs = logs[n:]
	}
	return nil
}

func (s *badgerStore) DeleteRange(min, max uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	lo, hi := maxU(min, s.first), minU(max, s.last)
	for i := lo; i <= hi && s.last != 0; {
		err := s.db.Update(func(txn *badger.Txn) error {
			for ; i <= hi; i++ {
				if err := txn.Delete(badgerKey(i)); err != nil {
					if errors.Is(err, badger.ErrTxnTooBig) {
						return nil
					}
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if min <= s.first {
		s.first = max + 1
	}
	if max >= s.last {
		s.last = min - 1
	}
	if s.first > s.last {
		s.first, s.last = 0, 0
	}
	return nil
}

func maxU(a, b uint64) uint64 { return max(a, b) }
func minU(a, b uint64) uint64 { return min(a, b) }
