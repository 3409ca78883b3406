//! [`OrtTuner`]: one identity-adapter tuning run of `adapter_step.onnx`, its state kept in the
//! execution provider's memory between steps.

use ndarray::Dimension;
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, Session};
use ort::value::Tensor;

use super::io::run_err;
use super::StateDevice;
use crate::engine::{EngineError, Tuner, TuningBatch, TuningHyper};
use crate::model::manifest::{Manifest, TUNING_GRAPH};

const STEP: &str = TUNING_GRAPH;

/// The adapter and its AdamW moments: one set of `adapter_step`'s state tensors.
struct TuningState {
    params: Tensor<f32>,
    adam_m: Tensor<f32>,
    adam_v: Tensor<f32>,
}

impl TuningState {
    /// Uninitialised state tensors of `len` values in `allocator`'s memory.
    fn allocate(allocator: &Allocator, len: usize) -> Result<Self, EngineError> {
        let new = || Tensor::<f32>::new(allocator, [len]).map_err(run_err(STEP));
        Ok(Self {
            params: new()?,
            adam_m: new()?,
            adam_v: new()?,
        })
    }

    fn bind_inputs(&self, binding: &mut IoBinding) -> Result<(), EngineError> {
        binding
            .bind_input("params", &self.params)
            .map_err(run_err(STEP))?;
        binding
            .bind_input("adam_m", &self.adam_m)
            .map_err(run_err(STEP))?;
        binding
            .bind_input("adam_v", &self.adam_v)
            .map_err(run_err(STEP))
    }

    fn bind_outputs(&mut self, binding: &mut IoBinding) -> Result<(), EngineError> {
        binding
            .bind_output("new_params", &mut self.params)
            .map_err(run_err(STEP))?;
        binding
            .bind_output("new_adam_m", &mut self.adam_m)
            .map_err(run_err(STEP))?;
        binding
            .bind_output("new_adam_v", &mut self.adam_v)
            .map_err(run_err(STEP))
    }
}

/// One tuning run of `adapter_step.onnx` through an IO binding.
///
/// The state ping-pongs between two sets of tensors allocated once in the execution provider's
/// memory: step k reads set `k % 2` and writes set `(k + 1) % 2`, so no state crosses to the host
/// between steps (on CUDA it never leaves the GPU; on the CPU nothing is copied at all). The first
/// step reads the caller's params and zero moments from host tensors (one upload). The batch
/// tensors are host tensors rewritten in place each step (on CUDA: one small upload per step), and
/// the scalar loss is bound to host memory.
///
/// It borrows the engine's session slot for the tuning graph; with `release`
/// (`engine.tuning_session = "release_after_use"`) it closes the session when the run ends.
pub(super) struct OrtTuner<'e> {
    /// The engine's tuning-graph slot, open while the tuner lives.
    slot: &'e mut Option<Session>,
    /// Close the session when the tuner is dropped.
    release: bool,
    binding: IoBinding,
    /// The state the first step reads (dropped after it).
    initial: Option<TuningState>,
    /// The two device-resident state sets.
    sets: [TuningState; 2],
    step: Tensor<f32>,
    input_ids: Tensor<i64>,
    latents: Tensor<f32>,
    noise: Tensor<f32>,
    timesteps: Tensor<i64>,
    mask: Tensor<f32>,
    masked_latents: Tensor<f32>,
    id_tokens: Tensor<f32>,
    done: usize,
}

/// A host tensor of `shape` filled with zeros (rewritten before every run).
fn host_zeros<T>(shape: &[usize]) -> Result<Tensor<T>, EngineError>
where
    T: ort::value::PrimitiveTensorElementType + Clone + Default + std::fmt::Debug + 'static,
{
    let len = shape.iter().product();
    Tensor::from_array((shape.to_vec(), vec![T::default(); len])).map_err(run_err(STEP))
}

/// Copies `view` into the host tensor `dst` after checking that the shapes agree.
fn write_host<T, D>(
    name: &str,
    dst: &mut Tensor<T>,
    view: ndarray::ArrayView<'_, T, D>,
) -> Result<(), EngineError>
where
    T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static,
    D: Dimension,
{
    let (shape, data) = dst.extract_tensor_mut();
    let want: Vec<usize> = shape.iter().map(|&x| x as usize).collect();
    if view.shape() != want.as_slice() {
        return Err(EngineError::Shape {
            graph: STEP,
            problem: format!("`{name}` is {:?}, the graph takes {want:?}", view.shape()),
        });
    }
    for (d, s) in data.iter_mut().zip(view.iter()) {
        *d = s.clone();
    }
    Ok(())
}

impl<'e> OrtTuner<'e> {
    pub(super) fn new(
        slot: &'e mut Option<Session>,
        release: bool,
        manifest: &Manifest,
        device: StateDevice,
        params: &[f32],
        hyper: TuningHyper,
    ) -> Result<Self, EngineError> {
        let len = manifest.adapter.visual_length + manifest.adapter.token_length;
        if params.len() != len {
            return Err(EngineError::Shape {
                graph: STEP,
                problem: format!(
                    "params has {} values, the adapter layout {len}",
                    params.len()
                ),
            });
        }
        let session = slot
            .as_mut()
            .expect("the engine opens the tuning session before it starts a run");
        let allocator = match device {
            StateDevice::Cpu => Allocator::default(),
            StateDevice::Cuda(id) => Allocator::new(
                session,
                MemoryInfo::new(
                    AllocationDevice::CUDA,
                    id,
                    AllocatorType::Device,
                    MemoryType::Default,
                )
                .map_err(run_err(STEP))?,
            )
            .map_err(run_err(STEP))?,
        };
        let sets = [
            TuningState::allocate(&allocator, len)?,
            TuningState::allocate(&allocator, len)?,
        ];
        let initial = TuningState {
            params: Tensor::from_array(([len], params.to_vec())).map_err(run_err(STEP))?,
            adam_m: host_zeros(&[len])?,
            adam_v: host_zeros(&[len])?,
        };
        let (b, c, h) = (
            manifest.tuning.batch_size,
            manifest.latent.channels,
            manifest.latent.size,
        );
        let scalar = |x: f32| Tensor::from_array(((), vec![x])).map_err(run_err(STEP));
        let mut binding = session.create_binding().map_err(run_err(STEP))?;
        binding
            .bind_input("lr_visual", &scalar(hyper.lr_visual)?)
            .map_err(run_err(STEP))?;
        binding
            .bind_input("lr_token", &scalar(hyper.lr_token)?)
            .map_err(run_err(STEP))?;
        binding
            .bind_input("weight_decay", &scalar(hyper.weight_decay)?)
            .map_err(run_err(STEP))?;
        // NOTE: the loss is bound to host memory on every provider: the loop reads it each step.
        let loss = Tensor::<f32>::new(&Allocator::default(), [0usize; 0]).map_err(run_err(STEP))?;
        binding.bind_output("loss", loss).map_err(run_err(STEP))?;
        Ok(Self {
            slot,
            release,
            binding,
            initial: Some(initial),
            sets,
            step: scalar(0.0)?,
            input_ids: host_zeros(&[b, manifest.tokenizer.max_length])?,
            latents: host_zeros(&[b, c, h, h])?,
            noise: host_zeros(&[b, c, h, h])?,
            timesteps: host_zeros(&[b])?,
            mask: host_zeros(&[b, 1, h, h])?,
            masked_latents: host_zeros(&[b, c, h, h])?,
            id_tokens: host_zeros(&[b, manifest.num_id_tokens, manifest.hidden_size])?,
            done: 0,
        })
    }

    /// The state the latest step wrote (or the initial state before the first step).
    fn current(&self) -> &TuningState {
        match &self.initial {
            Some(initial) => initial,
            None => &self.sets[(self.done + 1) % 2],
        }
    }
}

impl Drop for OrtTuner<'_> {
    fn drop(&mut self) {
        if self.release {
            // NOTE: the binding and the state tensors (dropped right after this) hold the last
            // references to the session's allocations; with them the memory is given back.
            *self.slot = None;
            tracing::debug!(graph = STEP, "tuning session released");
        }
    }
}

impl Tuner for OrtTuner<'_> {
    fn step(&mut self, batch: &TuningBatch<'_>) -> Result<f32, EngineError> {
        write_host("input_ids", &mut self.input_ids, batch.input_ids)?;
        write_host("latents", &mut self.latents, batch.latents)?;
        write_host("noise", &mut self.noise, batch.noise)?;
        write_host("timesteps", &mut self.timesteps, batch.timesteps)?;
        write_host("mask", &mut self.mask, batch.mask)?;
        write_host(
            "masked_latents",
            &mut self.masked_latents,
            batch.masked_latents,
        )?;
        write_host("id_tokens", &mut self.id_tokens, batch.id_tokens)?;
        self.step.extract_tensor_mut().1[0] = (self.done + 1) as f32;
        // NOTE: host inputs are re-bound after each rewrite, as in the denoiser: on the CPU provider
        // a pointer swap, on CUDA the batch's one upload.
        let b = &mut self.binding;
        b.bind_input("step", &self.step).map_err(run_err(STEP))?;
        b.bind_input("input_ids", &self.input_ids)
            .map_err(run_err(STEP))?;
        b.bind_input("latents", &self.latents)
            .map_err(run_err(STEP))?;
        b.bind_input("noise", &self.noise).map_err(run_err(STEP))?;
        b.bind_input("timesteps", &self.timesteps)
            .map_err(run_err(STEP))?;
        b.bind_input("mask", &self.mask).map_err(run_err(STEP))?;
        b.bind_input("masked_latents", &self.masked_latents)
            .map_err(run_err(STEP))?;
        b.bind_input("id_tokens", &self.id_tokens)
            .map_err(run_err(STEP))?;
        let write = self.done % 2;
        match &self.initial {
            Some(initial) => initial.bind_inputs(b)?,
            None => self.sets[1 - write].bind_inputs(b)?,
        }
        self.sets[write].bind_outputs(b)?;
        let loss = {
            let outputs = self
                .slot
                .as_mut()
                .expect("open while the tuner lives")
                .run_binding(&self.binding)
                .map_err(run_err(STEP))?;
            let (_, loss) = outputs["loss"]
                .try_extract_tensor::<f32>()
                .map_err(run_err(STEP))?;
            loss[0]
        };
        self.initial = None;
        self.done += 1;
        Ok(loss)
    }

    fn steps_done(&self) -> usize {
        self.done
    }

    fn params(&self) -> Result<Vec<f32>, EngineError> {
        let params = &self.current().params;
        if params.memory_info().is_cpu_accessible() {
            return Ok(params.extract_tensor().1.to_vec());
        }
        let host = params.to(AllocationDevice::CPU, 0).map_err(run_err(STEP))?;
        Ok(host.extract_tensor().1.to_vec())
    }
}
