//! The identity cache: the references' [`Identity`] (face embeddings and the id former's tokens) of
//! recent jobs, keyed by the model and the reference images' digests (with the face box each crop
//! was cut from), so that a repeat job for the same person skips the reference crops, the face
//! embedder and the id former and conditions on exactly the same tokens.
//!
//! Bounded (`identity_cache.capacity` entries) and with a time-to-live (`identity_cache.ttl_secs`,
//! counted from when an entry was computed; a hit does not extend it). In memory only, never
//! written. An entry is keyed by image digests, not by the identity's id, so `pva-worker forget` does
//! not reach it: a forgotten identity's derived face data leaves a worker's cache within the
//! time-to-live.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::adapter::{sha256_hex, ModelRef};
use crate::pipeline::face::FaceBox;
use crate::pipeline::inpaint::Identity;

/// The cache key of a job's references: the model's name and version, and per reference (in order)
/// its image's sha256 and the face box its crop is cut from (`None`: an aligned square crop).
pub fn identity_key(model: &ModelRef, references: &[(String, Option<FaceBox>)]) -> String {
    let mut text = format!("{}\0{}", model.name, model.version);
    for (digest, face) in references {
        let face = face
            .map(|b| format!("{},{},{},{}", b.x, b.y, b.width, b.height))
            .unwrap_or_else(|| "aligned".into());
        text.push_str(&format!("\0{digest}\0{face}"));
    }
    sha256_hex(text.as_bytes())
}

/// Recent identities, bounded in count and age.
#[derive(Debug)]
pub struct IdentityCache {
    capacity: usize,
    ttl: Duration,
    entries: HashMap<String, (Instant, Arc<Identity>)>,
}

impl IdentityCache {
    /// A cache of at most `capacity` identities (0: none are kept), each for at most `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            capacity,
            ttl,
            entries: HashMap::new(),
        }
    }

    /// Whether the cache keeps anything.
    pub fn enabled(&self) -> bool {
        self.capacity > 0 && !self.ttl.is_zero()
    }

    /// The identity under `key` if it was computed less than the time-to-live before `now`; an
    /// expired entry is dropped.
    pub fn get(&mut self, key: &str, now: Instant) -> Option<Arc<Identity>> {
        let (at, identity) = self.entries.get(key)?;
        if now.saturating_duration_since(*at) < self.ttl {
            return Some(Arc::clone(identity));
        }
        self.entries.remove(key);
        None
    }

    /// Keeps `identity` under `key`, computed at `now`: expired entries go first, then, while the
    /// cache is full, the oldest.
    pub fn insert(&mut self, key: String, identity: Arc<Identity>, now: Instant) {
        if !self.enabled() {
            return;
        }
        let ttl = self.ttl;
        self.entries
            .retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
        while self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone())
                .expect("a full cache has entries");
            self.entries.remove(&oldest);
        }
        self.entries.insert(key, (now, identity));
    }

    /// Entries held (expired ones included until the next insert or lookup drops them).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, Array3};

    fn identity(v: f32) -> Arc<Identity> {
        Arc::new(Identity {
            embeddings: Array2::from_elem((1, 4), v),
            tokens: Array3::from_elem((1, 2, 4), v),
        })
    }

    fn model() -> ModelRef {
        ModelRef {
            name: "tiny".into(),
            version: "1".into(),
            visual_length: 1,
            token_length: 1,
        }
    }

    #[test]
    fn entries_expire_after_their_time_to_live_and_the_oldest_goes_when_full() {
        let t0 = Instant::now();
        let mut cache = IdentityCache::new(2, Duration::from_secs(60));
        cache.insert("a".into(), identity(1.0), t0);
        cache.insert("b".into(), identity(2.0), t0 + Duration::from_secs(1));
        assert_eq!(
            cache.get("a", t0 + Duration::from_secs(59)),
            Some(identity(1.0))
        );
        // Full: a third entry pushes out the oldest, whatever was read since.
        cache.insert("c".into(), identity(3.0), t0 + Duration::from_secs(2));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get("a", t0 + Duration::from_secs(3)), None);
        assert!(cache.get("b", t0 + Duration::from_secs(3)).is_some());
        // A hit does not extend the time-to-live.
        assert!(cache.get("b", t0 + Duration::from_secs(61)).is_none());
        assert!(cache.get("c", t0 + Duration::from_secs(61)).is_some());
        assert!(cache.get("c", t0 + Duration::from_secs(62)).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn a_disabled_cache_keeps_nothing() {
        let t0 = Instant::now();
        for mut cache in [
            IdentityCache::new(0, Duration::from_secs(60)),
            IdentityCache::new(4, Duration::ZERO),
        ] {
            assert!(!cache.enabled());
            cache.insert("a".into(), identity(1.0), t0);
            assert!(cache.get("a", t0).is_none());
        }
    }

    #[test]
    fn the_key_names_model_images_and_crops() {
        let boxed = Some(FaceBox {
            x: 1,
            y: 2,
            width: 3,
            height: 4,
        });
        let refs = vec![("aa".to_string(), boxed), ("bb".to_string(), None)];
        let key = identity_key(&model(), &refs);
        assert_eq!(key, identity_key(&model(), &refs), "stable");
        let mut other_model = model();
        other_model.version = "2".into();
        let mut other_box = refs.clone();
        other_box[0].1 = None;
        let mut other_image = refs.clone();
        other_image[1].0 = "cc".into();
        let reordered = vec![refs[1].clone(), refs[0].clone()];
        for other in [
            identity_key(&other_model, &refs),
            identity_key(&model(), &other_box),
            identity_key(&model(), &other_image),
            identity_key(&model(), &reordered),
        ] {
            assert_ne!(key, other);
        }
    }
}
