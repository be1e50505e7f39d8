//! The in-memory key-value store behind `/kv/{key}`, bounded in keys and bytes (`[data]`, ARCHITECTURE.md §4.5).
//!
//! A [`DashMap`] shards the map, so requests on different keys rarely wait for each other (one `RwLock` around
//! the whole map made every `PUT` wait for every other request). The limits are kept in two atomics that a `PUT`
//! reserves from before it inserts, while it holds its key's shard: however many `PUT`s run at once on different
//! shards, the store never holds more than `max_keys` keys or `max_bytes` bytes.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

/// The bounds of a [`Store`]: `data.max_keys` and `data.max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Most keys held at once.
    pub max_keys: usize,
    /// Most bytes held at once, keys and values together.
    pub max_bytes: u64,
}

/// Why a value was not stored: the store is full (answered 507 Insufficient Storage).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreFull {
    /// A new key would exceed `data.max_keys`.
    #[error("the store holds its limit of {max_keys} keys (data.max_keys); delete some first")]
    Keys {
        /// The limit.
        max_keys: usize,
    },
    /// The value would take the store over `data.max_bytes`.
    #[error(
        "storing {needed} more bytes would exceed the store's limit of {max_bytes} bytes (data.max_bytes); \
         {held} are held"
    )]
    Bytes {
        /// Bytes the value would add.
        needed: u64,
        /// Bytes held now.
        held: u64,
        /// The limit.
        max_bytes: u64,
    },
}

/// Keys and values in memory, within [`StoreLimits`].
#[derive(Debug)]
pub(crate) struct Store {
    values: DashMap<String, Bytes>,
    limits: StoreLimits,
    keys: AtomicUsize,
    bytes: AtomicU64,
}

/// What a key and its value count against `max_bytes`.
fn size(key: &str, value: &Bytes) -> u64 {
    (key.len() + value.len()) as u64
}

/// Takes `n` from `counter` when it stays within `max`; false when it would not.
fn reserve_u64(counter: &AtomicU64, n: u64, max: u64) -> Result<(), u64> {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
            held.checked_add(n).filter(|total| *total <= max)
        })
        .map(drop)
}

impl Store {
    pub(crate) fn new(limits: StoreLimits) -> Store {
        Store {
            values: DashMap::new(),
            limits,
            keys: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<Bytes> {
        self.values.get(key).map(|value| value.clone())
    }

    /// Stores `value` under `key`: `Ok(true)` when the key is new, `Ok(false)` when a value was replaced.
    pub(crate) fn put(&self, key: String, value: Bytes) -> Result<bool, StoreFull> {
        let max_bytes = self.limits.max_bytes;
        let new_size = size(&key, &value);
        // The shard's lock is held from here to the insert, so the old value cannot change meanwhile.
        match self.values.entry(key) {
            Entry::Occupied(mut entry) => {
                let old_size = size(entry.key(), entry.get());
                if new_size > old_size {
                    let needed = new_size - old_size;
                    reserve_u64(&self.bytes, needed, max_bytes).map_err(|held| {
                        StoreFull::Bytes {
                            needed,
                            held,
                            max_bytes,
                        }
                    })?;
                } else {
                    self.bytes.fetch_sub(old_size - new_size, Ordering::AcqRel);
                }
                entry.insert(value);
                Ok(false)
            }
            Entry::Vacant(entry) => {
                let max_keys = self.limits.max_keys;
                self.keys
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                        (held < max_keys).then_some(held + 1)
                    })
                    .map_err(|_| StoreFull::Keys { max_keys })?;
                if let Err(held) = reserve_u64(&self.bytes, new_size, max_bytes) {
                    self.keys.fetch_sub(1, Ordering::AcqRel);
                    return Err(StoreFull::Bytes {
                        needed: new_size,
                        held,
                        max_bytes,
                    });
                }
                entry.insert(value);
                Ok(true)
            }
        }
    }

    /// Removes `key`; false when it was absent.
    pub(crate) fn delete(&self, key: &str) -> bool {
        // The reservation is given back while the shard is locked: a PUT of the same key that comes right after
        // must find the room, not a store still counted full (a false 507).
        match self.values.entry(key.to_owned()) {
            Entry::Occupied(entry) => {
                self.bytes
                    .fetch_sub(size(entry.key(), entry.get()), Ordering::AcqRel);
                self.keys.fetch_sub(1, Ordering::AcqRel);
                entry.remove();
                true
            }
            Entry::Vacant(_) => false,
        }
    }

    /// Keys and bytes held now.
    pub(crate) fn usage(&self) -> (usize, u64) {
        (
            self.keys.load(Ordering::Acquire),
            self.bytes.load(Ordering::Acquire),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max_keys: usize, max_bytes: u64) -> Store {
        Store::new(StoreLimits {
            max_keys,
            max_bytes,
        })
    }

    #[test]
    fn a_new_key_beyond_max_keys_is_refused_until_one_is_deleted() {
        let s = store(2, 1000);
        assert_eq!(s.put("a".into(), Bytes::from_static(b"1")), Ok(true));
        assert_eq!(s.put("b".into(), Bytes::from_static(b"2")), Ok(true));
        assert_eq!(
            s.put("c".into(), Bytes::from_static(b"3")),
            Err(StoreFull::Keys { max_keys: 2 })
        );
        // Replacing a held key needs no new slot.
        assert_eq!(s.put("a".into(), Bytes::from_static(b"11")), Ok(false));
        assert!(s.delete("b"));
        assert_eq!(s.put("c".into(), Bytes::from_static(b"3")), Ok(true));
        assert_eq!(s.usage(), (2, 5));
    }

    #[test]
    fn bytes_count_keys_and_values_and_a_smaller_value_gives_room_back() {
        let s = store(10, 10);
        assert_eq!(s.put("k".into(), Bytes::from(vec![0; 9])), Ok(true));
        assert_eq!(s.usage(), (1, 10));
        let full = s.put("j".into(), Bytes::new()).unwrap_err();
        assert_eq!(
            full,
            StoreFull::Bytes {
                needed: 1,
                held: 10,
                max_bytes: 10
            }
        );
        // A refused put leaves nothing behind.
        assert_eq!(s.usage(), (1, 10));
        assert_eq!(s.get("j"), None);
        // Growing the held value past the limit is refused and keeps the old value.
        assert!(s.put("k".into(), Bytes::from(vec![1; 10])).is_err());
        assert_eq!(s.get("k").unwrap().len(), 9);
        assert_eq!(s.put("k".into(), Bytes::from_static(b"xy")), Ok(false));
        assert_eq!(s.usage(), (1, 3));
        assert_eq!(s.put("j".into(), Bytes::from(vec![2; 6])), Ok(true));
        assert_eq!(s.usage(), (2, 10));
        assert!(s.delete("k") && s.delete("j") && !s.delete("j"));
        assert_eq!(s.usage(), (0, 0));
    }

    #[test]
    fn puts_and_deletes_of_the_same_key_at_the_limit_are_never_refused() {
        // Room for exactly one key: a PUT is refused only if it finds the key gone but its room not given back.
        let s = store(1, 2);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for i in 0..20_000 {
                        s.delete("k");
                        let put = s.put("k".into(), Bytes::from_static(b"v"));
                        assert!(put.is_ok(), "round {i}: {put:?}");
                    }
                });
            }
        });
        assert_eq!(s.usage(), (1, 2));
    }

    #[test]
    fn concurrent_puts_never_exceed_the_limits() {
        let s = std::sync::Arc::new(store(100, 5_000));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let s = std::sync::Arc::clone(&s);
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let _ = s.put(format!("{t}-{i}"), Bytes::from(vec![0; 60]));
                        if i % 3 == 0 {
                            s.delete(&format!("{t}-{}", i / 2));
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let (keys, bytes) = s.usage();
        assert!(keys <= 100 && bytes <= 5_000, "{keys} keys, {bytes} bytes");
        // The counters agree with what is held.
        assert_eq!(keys, s.values.len());
        let held: u64 = s.values.iter().map(|e| size(e.key(), e.value())).sum();
        assert_eq!(bytes, held);
    }
}
