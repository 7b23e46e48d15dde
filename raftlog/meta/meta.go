// Package meta is a host's small durable key-value state on badger v4: the
// raft stable store of every volume group (current term, vote) and each
// group's metadata (volume size, restore progress). Every write is synced
// before it returns. Bulk data never goes here: the raft log has its own
// store and volume data lives in volume files.
package meta

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	badger "github.com/dgraph-io/badger/v4"
)

// ErrNotFound is returned for a missing key. Its message is the one
// hashicorp/raft expects from a StableStore ("not found").
var ErrNotFound = errors.New("not found")

// DB is one host's metadata database.
type DB struct {
	db *badger.DB
}

// Open opens (creating if needed) the database in dir.
func Open(dir string, log *slog.Logger) (*DB, error) {
	opts := badger.DefaultOptions(dir).
		WithSyncWrites(true).
		WithLogger(badgerLogger{log}).
		// Metadata is tiny: keep badger's memory and file footprint small.
		WithMemTableSize(4 << 20).
		WithValueThreshold(64 << 10).
		WithNumMemtables(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(4).
		WithValueLogFileSize(16 << 20).
		WithBlockCacheSize(1 << 20).
		WithIndexCacheSize(1 << 20).
		WithNumCompactors(2).
		WithCompactL0OnClose(false)
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("meta: open %s: %w", dir, err)
	}
	return &DB{db: db}, nil
}

// Close closes the database.
func (d *DB) Close() error { return d.db.Close() }

// Put stores value under key, durably.
func (d *DB) Put(key, value []byte) error {
	if err := d.db.Update(func(txn *badger.Txn) error { return txn.Set(key, value) }); err != nil {
		return fmt.Errorf("meta: put %q: %w", key, err)
	}
	return nil
}

// Get returns the value of key, or ErrNotFound.
func (d *DB) Get(key []byte) ([]byte, error) {
	var out []byte
	err := d.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(key)
		if err != nil {
			return err
		}
		out, err = item.ValueCopy(nil)
		return err
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("meta: get %q: %w", key, err)
	}
	return out, nil
}

// Delete removes key, durably. Deleting a missing key is not an error.
func (d *DB) Delete(key []byte) error {
	if err := d.db.Update(func(txn *badger.Txn) error { return txn.Delete(key) }); err != nil {
		return fmt.Errorf("meta: delete %q: %w", key, err)
	}
	return nil
}

// DeletePrefix removes every key that starts with prefix, durably, in
// transactions of ordinary deletes. (badger's DropPrefix would block the
// writes of the whole database while it runs, and a raft group of another
// volume failing to save its term panics.)
func (d *DB) DeletePrefix(prefix string) error {
	for {
		var keys [][]byte
		err := d.db.View(func(txn *badger.Txn) error {
			opts := badger.DefaultIteratorOptions
			opts.PrefetchValues = false
			opts.Prefix = []byte(prefix)
			it := txn.NewIterator(opts)
			defer it.Close()
			for it.Rewind(); it.Valid() && len(keys) < 1000; it.Next() {
				keys = append(keys, it.Item().KeyCopy(nil))
			}
			return nil
		})
		if err == nil && len(keys) > 0 {
			err = d.db.Update(func(txn *badger.Txn) error {
				for _, k := range keys {
					if err := txn.Delete(k); err != nil {
						return err
					}
				}
				return nil
			})
		}
		if err != nil {
			return fmt.Errorf("meta: delete prefix %q: %w", prefix, err)
		}
		if len(keys) < 1000 {
			return nil
		}
	}
}

// PutJSON stores v encoded as JSON.
func (d *DB) PutJSON(key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("meta: encode %s: %w", key, err)
	}
	return d.Put([]byte(key), b)
}

// GetJSON decodes the JSON value of key into v, or returns ErrNotFound.
func (d *DB) GetJSON(key string, v any) error {
	b, err := d.Get([]byte(key))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("meta: decode %s: %w", key, err)
	}
	return nil
}

// Stable returns the raft.StableStore of one group; its keys live under
// the prefix "raft/<group>/".
func (d *DB) Stable(group string) *Stable {
	return &Stable{db: d, prefix: "raft/" + group + "/"}
}

// Drop removes the group's keys (when its replica is deleted).
func (s *Stable) Drop() error { return s.db.DeletePrefix(s.prefix) }

// All returns the group's keys (without the prefix) and values.
func (s *Stable) All() (map[string][]byte, error) {
	kv := map[string][]byte{}
	err := s.db.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = []byte(s.prefix)
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			kv[string(it.Item().Key()[len(s.prefix):])] = v
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("meta: reading %s: %w", s.prefix, err)
	}
	return kv, nil
}

// Stable implements hashicorp/raft's StableStore on a DB.
type Stable struct {
	db     *DB
	prefix string
}

// Set implements raft.StableStore.
func (s *Stable) Set(key, val []byte) error {
	return s.db.Put(append([]byte(s.prefix), key...), val)
}

// Get implements raft.StableStore. A missing key returns ErrNotFound.
func (s *Stable) Get(key []byte) ([]byte, error) {
	return s.db.Get(append([]byte(s.prefix), key...))
}

// SetUint64 implements raft.StableStore.
func (s *Stable) SetUint64(key []byte, val uint64) error {
	return s.Set(key, binary.BigEndian.AppendUint64(nil, val))
}

// GetUint64 implements raft.StableStore. A missing key returns ErrNotFound.
func (s *Stable) GetUint64(key []byte) (uint64, error) {
	b, err := s.Get(key)
	if err != nil {
		return 0, err
	}
	if len(b) != 8 {
		return 0, fmt.Errorf("meta: %s%s holds %d bytes, not a uint64", s.prefix, key, len(b))
	}
	return binary.BigEndian.Uint64(b), nil
}

// badgerLogger sends badger's logs to slog; badger's info chatter is
// demoted to debug.
type badgerLogger struct{ log *slog.Logger }

func (l badgerLogger) Errorf(f string, a ...any) {
	l.log.Error(strings.TrimSpace(fmt.Sprintf(f, a...)), "component", "badger")
}
func (l badgerLogger) Warningf(f string, a ...any) {
	l.log.Warn(strings.TrimSpace(fmt.Sprintf(f, a...)), "component", "badger")
}
func (l badgerLogger) Infof(f string, a ...any) {
	l.log.Debug(strings.TrimSpace(fmt.Sprintf(f, a...)), "component", "badger")
}
func (l badgerLogger) Debugf(f string, a ...any) {}
