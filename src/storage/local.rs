//! [`LocalStore`]: object keys as relative paths under a root directory.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use super::{ObjectStore, StorageError};

/// A directory used as an object store.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    /// Buckets that are directories of their own rather than sub-directories of the root.
    named: std::collections::BTreeMap<String, PathBuf>,
}

impl LocalStore {
    /// A store rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            named: Default::default(),
        }
    }

    /// The same store with bucket `name` at `dir` (e.g. `edit`'s inputs beside its output directory).
    pub fn with_bucket(mut self, name: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        self.named.insert(name.into(), dir.into());
        self
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of a key; refuses absolute keys and `..` so nothing outside the root is reachable.
    pub fn path(&self, key: &str) -> Result<PathBuf, StorageError> {
        let rel = Path::new(key);
        if key.is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(StorageError::Forbidden {
                key: key.to_string(),
                reason: "keys are relative paths without '..'".into(),
            });
        }
        Ok(self.root.join(rel))
    }

    /// Reads an object, refusing it before reading when it is larger than `max_bytes`.
    pub fn get(&self, key: &str, max_bytes: u64) -> Result<Vec<u8>, StorageError> {
        let path = self.path(key)?;
        let io = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => StorageError::NotFound {
                key: key.to_string(),
            },
            _ => StorageError::Io {
                key: key.to_string(),
                message: e.to_string(),
                transient: false,
            },
        };
        let size = std::fs::metadata(&path).map_err(io)?.len();
        if size > max_bytes {
            return Err(StorageError::TooLarge {
                key: key.to_string(),
                size,
                limit: max_bytes,
            });
        }
        std::fs::read(&path).map_err(io)
    }

    /// An object's entity tag: the sha256 of its bytes (read in chunks), so that another file under
    /// the key has another tag whatever its modification time.
    pub fn etag(&self, key: &str) -> Result<String, StorageError> {
        use sha2::Digest;
        use std::io::Read;
        let path = self.path(key)?;
        let io = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => StorageError::NotFound {
                key: key.to_string(),
            },
            _ => StorageError::Io {
                key: key.to_string(),
                message: e.to_string(),
                transient: false,
            },
        };
        let mut file = std::fs::File::open(&path).map_err(io)?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
    }

    /// Writes an object atomically (temporary file + rename), creating parent directories.
    pub fn put(&self, key: &str, bytes: &[u8]) -> Result<PathBuf, StorageError> {
        let path = self.path(key)?;
        let io = |e: std::io::Error| StorageError::Io {
            key: key.to_string(),
            message: e.to_string(),
            transient: false,
        };
        let dir = path.parent().expect("a joined key has a parent");
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = dir.join(format!(
            ".{}.partial",
            path.file_name()
                .expect("normal component")
                .to_string_lossy()
        ));
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(path)
    }
}

/// As an [`ObjectStore`], a bucket is a sub-directory of the root.
impl ObjectStore for LocalStore {
    async fn get(&self, bucket: &str, key: &str, max_bytes: u64) -> Result<Vec<u8>, StorageError> {
        self.bucket(bucket)?.get(key, max_bytes)
    }

    async fn put(
        &self,
        bucket: &str,
        key: &str,
        bytes: Vec<u8>,
        _content_type: &str,
    ) -> Result<(), StorageError> {
        self.bucket(bucket)?.put(key, &bytes).map(|_| ())
    }

    async fn etag(&self, bucket: &str, key: &str) -> Result<String, StorageError> {
        self.bucket(bucket)?.etag(key)
    }

    async fn exists(&self, bucket: &str, key: &str) -> Result<bool, StorageError> {
        Ok(self.bucket(bucket)?.path(key)?.is_file())
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StorageError> {
        let path = self.bucket(bucket)?.path(key)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::Io {
                key: key.to_string(),
                message: e.to_string(),
                transient: false,
            }),
        }
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, StorageError> {
        let store = self.bucket(bucket)?;
        let mut keys = Vec::new();
        let mut dirs = vec![store.root.clone()];
        while let Some(dir) = dirs.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(StorageError::Io {
                        key: prefix.to_string(),
                        message: e.to_string(),
                        transient: false,
                    })
                }
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if let Ok(rel) = path.strip_prefix(&store.root) {
                    let key = rel.to_string_lossy().replace('\\', "/");
                    let hidden = key.split('/').any(|s| s.starts_with('.'));
                    if key.starts_with(prefix) && !hidden {
                        keys.push(key);
                    }
                }
            }
        }
        keys.sort();
        Ok(keys)
    }
}

impl LocalStore {
    /// The store of one bucket (an empty bucket name is the root itself).
    fn bucket(&self, bucket: &str) -> Result<LocalStore, StorageError> {
        if bucket.is_empty() {
            return Ok(LocalStore::new(&self.root));
        }
        if let Some(dir) = self.named.get(bucket) {
            return Ok(LocalStore::new(dir));
        }
        Ok(LocalStore::new(self.path(bucket)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_limits_and_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        store.put("a/b/c.bin", b"hello").unwrap();
        assert_eq!(store.get("a/b/c.bin", 5).unwrap(), b"hello");
        assert!(matches!(
            store.get("a/b/c.bin", 4),
            Err(StorageError::TooLarge { size: 5, .. })
        ));
        assert!(matches!(
            store.get("missing", 10),
            Err(StorageError::NotFound { .. })
        ));
        for key in ["../x", "/etc/passwd", "a/../../x", ""] {
            assert!(
                matches!(store.get(key, 10), Err(StorageError::Forbidden { .. })),
                "{key}"
            );
        }
    }
}
