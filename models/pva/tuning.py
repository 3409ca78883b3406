"""One whole PVA adapter-tuning step (forward, backward, AdamW) as a single module, and its export.

`TuningStep` follows CONTRACT.md's `adapter_step` section: it takes the flat adapter `params` (the
`visual` segment, every `to_visual_q/k/v` weight, then the `<new1>` token embedding), the AdamW moments
and one batch, and returns the updated params and moments and the loss before the update. The frozen
UNet and text encoder are ordinary submodules; only `params` is differentiated.

`export_adapter_step` turns that module into `adapter_step.onnx`: `make_fx` traces forward, autograd's
backward and the optimizer update into one plain aten graph (no autograd left in it), which the dynamo
exporter then writes as an ordinary inference graph with the frozen weights as constants.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .stack import PvaStack

#: AdamW's fixed hyper-parameters, baked into the graph and recorded in the manifest.
BETA1 = 0.9
BETA2 = 0.999
EPS = 1e-8

#: Names of the graph's inputs and outputs, in order (CONTRACT.md, adapter_step).
INPUT_NAMES = [
    "params",
    "adam_m",
    "adam_v",
    "step",
    "lr_visual",
    "lr_token",
    "weight_decay",
    "input_ids",
    "latents",
    "noise",
    "timesteps",
    "mask",
    "masked_latents",
    "id_tokens",
]
OUTPUT_NAMES = ["new_params", "new_adam_m", "new_adam_v", "loss"]


class TuningBatch(NamedTuple):
    """One tuning batch of `b` leave-one-out samples (shapes as in CONTRACT.md, adapter_step)."""

    input_ids: Tensor  # int64 [b, 77]
    latents: Tensor  # float32 [b, 4, h, w], scaled clean latents of the target
    noise: Tensor  # float32 [b, 4, h, w]
    timesteps: Tensor  # int64 [b]
    mask: Tensor  # float32 [b, 1, h, w], 1 = repaint
    masked_latents: Tensor  # float32 [b, 4, h, w], scaled
    id_tokens: Tensor  # float32 [b, 10, D]


def adamw_update(
    param: Tensor,
    grad: Tensor,
    m: Tensor,
    v: Tensor,
    step: Tensor,
    lr: Tensor,
    weight_decay: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """One AdamW update of one parameter segment, as `torch.optim.AdamW` computes it on the CPU.

    Returns `(new_param, new_m, new_v)`. The scalar factors are computed in float64 and rounded to
    float32 once, because the optimizer computes them from Python floats; the tensor arithmetic keeps
    the optimizer's operation order (`lerp` for the first moment, `addcmul`, `addcdiv`). The
    optimizer's CPU kernels fuse multiply-adds, which a graph cannot ask for: the two agree to a few
    float32 ulps, not bit for bit.
    """
    f32 = param.dtype
    step64 = step.to(torch.float64)
    lr64 = lr.to(torch.float64)
    decay = (1.0 - lr64 * weight_decay.to(torch.float64)).to(f32)
    bias_correction1 = 1.0 - torch.pow(torch.tensor(BETA1, dtype=torch.float64), step64)
    bias_correction2 = 1.0 - torch.pow(torch.tensor(BETA2, dtype=torch.float64), step64)
    neg_step_size = (-(lr64 / bias_correction1)).to(f32)
    bias_correction2_sqrt = torch.sqrt(bias_correction2).to(f32)

    param = param * decay
    # NOTE: `lerp_(grad, w)` with |w| < 0.5 is `m + w * (grad - m)`, not `b1 * m + (1 - b1) * grad`.
    new_m = m + (1.0 - BETA1) * (grad - m)
    new_v = v * BETA2 + (1.0 - BETA2) * grad * grad
    denom = torch.sqrt(new_v) / bias_correction2_sqrt + EPS
    new_param = param + neg_step_size * new_m / denom
    return new_param, new_m, new_v


def alphas_cumprod(scheduler_config: dict[str, Any]) -> Tensor:
    """The training noise schedule's cumulative alphas [num_train_timesteps] (diffusers' own)."""
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")
    scheduler = DDPMScheduler(**{k: scheduler_config[k] for k in keys})
    return scheduler.alphas_cumprod.to(torch.float32)


class TuningStep(nn.Module):
    """One PVA tuning step: noise-prediction MSE on the batch, its gradient w.r.t. `params`, AdamW.

    `unet` has the signature of `unet.onnx` (`sample, timestep, encoder_hidden_states, id_tokens,
    id_switch, adapter -> noise_pred`) and `text_encoder` that of `text_encoder.onnx`
    (`input_ids, new1_embedding -> hidden_states`). Their weights are frozen here.
    """

    def __init__(
        self,
        unet: nn.Module,
        text_encoder: nn.Module,
        alphas_cumprod: Tensor,
        visual_length: int,
        token_length: int,
        prediction_type: str = "epsilon",
    ) -> None:
        super().__init__()
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"tuning supports epsilon and v_prediction models, not {prediction_type!r}")
        self.prediction_type = prediction_type
        self.unet = unet
        self.text_encoder = text_encoder
        for module in (self.unet, self.text_encoder):
            module.requires_grad_(False)
            module.eval()
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().to(torch.float32).clone())
        self.visual_length = visual_length
        self.token_length = token_length

    @classmethod
    def from_stack(cls, stack: PvaStack) -> TuningStep:
        """The tuning step of a built stack: its PVA UNet, its text encoder, its noise schedule."""
        return cls(
            stack.unet_graph,
            stack.text_encoder,
            alphas_cumprod(stack.scheduler_config),
            stack.visual_length,
            stack.token_length,
            stack.scheduler_config["prediction_type"],
        )

    def loss(self, params: Tensor, batch: TuningBatch) -> Tensor:
        """The mean squared error between the UNet's output and its target: `batch.noise` for an
        epsilon model, the velocity `sqrt(acp) * noise - sqrt(1 - acp) * latents` for v-prediction."""
        visual, token = torch.split(params, [self.visual_length, self.token_length])
        hidden_states = self.text_encoder(batch.input_ids, token)
        acp = self.alphas_cumprod[batch.timesteps].reshape(-1, 1, 1, 1)
        noisy = acp.sqrt() * batch.latents + (1.0 - acp).sqrt() * batch.noise
        sample = torch.cat([noisy, batch.mask, batch.masked_latents], dim=1)
        id_switch = torch.ones(sample.shape[0], dtype=sample.dtype, device=sample.device)
        noise_pred = self.unet(
            sample,
            batch.timesteps.to(sample.dtype),
            hidden_states,
            batch.id_tokens,
            id_switch,
            visual,
        )
        if self.prediction_type == "v_prediction":
            target = acp.sqrt() * batch.noise - (1.0 - acp).sqrt() * batch.latents
        else:
            target = batch.noise
        return F.mse_loss(noise_pred, target)

    def forward(
        self,
        params: Tensor,
        adam_m: Tensor,
        adam_v: Tensor,
        step: Tensor,
        lr_visual: Tensor,
        lr_token: Tensor,
        weight_decay: Tensor,
        input_ids: Tensor,
        latents: Tensor,
        noise: Tensor,
        timesteps: Tensor,
        mask: Tensor,
        masked_latents: Tensor,
        id_tokens: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Returns `(new_params, new_adam_m, new_adam_v, loss)`; see CONTRACT.md, adapter_step."""
        batch = TuningBatch(input_ids, latents, noise, timesteps, mask, masked_latents, id_tokens)
        with torch.enable_grad():
            trainable = params.detach().requires_grad_(True)
            loss = self.loss(trainable, batch)
            (grad,) = torch.autograd.grad(loss, [trainable])
        sizes = [self.visual_length, self.token_length]
        new = [
            adamw_update(p, g, m, v, step, lr, weight_decay)
            for p, g, m, v, lr in zip(
                torch.split(params, sizes),
                torch.split(grad, sizes),
                torch.split(adam_m, sizes),
                torch.split(adam_v, sizes),
                (lr_visual, lr_token),
            )
        ]
        new_params, new_m, new_v = (torch.cat(parts) for parts in zip(*new))
        return new_params, new_m, new_v, loss.detach()


def _convolution_backward(
    grad_output: Tensor,
    input: Tensor,
    weight: Tensor,
    bias_sizes: Any,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    transposed: bool,
    output_padding: list[int],
    groups: int,
    output_mask: list[bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """`aten.convolution_backward` for the input gradient only, as a transposed convolution.

    ONNX has no convolution-backward operator. In the tuning step every convolution weight is frozen,
    so autograd only asks for the gradient of the input, which is the transposed convolution of the
    output gradient with the same weight.
    """
    if transposed:
        raise NotImplementedError("the tuning graph has no transposed convolutions to differentiate")
    if output_mask[1] or output_mask[2]:
        raise NotImplementedError("convolution weights and biases are frozen in the tuning step")
    grad_input = None
    if output_mask[0]:
        spatial = range(2, input.dim())
        # NOTE: with stride > 1 several input sizes give the same output size; output_padding picks
        # the one the forward convolution saw.
        restore = [
            input.shape[d]
            - ((grad_output.shape[d] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (weight.shape[d] - 1) + 1)
            for i, d in enumerate(spatial)
        ]
        grad_input = torch.ops.aten.convolution.default(
            grad_output, weight, None, stride, padding, dilation, True, restore, groups
        )
    return grad_input, None, None


def decompositions() -> dict[Any, Callable[..., Any]]:
    """The decomposition table for tracing the tuning step: core aten plus `convolution_backward`."""
    table = dict(torch._decomp.core_aten_decompositions())
    table[torch.ops.aten.convolution_backward.default] = _convolution_backward
    return table


def example_inputs(
    step_module: TuningStep,
    batch_size: int,
    latent_size: int,
    latent_channels: int = 4,
    max_length: int = 77,
    num_id_tokens: int = 10,
) -> tuple[Tensor, ...]:
    """Well-formed inputs of the graph (random values, valid ids and timesteps), in `INPUT_NAMES` order."""
    generator = torch.Generator().manual_seed(0)
    n = step_module.visual_length + step_module.token_length
    hidden = step_module.token_length
    num_timesteps = step_module.alphas_cumprod.shape[0]
    latent = (batch_size, latent_channels, latent_size, latent_size)
    return (
        torch.randn(n, generator=generator) * 0.02,
        torch.zeros(n),
        torch.zeros(n),
        torch.tensor(1.0),
        torch.tensor(1e-5),
        torch.tensor(1e-3),
        torch.tensor(0.01),
        torch.randint(0, 49408, (batch_size, max_length), generator=generator),
        torch.randn(latent, generator=generator),
        torch.randn(latent, generator=generator),
        torch.randint(0, num_timesteps, (batch_size,), generator=generator),
        (torch.rand((batch_size, 1, latent_size, latent_size), generator=generator) > 0.5).float(),
        torch.randn(latent, generator=generator),
        torch.randn((batch_size, num_id_tokens, hidden), generator=generator),
    )


def trace_tuning_step(step_module: TuningStep, inputs: tuple[Tensor, ...]) -> torch.fx.GraphModule:
    """Trace forward, backward and update into one aten graph with `make_fx` (symbolic shapes).

    The module's weights are real tensors and become constants of the graph; only `inputs` are traced
    as (fake, symbolic) inputs, so nothing is computed while tracing.
    """
    from torch.fx.experimental.proxy_tensor import make_fx

    # NOTE: the graph's batch is fixed (`tuning.batch_size`, CONTRACT.md) and the export specialises
    # every symbolic size to the example's, so a symbol that tracing ties to an equal dimension (the
    # batch of 2 and the text encoder's 2 heads in the tiny model) cannot change the exported graph.

    def step_fn(*args: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return step_module(*args)

    with torch.no_grad():
        return make_fx(
            step_fn,
            decomposition_table=decompositions(),
            tracing_mode="symbolic",
            _allow_non_fake_inputs=True,
        )(*inputs)


def export_tuning_step(
    step_module: TuningStep, inputs: tuple[Tensor, ...], path: Path, external_data: bool = False
) -> None:
    """Trace `step_module` and write it as an opset-18 ONNX graph with the contract's names."""
    traced = trace_tuning_step(step_module, inputs).eval()
    # NOTE: `optimize=False`: onnxscript's rewriter (0.7.2) treats `x + c` with |c| <= 1e-8 as
    # `x + 0` and removes it (its constant patterns compare with abs_tol=1e-8), which deletes AdamW's
    # `+ eps` and turns a zero gradient into 0/0. ONNX Runtime folds and fuses the graph itself.
    program = torch.onnx.export(
        traced,
        inputs,
        dynamo=True,
        opset_version=18,
        input_names=INPUT_NAMES,
        output_names=OUTPUT_NAMES,
        optimize=False,
    )
    # NOTE: each node carries its fx provenance (stack trace, fx node text) as metadata: a third
    # of the file. The graph does not need it.
    for node in program.model.graph:
        node.metadata_props.clear()
    program.save(str(path), external_data=external_data)


#: Above this many bytes of frozen weights the graph keeps them in an external data file
#: (protobuf caps a file at 2 GiB; the full-size UNet alone is ~3.4 GB in float32).
EXTERNAL_DATA_THRESHOLD = 1 << 30


def stack_example_inputs(stack: PvaStack, step_module: TuningStep) -> tuple[Tensor, ...]:
    """The graph's example inputs at `stack`'s sizes (batch `tuning.batch_size`, its latent size),
    starting from the stack's initial adapter."""
    config = stack.config
    inputs = example_inputs(
        step_module,
        batch_size=config.tuning["batch_size"],
        latent_size=config.latent_size,
        latent_channels=config.latent_channels,
        max_length=stack.tokenizer["max_length"],
        num_id_tokens=config.id_former.num_queries,
    )
    return (stack.initial_params.clone(),) + inputs[1:]


def export_adapter_step(stack: PvaStack, path: Path, external_data: bool | None = None) -> None:
    """Write `adapter_step.onnx` of `stack` (CONTRACT.md, adapter_step) to `path`.

    The batch size is the stack's `tuning.batch_size`; the spatial size its latent size. With
    `external_data=None` the weights go to an external file only when they would not fit in one.
    """
    step_module = TuningStep.from_stack(stack).eval()
    inputs = stack_example_inputs(stack, step_module)
    if external_data is None:
        weights = sum(t.numel() * t.element_size() for t in step_module.state_dict().values())
        external_data = weights > EXTERNAL_DATA_THRESHOLD
    export_tuning_step(step_module, inputs, Path(path), external_data=external_data)
