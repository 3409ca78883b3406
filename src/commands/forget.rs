//! `pva-worker forget`: deletes everything stored for an identity — its tuned adapters, the only
//! derived face data the service keeps — and reports what it removed. Workers check that an adapter
//! still exists in the store before using a cached copy, so their in-memory entries for the identity
//! are dropped on next use.

use crate::config::Settings;
use crate::job::adapters;
use crate::storage::ObjectStore;

/// Deletes every adapter stored for `identity_id`; returns the removed keys (bucket-relative).
pub async fn forget<S: ObjectStore>(
    settings: &Settings,
    store: &S,
    identity_id: &str,
) -> anyhow::Result<(String, Vec<String>)> {
    let bucket = settings.adapter_bucket().to_string();
    let prefix = adapters::identity_prefix(&settings.tuning.adapter_prefix, identity_id)?;
    let keys = store.list(&bucket, &prefix).await?;
    for key in &keys {
        store.delete(&bucket, key).await?;
    }
    tracing::info!(identity_id, removed = keys.len(), "identity forgotten");
    Ok((bucket, keys))
}
