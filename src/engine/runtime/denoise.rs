//! [`OrtDenoiser`]: the UNet of one job behind an IO binding, stepped by the sampling loop.

use ort::session::{IoBinding, Session};
use ort::value::Tensor;

use super::io::run_err;
use crate::engine::{DenoiseInputs, Denoiser, EngineError};

/// The UNet of one job. The fixed inputs (hidden states, identity tokens, switch, adapter) are bound
/// once — on the CUDA provider `bind_input` copies them to the device then, so they stay there for
/// every step of the job; each step writes the latents into the persistent `sample` tensor in place
/// and runs the binding, so no per-step allocation happens and only the latents, the timestep and the
/// prediction cross between host and device.
pub(super) struct OrtDenoiser<'e> {
    session: &'e mut Session,
    binding: IoBinding,
    sample: Tensor<f32>,
    timestep: Tensor<f32>,
    rows: Vec<usize>,
    latent_len: usize,
    /// With `engine.cuda_graph`: the step's inputs and output at fixed device addresses (a captured
    /// CUDA graph replays on the buffers it was captured with).
    fixed: Option<FixedBuffers>,
}

/// Device tensors bound once for the life of a job, and the host copy of the prediction.
struct FixedBuffers {
    sample: Tensor<f32>,
    timestep: Tensor<f32>,
    noise_pred: Tensor<f32>,
    host_pred: Tensor<f32>,
}

impl FixedBuffers {
    fn new(
        session: &Session,
        device: i32,
        sample_shape: [usize; 4],
        rows: usize,
    ) -> Result<Self, EngineError> {
        use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
        let info = MemoryInfo::new(
            AllocationDevice::CUDA,
            device,
            AllocatorType::Device,
            MemoryType::Default,
        )
        .map_err(run_err(UNET))?;
        let cuda = Allocator::new(session, info).map_err(run_err(UNET))?;
        let [_, channels, h, w] = sample_shape;
        let pred = [rows, (channels - 1) / 2, h, w];
        Ok(Self {
            sample: Tensor::new(&cuda, sample_shape).map_err(run_err(UNET))?,
            timestep: Tensor::new(&cuda, [rows]).map_err(run_err(UNET))?,
            noise_pred: Tensor::new(&cuda, pred).map_err(run_err(UNET))?,
            host_pred: Tensor::new(&Allocator::default(), pred).map_err(run_err(UNET))?,
        })
    }
}

const UNET: &str = "unet";

impl<'e> OrtDenoiser<'e> {
    /// `fixed_device`: the CUDA device whose memory holds the step's inputs and output at fixed
    /// addresses (`engine.cuda_graph`); `None`: they are bound from host memory each step.
    pub(super) fn new(
        session: &'e mut Session,
        inputs: DenoiseInputs<'_>,
        fixed_device: Option<i32>,
    ) -> Result<Self, EngineError> {
        let rows = inputs.row_latent.len();
        let (_, c, h, w) = inputs.masked_latents.dim();
        let shape_err = |problem: String| EngineError::Shape {
            graph: UNET,
            problem,
        };
        if inputs.hidden_states.dim().0 != rows
            || inputs.id_tokens.dim().0 != rows
            || inputs.id_switch.len() != rows
            || inputs.mask.dim() != (rows, 1, h, w)
            || inputs.masked_latents.dim().0 != rows
        {
            return Err(shape_err(format!(
                "{rows} rows, but hidden {:?}, id tokens {:?}, switch {}, mask {:?}, masked {:?}",
                inputs.hidden_states.dim(),
                inputs.id_tokens.dim(),
                inputs.id_switch.len(),
                inputs.mask.dim(),
                inputs.masked_latents.dim()
            )));
        }
        let sample_channels = 2 * c + 1;
        // Channels c.. of every row (mask, masked latents) never change: write them once.
        let mut sample_data = vec![0f32; rows * sample_channels * h * w];
        let plane = h * w;
        for r in 0..rows {
            let row =
                &mut sample_data[r * sample_channels * plane..(r + 1) * sample_channels * plane];
            let mask = inputs.mask.slice(ndarray::s![r, .., .., ..]);
            for (dst, src) in row[c * plane..(c + 1) * plane].iter_mut().zip(mask.iter()) {
                *dst = *src;
            }
            let masked = inputs.masked_latents.slice(ndarray::s![r, .., .., ..]);
            for (dst, src) in row[(c + 1) * plane..].iter_mut().zip(masked.iter()) {
                *dst = *src;
            }
        }
        let sample = Tensor::from_array(([rows, sample_channels, h, w], sample_data))
            .map_err(run_err(UNET))?;
        let timestep = Tensor::from_array(([rows], vec![0f32; rows])).map_err(run_err(UNET))?;

        let mut binding = session.create_binding().map_err(run_err(UNET))?;
        let hidden = Tensor::from_array(inputs.hidden_states.as_standard_layout().into_owned())
            .map_err(run_err(UNET))?;
        let id_tokens = Tensor::from_array(inputs.id_tokens.as_standard_layout().into_owned())
            .map_err(run_err(UNET))?;
        let switch =
            Tensor::from_array(([rows], inputs.id_switch.to_vec())).map_err(run_err(UNET))?;
        let adapter = Tensor::from_array(([inputs.adapter.len()], inputs.adapter.to_vec()))
            .map_err(run_err(UNET))?;
        binding
            .bind_input("encoder_hidden_states", &hidden)
            .map_err(run_err(UNET))?;
        binding
            .bind_input("id_tokens", &id_tokens)
            .map_err(run_err(UNET))?;
        binding
            .bind_input("id_switch", &switch)
            .map_err(run_err(UNET))?;
        binding
            .bind_input("adapter", &adapter)
            .map_err(run_err(UNET))?;
        let fixed = match fixed_device {
            Some(device) => {
                let mut fixed =
                    FixedBuffers::new(session, device, [rows, sample_channels, h, w], rows)?;
                binding
                    .bind_input("sample", &fixed.sample)
                    .map_err(run_err(UNET))?;
                binding
                    .bind_input("timestep", &fixed.timestep)
                    .map_err(run_err(UNET))?;
                binding
                    .bind_output("noise_pred", &mut fixed.noise_pred)
                    .map_err(run_err(UNET))?;
                Some(fixed)
            }
            None => {
                // NOTE: ort only binds outputs it allocated itself (Tensor::new), not Rust-backed
                // arrays.
                let out = Tensor::<f32>::new(&ort::memory::Allocator::default(), [rows, c, h, w])
                    .map_err(run_err(UNET))?;
                binding
                    .bind_output("noise_pred", out)
                    .map_err(run_err(UNET))?;
                None
            }
        };
        Ok(Self {
            session,
            binding,
            sample,
            timestep,
            rows: inputs.row_latent.to_vec(),
            latent_len: c * plane,
            fixed,
        })
    }
}

impl Denoiser for OrtDenoiser<'_> {
    fn predict(
        &mut self,
        latents: &[f32],
        timestep: f32,
        noise_pred: &mut [f32],
    ) -> Result<(), EngineError> {
        let n = self.latent_len;
        let rows = self.rows.len();
        if noise_pred.len() != rows * n || self.rows.iter().any(|&i| (i + 1) * n > latents.len()) {
            return Err(EngineError::Shape {
                graph: UNET,
                problem: format!(
                    "latents {} / noise_pred {} values for {rows} rows of {n}",
                    latents.len(),
                    noise_pred.len()
                ),
            });
        }
        {
            let (shape, data) = self.sample.extract_tensor_mut();
            let row_len = (shape[1] * shape[2] * shape[3]) as usize;
            for (r, &i) in self.rows.iter().enumerate() {
                data[r * row_len..r * row_len + n].copy_from_slice(&latents[i * n..(i + 1) * n]);
            }
            let (_, t) = self.timestep.extract_tensor_mut();
            t.fill(timestep);
        }
        if let Some(fixed) = &mut self.fixed {
            // The bound device buffers are written in place, the prediction copied back.
            self.sample
                .copy_into(&mut fixed.sample)
                .map_err(run_err(UNET))?;
            self.timestep
                .copy_into(&mut fixed.timestep)
                .map_err(run_err(UNET))?;
            drop(
                self.session
                    .run_binding(&self.binding)
                    .map_err(run_err(UNET))?,
            );
            fixed
                .noise_pred
                .copy_into(&mut fixed.host_pred)
                .map_err(run_err(UNET))?;
            noise_pred.copy_from_slice(fixed.host_pred.extract_tensor().1);
            return Ok(());
        }
        // NOTE: the sample and timestep are re-bound each step: on the CPU provider this is a pointer
        // swap; on CUDA it is the one host->device copy a host-side scheduler needs.
        self.binding
            .bind_input("sample", &self.sample)
            .map_err(run_err(UNET))?;
        self.binding
            .bind_input("timestep", &self.timestep)
            .map_err(run_err(UNET))?;
        let outputs = self
            .session
            .run_binding(&self.binding)
            .map_err(run_err(UNET))?;
        let (_, pred) = outputs["noise_pred"]
            .try_extract_tensor::<f32>()
            .map_err(run_err(UNET))?;
        noise_pred.copy_from_slice(pred);
        Ok(())
    }
}
