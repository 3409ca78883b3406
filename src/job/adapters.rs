//! Where tuned adapters live and the cache of decoded ones: the storage key
//! `{prefix}/{identity_id}/{model_name}-{model_version}/{reference_set}.safetensors`, where
//! `reference_set` is the sha256 of the sorted sha256 digests of the reference files' bytes (so the
//! order of the references does not matter and any changed byte changes the key), and a bounded LRU
//! cache by key. The file format itself is `crate::model::adapter`.

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::adapter::{
    check_identity_id, reference_set, AdapterError, ModelRef, StoredAdapter,
};

/// The key prefix under which every adapter of an identity lives: `{prefix}/{identity_id}/` (no
/// leading slash when `prefix` is empty; slashes around `prefix` are trimmed).
pub fn identity_prefix(prefix: &str, identity_id: &str) -> Result<String, AdapterError> {
    check_identity_id(identity_id)?;
    let prefix = prefix.trim_matches('/');
    Ok(if prefix.is_empty() {
        format!("{identity_id}/")
    } else {
        format!("{prefix}/{identity_id}/")
    })
}

/// The object key of an identity's adapter for a model and a reference set:
/// `{identity_prefix}{model_name}-{model_version}/{reference_set}.safetensors`.
pub fn storage_key(
    prefix: &str,
    identity_id: &str,
    model: &ModelRef,
    reference_sha256: &[String],
) -> Result<String, AdapterError> {
    let set = reference_set(reference_sha256)?;
    Ok(format!(
        "{}{}-{}/{set}.safetensors",
        identity_prefix(prefix, identity_id)?,
        model.name,
        model.version
    ))
}

/// A bounded in-memory cache of decoded adapters by storage key; the least recently used entry goes
/// first. Capacity 0 keeps nothing. Owned by one thread (wrap it in a mutex to share it).
#[derive(Debug, Default)]
pub struct AdapterCache {
    capacity: usize,
    tick: u64,
    entries: HashMap<String, (u64, Arc<StoredAdapter>)>,
    hits: u64,
    misses: u64,
}

impl AdapterCache {
    /// A cache of at most `capacity` adapters.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }

    /// The adapter under `key`, if cached (counts a hit or a miss).
    pub fn get(&mut self, key: &str) -> Option<Arc<StoredAdapter>> {
        self.tick += 1;
        match self.entries.get_mut(key) {
            Some((used, adapter)) => {
                *used = self.tick;
                self.hits += 1;
                Some(Arc::clone(adapter))
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// Caches `adapter` under `key`, evicting the least recently used entry when full.
    pub fn insert(&mut self, key: String, adapter: Arc<StoredAdapter>) {
        if self.capacity == 0 {
            return;
        }
        self.tick += 1;
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key, (self.tick, adapter));
    }

    /// Drops the entry under `key` (e.g. after its stored object was found corrupt).
    pub fn remove(&mut self, key: &str) -> Option<Arc<StoredAdapter>> {
        self.entries.remove(key).map(|(_, a)| a)
    }

    /// Adapters cached now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Lookups that found an adapter, and lookups that did not.
    pub fn hits_misses(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::adapter::samples::{adapter, digest, model};
    use crate::model::adapter::sha256_hex;

    #[test]
    fn key_is_deterministic_and_names_its_parts() {
        let m = model();
        let refs = vec![digest(1), digest(2)];
        let key = storage_key("adapters/", "person-42", &m, &refs).unwrap();
        let set = reference_set(&refs).unwrap();
        assert_eq!(
            key,
            format!("adapters/person-42/pva-tiny-0.1.0/{set}.safetensors")
        );
        // Order-independent; any changed reference changes it.
        let swapped = vec![digest(2), digest(1)];
        assert_eq!(
            storage_key("adapters", "person-42", &m, &swapped).unwrap(),
            key
        );
        let changed = vec![digest(1), digest(9)];
        assert_ne!(
            storage_key("adapters", "person-42", &m, &changed).unwrap(),
            key
        );
        let fewer = vec![digest(1)];
        assert_ne!(
            storage_key("adapters", "person-42", &m, &fewer).unwrap(),
            key
        );
        // The set digest is sha256 over the sorted digests, newline-terminated.
        let mut sorted = refs.clone();
        sorted.sort();
        assert_eq!(
            set,
            sha256_hex(format!("{}\n{}\n", sorted[0], sorted[1]).as_bytes())
        );
        // Upper-case hex is the same digest.
        let upper: Vec<String> = refs.iter().map(|d| d.to_uppercase()).collect();
        assert_eq!(reference_set(&upper).unwrap(), set);
        assert!(storage_key("", "p", &m, &refs)
            .unwrap()
            .starts_with("p/pva-tiny-0.1.0/"));
    }

    #[test]
    fn keys_refuse_unsafe_ids_and_bad_digests() {
        let m = model();
        let refs = vec![digest(1)];
        for bad in ["", ".", "..", "a/b", "a b", "ü", &"x".repeat(129)] {
            assert!(
                matches!(
                    storage_key("p", bad, &m, &refs),
                    Err(AdapterError::IdentityId(_))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            storage_key("p", "id", &m, &["abc".to_string()]),
            Err(AdapterError::ReferenceHash(_))
        ));
    }

    #[test]
    fn cache_is_bounded_and_evicts_the_least_recently_used() {
        let a = Arc::new(adapter());
        let mut cache = AdapterCache::new(2);
        assert!(cache.get("a").is_none());
        cache.insert("a".into(), a.clone());
        cache.insert("b".into(), a.clone());
        assert!(cache.get("a").is_some()); // a is now fresher than b
        cache.insert("c".into(), a.clone());
        assert_eq!(cache.len(), 2);
        assert!(cache.get("b").is_none(), "b was the least recently used");
        assert!(cache.get("a").is_some() && cache.get("c").is_some());
        assert_eq!(cache.hits_misses(), (3, 2));
        assert!(cache.remove("a").is_some());
        assert!(cache.get("a").is_none());
        let mut off = AdapterCache::new(0);
        off.insert("a".into(), a);
        assert!(off.is_empty());
    }
}
