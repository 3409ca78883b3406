//! [`Runner`]: one job from its message to its result, the same for `pva-worker edit` (local files)
//! and `serve` (S3): parse -> the request digest (inputs' ETags) -> a stored success of the same
//! request answers as is (of another request: `conflict`) -> deadline -> fetch -> prepare -> faces
//! found (images without a face box) -> adapter per the job's tuning policy -> edit -> encode + mark
//! -> put outputs -> put `result.json`.
//! Delivery policy (ack, requeue, dead-letter, publish) belongs to the caller.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use image::RgbImage;
use tracing::Instrument;

use crate::job::adapters::{self, AdapterCache};
use crate::job::digest;
use crate::job::failure::{FailureCode, JobFailure};
use crate::job::flow::{self, Answerer, Marking};
use crate::job::identity::{identity_key, IdentityCache};
use crate::job::preset::Presets;
use crate::job::store::{ObjectStore, StorageError};
use crate::job::validate::{parse_rfc3339, CheckedJob, JobRules, Limits};
use crate::job::wire::{JobResult, JobStatus, OutputInfo, TuningPolicy};
use crate::model::adapter::{self, ModelRef, StoredAdapter};
use crate::model::Stage;
use crate::pipeline::face::{FaceBox, FaceRequest, LocatedFace};
use crate::pipeline::inpaint::{EditInput, EditOutput};
use crate::pipeline::tune::Tuned;
use crate::provenance::Signer;

/// Largest `result.json` read back when answering from a stored result.
const MAX_RESULT_BYTES: u64 = 1 << 20;
/// Largest stored adapter read back.
const MAX_ADAPTER_BYTES: u64 = 1 << 30;

/// The model side of a job: edits and tunings, run wherever the implementation runs them (the
/// service's inference threads).
pub trait Inference: Send + Sync + 'static {
    /// The loaded model (name, version, adapter layout).
    fn model(&self) -> &ModelRef;
    /// One edit with the job's seed.
    fn edit(
        &self,
        input: Arc<EditInput>,
        seed: u64,
    ) -> impl Future<Output = Result<EditOutput, JobFailure>> + Send;
    /// The faces of a job's images without a face box ([`flow::face_requests`]' order: target,
    /// then references), found where the face graphs run; `None` where nothing was asked.
    fn locate_faces(
        &self,
        input: Arc<EditInput>,
        requests: Vec<Option<FaceRequest>>,
    ) -> impl Future<Output = Result<Vec<Option<LocatedFace>>, JobFailure>> + Send;
    /// One identity's adapter, tuned on its reference photos.
    fn tune(
        &self,
        references: Vec<(RgbImage, Option<FaceBox>)>,
    ) -> impl Future<Output = Result<Tuned, JobFailure>> + Send;
}

/// What a job run reports as it goes (the service's metrics); every method defaults to nothing.
pub trait Observer: Send + Sync {
    /// A stage took `secs`.
    fn stage(&self, _stage: Stage, _secs: f64) {}
    /// A tuning job looked up its identity's adapter.
    fn adapter_lookup(&self, _hit: bool) {}
    /// An identity was tuned.
    fn tuned(&self, _secs: f64, _final_loss: f64) {}
    /// A job looked up its references' identity in the identity cache.
    fn identity_lookup(&self, _hit: bool) {}
}

/// An [`Observer`] that ignores everything.
pub struct NoObserver;

impl Observer for NoObserver {}

/// Which buckets a job's outputs may go to.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputBuckets {
    /// The job's `output.bucket` if it is one of these; an empty one means the first.
    Allowed(Vec<String>),
    /// Always this bucket, whatever the job names (`edit`: its output directory).
    Fixed(String),
}

/// Everything the runner needs from the settings (built by `config`).
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Input limits.
    pub limits: Limits,
    /// Rules a job must satisfy.
    pub rules: JobRules,
    /// The edit presets jobs may name.
    pub presets: Presets,
    /// The bucket the job's keys are read from.
    pub input_bucket: String,
    /// Prefixes input keys must start with (empty: any key).
    pub input_prefixes: Vec<String>,
    /// Where outputs go.
    pub output_buckets: OutputBuckets,
    /// The bucket tuned adapters are stored in.
    pub adapter_bucket: String,
    /// The key prefix of tuned adapters.
    pub adapter_prefix: String,
    /// Decoded adapters kept in memory.
    pub adapter_cache_capacity: usize,
    /// References' identities (embeddings and identity tokens) kept in memory (0: none).
    pub identity_cache_capacity: usize,
    /// How long an identity stays in that cache after it was computed.
    pub identity_cache_ttl: Duration,
    /// Seed of the tuning draws (recorded with a stored adapter).
    pub tuning_seed: u64,
    /// Outputs below this identity score fail the identity check.
    pub min_identity_score: f32,
    /// This worker's name in results.
    pub worker_id: String,
}

/// A job's images as the edit saw them and what it made (for `edit`'s contact sheet).
pub struct Artefacts {
    /// The decoded inputs.
    pub input: Arc<EditInput>,
    /// The pipeline's output.
    pub output: EditOutput,
}

/// A job that was answered.
pub struct Done {
    /// The result (also stored as `result.json` beside the outputs).
    pub result: JobResult,
    /// `None` when the result was already stored (a re-sent job) and is answered as is.
    pub artefacts: Option<Artefacts>,
    /// Where the result is stored: (bucket, key).
    pub result_object: (String, String),
}

impl Done {
    /// Whether the result was answered from the store rather than computed now.
    pub fn republished(&self) -> bool {
        self.artefacts.is_none()
    }
}

/// Runs jobs against a store and a model; shared by every in-flight job.
pub struct Runner<S: ObjectStore, M: Inference> {
    store: S,
    model: M,
    options: RunnerOptions,
    signer: Option<Signer>,
    observer: Arc<dyn Observer>,
    adapters: Mutex<AdapterCache>,
    identities: Mutex<IdentityCache>,
    /// One lock per adapter key being tuned, so concurrent jobs for one identity tune once.
    tuning_locks: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl<S: ObjectStore, M: Inference> Runner<S, M> {
    /// A runner over a store and a model; `signer` adds C2PA manifests to the outputs.
    pub fn new(
        store: S,
        model: M,
        options: RunnerOptions,
        signer: Option<Signer>,
        observer: Arc<dyn Observer>,
    ) -> Self {
        Self {
            adapters: Mutex::new(AdapterCache::new(options.adapter_cache_capacity)),
            identities: Mutex::new(IdentityCache::new(
                options.identity_cache_capacity,
                options.identity_cache_ttl,
            )),
            tuning_locks: Default::default(),
            store,
            model,
            options,
            signer,
            observer,
        }
    }

    /// The model side.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The options.
    pub fn options(&self) -> &RunnerOptions {
        &self.options
    }

    /// Takes the model side back (to shut it down after the last job).
    pub fn into_model(self) -> M {
        self.model
    }

    fn answerer(&self) -> Answerer<'_> {
        let m = self.model.model();
        Answerer {
            model_name: &m.name,
            model_version: &m.version,
            worker_id: &self.options.worker_id,
        }
    }

    /// Parses a job message with this worker's limits, rules and presets.
    fn parse(&self, body: &[u8]) -> Result<CheckedJob, JobFailure> {
        let o = &self.options;
        flow::parse(body, &o.limits, o.rules, &o.presets)
    }

    /// The `failed` result of a message that could not be done, with whatever id, consent and
    /// preset it has, in trace `trace_id`.
    pub fn failed_result(
        &self,
        body: &[u8],
        failure: JobFailure,
        trace_id: Option<&str>,
    ) -> JobResult {
        let mut result = flow::result(
            self.answerer(),
            &flow::job_id_hint(body),
            flow::consent_hint(body),
            Err(failure),
            BTreeMap::new(),
        );
        result.preset = self.parse(body).ok().and_then(|job| job.preset);
        result.trace_id = trace_id.map(str::to_string);
        result
    }

    /// Stores a failed result where the job's `result.json` goes, so the store holds the outcome of
    /// every job it can name: only for a job that passes validation (an invalid one names no safe
    /// key) and never over a stored success. Returns where it was stored, `None` when it was not.
    pub async fn store_failure(
        &self,
        body: &[u8],
        result: &JobResult,
    ) -> Result<Option<(String, String)>, JobFailure> {
        let Ok(job) = self.parse(body) else {
            return Ok(None);
        };
        let Ok(bucket) = self.output_bucket(&job) else {
            return Ok(None);
        };
        let key = flow::result_key(&job);
        if self.stored_success(&bucket, &key).await?.is_some() {
            return Ok(None);
        }
        let json = serde_json::to_vec_pretty(result).expect("a result serialises");
        self.store
            .put(&bucket, &key, json, "application/json")
            .await?;
        Ok(Some((bucket, key)))
    }

    /// The bucket a job's outputs go to.
    pub fn output_bucket(&self, job: &CheckedJob) -> Result<String, JobFailure> {
        let wanted = &job.request.output.bucket;
        match &self.options.output_buckets {
            OutputBuckets::Fixed(bucket) => Ok(bucket.clone()),
            OutputBuckets::Allowed(allowed) if wanted.is_empty() => {
                allowed.first().cloned().ok_or_else(|| {
                    JobFailure::new(
                        FailureCode::InvalidJob,
                        "`output.bucket` is empty and s3.output_buckets has no default",
                    )
                })
            }
            OutputBuckets::Allowed(allowed) if allowed.contains(wanted) => Ok(wanted.clone()),
            OutputBuckets::Allowed(_) => Err(JobFailure::new(
                FailureCode::InvalidJob,
                format!("invalid job: `output.bucket`: `{wanted}` is not one of this worker's output buckets"),
            )),
        }
    }

    fn check_input_prefixes(&self, job: &CheckedJob) -> Result<(), JobFailure> {
        let prefixes = &self.options.input_prefixes;
        if prefixes.is_empty() {
            return Ok(());
        }
        for (field, key) in flow::input_keys(job) {
            if !prefixes.iter().any(|p| key.starts_with(p.as_str())) {
                return Err(JobFailure::new(
                    FailureCode::InvalidJob,
                    format!(
                        "invalid job: `{field}`: key `{key}` is outside the allowed input prefixes"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A stored success of this job, if there is one (a stored result that cannot be read is
    /// computed again).
    async fn stored_success(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<JobResult>, JobFailure> {
        Ok(self
            .stored_success_digest(bucket, key)
            .await?
            .map(|(r, _)| r))
    }

    /// A stored success of this job with the request digest it records (none in results stored
    /// before digests).
    async fn stored_success_digest(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<(JobResult, Option<String>)>, JobFailure> {
        // NOTE: one GET, not HEAD + GET: this runs for every message.
        let stored = match self.store.get(bucket, key, MAX_RESULT_BYTES).await {
            Ok(bytes) => bytes,
            Err(StorageError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(digest::read_stored(&stored).filter(|(r, _)| r.status == JobStatus::Succeeded))
    }

    /// The job's request digest: its canonical expanded request and each input object's ETag
    /// (HEAD requests, concurrently), so that an object replaced under the same key is another
    /// request.
    async fn request_digest(&self, job: &CheckedJob) -> Result<String, JobFailure> {
        let bucket = &self.options.input_bucket;
        let heads = flow::input_keys(job)
            .into_iter()
            .map(|(field, key)| async move {
                let tag = self
                    .store
                    .etag(bucket, &key)
                    .await
                    .map_err(|e| JobFailure::from(e).context(&field))?;
                Ok::<_, JobFailure>((key, tag))
            });
        let etags = futures_util::future::try_join_all(heads).await?;
        Ok(digest::request_digest(job, &etags))
    }

    /// Does the job, short of publishing its result: the outputs and `result.json` are stored. The
    /// result records `trace_id`, the trace the caller runs the job in; its stages run in spans
    /// named as the stages ([`Stage::span`]), children of the caller's span.
    pub async fn run(&self, body: &[u8], trace_id: Option<&str>) -> Result<Done, JobFailure> {
        let job = self.parse(body)?;
        let bucket = self.output_bucket(&job)?;
        self.check_input_prefixes(&job)?;
        // A re-sent job whose work is done: answer from the stored result, never overwrite it; a
        // stored success of another request under this job id is a conflict, never the old image.
        let result_key = flow::result_key(&job);
        let stored = self.stored_success_digest(&bucket, &result_key).await?;
        let request_digest = self.request_digest(&job).await?;
        if let Some((result, stored_digest)) = stored {
            if let Some(stored_digest) = stored_digest.filter(|d| *d != request_digest) {
                return Err(JobFailure::new(
                    FailureCode::Conflict,
                    format!(
                        "job_id `{}` already has a stored success for request digest \
                         {stored_digest}; this request's digest is {request_digest} (another \
                         prompt, setting or input object): send it under another job_id",
                        job.request.job_id
                    ),
                ));
            }
            return Ok(Done {
                result,
                artefacts: None,
                result_object: (bucket, result_key),
            });
        }
        check_deadline(&job)?;

        let mut timings = BTreeMap::new();
        let clock = |stage: Stage, since: Instant, timings: &mut BTreeMap<String, f64>| {
            let secs = since.elapsed().as_secs_f64();
            self.observer.stage(stage, secs);
            timings.insert(stage.as_str().to_string(), secs);
        };
        let t = Instant::now();
        let mut objects = self.fetch(&job).instrument(Stage::Fetch.span()).await?;
        clock(Stage::Fetch, t, &mut timings);

        let mut input = flow::prepare(&job, &objects, &self.options.limits)?;
        // Images without a face box (and not aligned crops) get the face the detector finds; the
        // detections live in this job only (the result message reports their boxes and scores).
        let requests = flow::face_requests(&job);
        let mut faces = Vec::new();
        if requests.iter().any(Option::is_some) {
            let shared = Arc::new(input);
            let found = self
                .model
                .locate_faces(Arc::clone(&shared), requests)
                .await?;
            input = Arc::try_unwrap(shared).unwrap_or_else(|shared| (*shared).clone());
            faces = flow::apply_faces(&mut input, &found);
        }
        let target_bytes = objects.remove(&job.request.target.key).unwrap_or_default();
        let tuning = job.request.tuning != TuningPolicy::Never;
        let identities = self.identities.lock().expect("cache lock").enabled();
        // Hashing the reference bytes keys the stored adapter and the identity cache.
        let reference_sha256: Vec<String> = if tuning || identities {
            job.request
                .identity
                .references
                .iter()
                .map(|r| {
                    adapter::sha256_hex(objects.get(&r.key).map(Vec::as_slice).unwrap_or_default())
                })
                .collect()
        } else {
            Vec::new()
        };
        drop(objects);
        if tuning {
            let t = Instant::now();
            let (found, tuned) = self.adapter_for(&job, &input, &reference_sha256).await?;
            if tuned {
                clock(Stage::Tune, t, &mut timings);
            }
            input.adapter = found.map(|a| a.params.clone());
        }
        // The references' identity tokens of an earlier job with the same model and references.
        let identity_cache_key = identities.then(|| {
            let refs: Vec<(String, Option<FaceBox>)> = reference_sha256
                .iter()
                .cloned()
                .zip(input.references.iter().map(|(_, face)| *face))
                .collect();
            identity_key(self.model.model(), &refs)
        });
        if let Some(key) = &identity_cache_key {
            input.identity = self
                .identities
                .lock()
                .expect("cache lock")
                .get(key, Instant::now());
            self.observer.identity_lookup(input.identity.is_some());
        }
        let computed_identity = input.identity.is_none();
        let input = Arc::new(input);
        let output = self
            .model
            .edit(Arc::clone(&input), job.request.seed)
            .await?;
        if let Some(key) = identity_cache_key.filter(|_| computed_identity) {
            self.identities.lock().expect("cache lock").insert(
                key,
                Arc::clone(&output.identity),
                Instant::now(),
            );
        }
        for (stage, secs) in &output.timings.stages {
            self.observer.stage(*stage, *secs);
            timings.insert(stage.as_str().to_string(), *secs);
        }

        // Encoding, marking and writing the outputs and the result: the `upload` stage.
        let result = async {
            let t = Instant::now();
            let (name, version) = (&self.model.model().name, &self.model.model().version);
            let marking = Marking {
                model: (name, version),
                target_bytes: &target_bytes,
                signer: self.signer.as_ref(),
            };
            let encoded = flow::encode(&job, &output, &marking)?;
            drop(target_bytes);
            let content_type = job.request.output.format.format().content_type();
            let uploads = encoded.into_iter().map(|(key, bytes)| {
                let bucket = &bucket;
                async move { self.store.put(bucket, &key, bytes, content_type).await }
            });
            futures_util::future::try_join_all(uploads).await?;
            let min = self.options.min_identity_score;
            let outputs: Vec<OutputInfo> = output
                .images
                .iter()
                .enumerate()
                .map(|(i, o)| OutputInfo {
                    key: flow::output_key(&job, i),
                    identity_score: o.identity_score,
                    identity_check_passed: o.identity_score >= min,
                })
                .collect();
            timings.insert(
                Stage::Upload.as_str().to_string(),
                t.elapsed().as_secs_f64(),
            );
            let mut result = flow::result(
                self.answerer(),
                &job.request.job_id,
                job.request.consent.clone(),
                Ok(outputs),
                timings,
            );
            result.faces = faces;
            result.preset = job.preset.clone();
            result.trace_id = trace_id.map(str::to_string);
            let json = digest::stored_json(&result, &request_digest);
            // NOTE: written last: its presence means every output is in place.
            self.store
                .put(&bucket, &result_key, json, "application/json")
                .await?;
            self.observer
                .stage(Stage::Upload, t.elapsed().as_secs_f64());
            Ok::<_, JobFailure>(result)
        }
        .instrument(Stage::Upload.span())
        .await?;
        Ok(Done {
            result,
            artefacts: Some(Artefacts { input, output }),
            result_object: (bucket, result_key),
        })
    }

    /// Reads every input object of the job concurrently, by key.
    async fn fetch(&self, job: &CheckedJob) -> Result<BTreeMap<String, Vec<u8>>, JobFailure> {
        let max = self.options.limits.max_image_bytes as u64;
        let bucket = &self.options.input_bucket;
        let fetches = flow::input_keys(job)
            .into_iter()
            .map(|(field, key)| async move {
                let bytes = self
                    .store
                    .get(bucket, &key, max)
                    .await
                    .map_err(|e| JobFailure::from(e).context(&field))?;
                Ok::<_, JobFailure>((key, bytes))
            });
        Ok(futures_util::future::try_join_all(fetches)
            .await?
            .into_iter()
            .collect())
    }

    /// A stored adapter that is still in the store (a cached entry whose object was deleted by
    /// `forget` is dropped), decoded and checked against this model; `None` when missing or unusable.
    async fn stored_adapter(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<Arc<StoredAdapter>>, JobFailure> {
        if !self.store.exists(bucket, key).await? {
            self.adapters.lock().expect("cache lock").remove(key);
            return Ok(None);
        }
        if let Some(hit) = self.adapters.lock().expect("cache lock").get(key) {
            return Ok(Some(hit));
        }
        let bytes = match self.store.get(bucket, key, MAX_ADAPTER_BYTES).await {
            Ok(b) => b,
            Err(StorageError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match adapter::decode(&bytes, self.model.model()) {
            Ok(a) => {
                let a = Arc::new(a);
                self.adapters
                    .lock()
                    .expect("cache lock")
                    .insert(key.to_string(), Arc::clone(&a));
                Ok(Some(a))
            }
            Err(e) => {
                tracing::warn!(key, error = %e, "stored adapter is corrupt or for another model; ignoring it");
                Ok(None)
            }
        }
    }

    /// The job's tuned adapter per its policy; the bool says whether it was tuned now.
    async fn adapter_for(
        &self,
        job: &CheckedJob,
        input: &EditInput,
        reference_sha256: &[String],
    ) -> Result<(Option<Arc<StoredAdapter>>, bool), JobFailure> {
        let model = self.model.model();
        let identity = &job.request.identity.id;
        let key = adapters::storage_key(
            &self.options.adapter_prefix,
            identity,
            model,
            reference_sha256,
        )
        .map_err(|e| JobFailure::new(FailureCode::InvalidJob, e.to_string()))?;
        let bucket = &self.options.adapter_bucket;
        if let Some(a) = self.stored_adapter(bucket, &key).await? {
            self.observer.adapter_lookup(true);
            return Ok((Some(a), false));
        }
        self.observer.adapter_lookup(false);
        if job.request.tuning == TuningPolicy::IfCached {
            return Ok((None, false));
        }
        // Auto: tune once per key; a second job for the same identity waits, then finds it stored.
        let lock = {
            let mut locks = self.tuning_locks.lock().await;
            Arc::clone(locks.entry(key.clone()).or_default())
        };
        let _tuning = lock.lock().await;
        if let Some(a) = self.stored_adapter(bucket, &key).await? {
            return Ok((Some(a), false));
        }
        let t = Instant::now();
        let tuned = self
            .model
            .tune(input.references.clone())
            .instrument(Stage::Tune.span())
            .await?;
        let secs = t.elapsed().as_secs_f64();
        let final_loss = *tuned.losses.last().unwrap_or(&f32::NAN);
        self.observer.tuned(secs, final_loss as f64);
        let stored = StoredAdapter {
            identity_id: identity.clone(),
            model: model.clone(),
            reference_sha256: reference_sha256.to_vec(),
            steps: tuned.losses.len(),
            seed: self.options.tuning_seed,
            final_loss,
            params: tuned.adapter,
        };
        let bytes = adapter::encode(&stored)
            .map_err(|e| JobFailure::new(FailureCode::ModelError, e.to_string()))?;
        self.store
            .put(bucket, &key, bytes, "application/octet-stream")
            .await?;
        let stored = Arc::new(stored);
        self.adapters
            .lock()
            .expect("cache lock")
            .insert(key.clone(), Arc::clone(&stored));
        self.tuning_locks.lock().await.remove(&key);
        tracing::info!(seconds = secs, final_loss, "identity tuned and stored");
        Ok((Some(stored), true))
    }
}

/// Fails a job whose deadline has passed.
fn check_deadline(job: &CheckedJob) -> Result<(), JobFailure> {
    let Some(deadline) = job.request.deadline.as_deref() else {
        return Ok(());
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    match parse_rfc3339(deadline) {
        Some(at) if now > at => Err(JobFailure::new(
            FailureCode::DeadlineExceeded,
            format!("the job's deadline {deadline} has passed"),
        )),
        _ => Ok(()),
    }
}
