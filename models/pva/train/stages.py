"""The training stages: their hyper-parameters, what each one trains and how one step computes its loss.

Each `plan_<stage>(trainer, hp)` sets `requires_grad` on what the stage trains and returns a
`StagePlan` (optimiser groups, the step's loss, what to save); `pva.train.trainer.Trainer.run_stage`
runs it. The stages themselves are described in `pva.train.cli` (`python -m pva.train --help`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from pva.attention import VISUAL_PROJECTIONS
from pva.tokenizer import word_id
from pva.train.data import face_crops, to_unit

if TYPE_CHECKING:
    from pva.train.trainer import Trainer

STAGES = ("vae", "face", "base", "pva1", "pva2", "decoder")
#: What `run` trains without `--stages` (`decoder` is a later refinement, run when asked for).
DEFAULT_STAGES = ("vae", "face", "base", "pva1", "pva2")
#: Stages that only the small size trains (full size loads SD-2 and ArcFace weights instead).
SMALL_ONLY = ("vae", "face", "base", "decoder")


@dataclass(frozen=True)
class Hyper:
    """One stage's hyper-parameters."""

    steps: int
    batch: int
    lr: float
    weight_decay: float = 0.01
    ema: float = 0.0  # EMA decay of the trained weights (0 = none)
    lr_token: float = 0.0  # `<new1>` learning rate (PVA stages)
    lr_face: float = 0.0  # face embedder learning rate (pva2)
    warmup: int = 100
    mask_weight: float = 3.0  # extra loss weight inside the mask (diffusion stages)
    caption_dropout: float = 0.1
    max_references: int = 5
    detail_weight: float = 0.0  # extra reconstruction loss weight on fine detail (autoencoder stages)



#: Defaults per size. `demo` at these numbers is hours on a 2-core CPU (base ~0.2 steps/s at batch 64);
#: on a GPU, `--budget-minutes` fits the step counts to the time instead (scripts/gpu/train_demo.sh); `sd2`
#: follows the paper's recipe as we read it (AdamW at 1e-5 on the PVA parts, the token at 1e-3, a
#: smaller rate for the face embedder in stage 2) — check the numbers against the paper's Sec. 4 and
#: your data before a long run.
DEFAULTS: dict[str, dict[str, Hyper]] = {
    "demo": {
        "vae": Hyper(steps=2500, batch=32, lr=2e-3, warmup=50, detail_weight=10.0),
        "face": Hyper(steps=1200, batch=96, lr=2e-3, warmup=50),
        "base": Hyper(steps=5000, batch=64, lr=1e-3, ema=0.995),
        "pva1": Hyper(steps=3000, batch=64, lr=5e-4, lr_token=1e-3, ema=0.995),
        "pva2": Hyper(steps=500, batch=32, lr=1e-4, lr_token=1e-4, lr_face=1e-4, ema=0.99),
        "decoder": Hyper(steps=3000, batch=64, lr=1e-3, ema=0.995, warmup=50),
    },
    "tiny": {},
    "sd2": {
        "pva1": Hyper(steps=50000, batch=32, lr=1e-5, lr_token=1e-3, ema=0.9999, warmup=500, mask_weight=0.0),
        "pva2": Hyper(steps=10000, batch=32, lr=1e-5, lr_token=1e-4, lr_face=1e-6, ema=0.9999, warmup=500,
                      mask_weight=0.0),
    },
}
DEFAULTS["tiny"] = DEFAULTS["demo"]


#: How a `--budget-minutes` run divides its time between the stages (renormalised over those it runs).
BUDGET_SHARE = {"vae": 0.12, "face": 0.08, "base": 0.42, "pva1": 0.30, "pva2": 0.08, "decoder": 0.12}
#: Steps timed at the start of a budgeted stage before its step count is fixed.
BUDGET_PROBE = (10, 30)


def hyper_for(size: str, stage: str, overrides: dict[str, dict[str, float]]) -> Hyper:
    """A stage's defaults with `--set stage.key=value` overrides applied."""
    base = DEFAULTS[size].get(stage) or DEFAULTS["demo"][stage]
    return replace(base, **overrides.get(stage, {}))


def parse_overrides(items: list[str]) -> dict[str, dict[str, float]]:
    """`stage.key=value` strings -> {stage: {key: value}} (ints stay ints)."""
    out: dict[str, dict[str, float]] = {}
    for item in items:
        key, _, value = item.partition("=")
        stage, _, field_name = key.partition(".")
        if stage not in STAGES or field_name not in Hyper.__dataclass_fields__ or not value:
            raise SystemExit(f"bad --set {item!r}: expected STAGE.FIELD=VALUE, fields {list(Hyper.__dataclass_fields__)}")
        number = float(value)
        out.setdefault(stage, {})[field_name] = int(number) if field_name in ("steps", "batch", "warmup", "max_references") else number
    return out


@dataclass
class StagePlan:
    """What one stage trains and how one step computes its loss."""

    groups: list[dict[str, Any]]  # optimiser parameter groups
    step: Callable[[torch.Generator], tuple[torch.Tensor, dict[str, float]]]
    train_modules: list[nn.Module] = field(default_factory=list)  # put in train mode
    state_modules: dict[str, nn.Module] = field(default_factory=dict)  # saved as the stage's result
    ema: bool = True
    finish: Callable[[], None] | None = None  # after the EMA swap (calibration, copies)


def plan_vae(trainer: Trainer, hp: Hyper) -> StagePlan:
    vae = trainer.stack.vae
    vae.requires_grad_(True)
    channels = trainer.config.latent_channels

    def step(g: torch.Generator):
        x = trainer.pixels(trainer.sample_index(hp.batch, g))
        with trainer.autocast():
            mean, logvar, z = sample_posterior(vae.quant_conv(vae.encoder(x)), channels, g, trainer.device)
            recon = vae.decode(z, return_dict=False)[0]
        rec, extra = reconstruction_loss(recon, x, hp.detail_weight)
        kl = 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1 - logvar.float()).mean()
        return rec + 1e-6 * kl, extra

    def finish() -> None:
        vae.eval()
        trainer._latents = None
        calibrate_latent_scale(vae, trainer.pixels(torch.arange(min(len(trainer.data), 1024))), trainer.scale)

    return StagePlan([{"params": list(vae.parameters()), "lr": hp.lr}], step, [vae], {"vae": vae},
                     ema=False, finish=finish)


def plan_decoder(trainer: Trainer, hp: Hyper) -> StagePlan:
    vae = trainer.stack.vae
    params = [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()]
    for p in params:
        p.requires_grad_(True)
    channels = trainer.config.latent_channels
    moments = trainer.moments()

    def step(g: torch.Generator):
        index = trainer.sample_index(hp.batch, g)
        _, _, z = sample_posterior(moments[index.to(moments.device)], channels, g, trainer.device)
        with trainer.autocast():
            recon = vae.decode(z, return_dict=False)[0]
        return reconstruction_loss(recon, trainer.pixels(index), hp.detail_weight)

    def finish() -> None:
        vae.eval()

    return StagePlan([{"params": params, "lr": hp.lr}], step, [vae.decoder], {"vae": vae}, finish=finish)


def plan_face(trainer: Trainer, hp: Hyper) -> StagePlan:
    face = trainer.stack.face_embedder
    face.requires_grad_(True)
    dim = trainer.config.face.embedding_dim
    head = nn.Parameter(torch.randn(trainer.data.persons, dim, generator=torch.Generator().manual_seed(7))
                        .to(trainer.device))
    crop = trainer.config.face.crop_size
    scale, margin = 16.0, 0.25

    def step(g: torch.Generator):
        index = trainer.sample_index(hp.batch, g)
        labels = trainer.data.person[index].to(trainer.device)
        with trainer.autocast():
            emb = face(face_crops(trainer.pixels(index), crop))
        cos = F.normalize(emb.float(), dim=1) @ F.normalize(head, dim=1).T
        logits = scale * (cos - margin * F.one_hot(labels, trainer.data.persons))
        loss = F.cross_entropy(logits, labels)
        accuracy = float((cos.argmax(1) == labels).float().mean())
        return loss, {"acc": accuracy}

    def finish() -> None:
        face.eval()
        trainer._embeddings = None

    return StagePlan([{"params": [*face.parameters(), head], "lr": hp.lr}], step, [face],
                     {"face_embedder": face}, ema=False, finish=finish)


def plan_base(trainer: Trainer, hp: Hyper) -> StagePlan:
    s = trainer.stack
    base = [p for n, p in s.unet.named_parameters() if not any(v in n for v in VISUAL_PROJECTIONS)]
    for p in base:
        p.requires_grad_(True)
    s.text_encoder.requires_grad_(True)
    d, q = trainer.config.hidden_size, trainer.config.id_former.num_queries

    def step(g: torch.Generator):
        index = trainer.sample_index(hp.batch, g)
        # Dropped captions become the bare negative prompt "" that guidance's unconditional row uses.
        ids = trainer.prompts(index, "a person {prompt}", hp.caption_dropout, g, dropped="")
        sample, t, target, mask_lat = trainer.diffusion_inputs(index, g)
        b = index.shape[0]
        with trainer.autocast():
            hidden = trainer.text_fn(ids, trainer.new1)
            pred = trainer.unet_fn(sample, t.float(), hidden, torch.zeros(b, q, d, device=trainer.device),
                                   torch.zeros(b, device=trainer.device), None)
        return trainer.diffusion_loss(pred, target, mask_lat, hp), {}

    def finish() -> None:
        # The identity branch starts as a copy of the trained text branch (as `install_pva` does),
        # and `<new1>` as the trained token of "person".
        copy_visual_from_text(s.unet)
        with torch.no_grad():
            trainer.new1.copy_(s.text_encoder.token_table[word_id(trainer.config.init_token)])

    return StagePlan([{"params": base + list(s.text_encoder.parameters()), "lr": hp.lr}], step,
                     [s.unet, s.text_encoder], {"unet": s.unet, "text_encoder": s.text_encoder.clip},
                     finish=finish)


def plan_pva(trainer: Trainer, hp: Hyper, with_face: bool) -> StagePlan:
    s = trainer.stack
    visual = [p for n, p in s.unet.named_parameters() if any(v in n for v in VISUAL_PROJECTIONS)]
    for p in visual:
        p.requires_grad_(True)
    s.id_former.requires_grad_(True)
    trainer.new1.requires_grad_(True)
    groups = [
        {"params": visual + list(s.id_former.parameters()), "lr": hp.lr},
        {"params": [trainer.new1], "lr": hp.lr_token or hp.lr, "weight_decay": 0.0},
    ]
    train, state = [s.id_former], {"unet": s.unet, "id_former": s.id_former}
    crop = trainer.config.face.crop_size
    if with_face:
        s.face_embedder.requires_grad_(True)
        groups.append({"params": list(s.face_embedder.parameters()), "lr": hp.lr_face or hp.lr})
        state["face_embedder"] = s.face_embedder
    template = trainer.config.prompt_template

    def step(g: torch.Generator):
        index = trainer.sample_index(hp.batch, g)
        count = int(torch.randint(1, hp.max_references + 1, (), generator=g))
        refs = trainer.references(index, count, g)
        ids = trainer.prompts(index, template, hp.caption_dropout, g)
        sample, t, target, mask_lat = trainer.diffusion_inputs(index, g)
        b = index.shape[0]
        with trainer.autocast():
            if with_face:
                # BatchNorm statistics stay those of the face stage (eval mode); the weights move.
                emb = s.face_embedder(face_crops(trainer.pixels(refs.flatten()), crop)).reshape(b, count, -1)
            else:
                emb = trainer.embeddings()[refs.flatten().to(trainer.embeddings().device)].reshape(b, count, -1)
            tokens = s.id_former(emb.float())
            hidden = trainer.text_fn(ids, trainer.new1)
            pred = trainer.unet_fn(sample, t.float(), hidden, tokens, torch.ones(b, device=trainer.device), None)
        return trainer.diffusion_loss(pred, target, mask_lat, hp), {"refs": float(count)}

    def finish() -> None:
        trainer._embeddings = None

    return StagePlan(groups, step, train, {**state, "new1": _TensorModule(trainer.new1)}, finish=finish)

#: Each stage's plan, by name.
PLANS: dict[str, Callable[[Trainer, Hyper], StagePlan]] = {
    "vae": plan_vae, "face": plan_face, "base": plan_base,
    "pva1": lambda trainer, hp: plan_pva(trainer, hp, False),
    "pva2": lambda trainer, hp: plan_pva(trainer, hp, True),
    "decoder": plan_decoder,
}


class _TensorModule(nn.Module):
    """A bare tensor (the `<new1>` embedding) seen as a module, for saving and loading the stage result."""

    def __init__(self, tensor: torch.Tensor) -> None:
        super().__init__()
        self.tensor = tensor

    def state_dict(self, *args, **kwargs):  # type: ignore[override]
        return {"value": self.tensor}

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):  # type: ignore[override]
        with torch.no_grad():
            self.tensor.copy_(state["value"])


def copy_visual_from_text(unet: nn.Module) -> None:
    """Set every `to_visual_q/k/v` to its layer's `to_q/k/v` (the identity branch's initial state)."""
    with torch.no_grad():
        for module in unet.modules():
            if hasattr(module, "to_visual_q"):
                module.to_visual_q.weight.copy_(module.to_q.weight)
                module.to_visual_k.weight.copy_(module.to_k.weight)
                module.to_visual_v.weight.copy_(module.to_v.weight)


@torch.no_grad()
def posterior_moments(vae: nn.Module, images: torch.Tensor, channels: int | None = None, chunk: int = 256,
                      ) -> torch.Tensor:
    """The VAE encoder's posterior moments [N, 2C, h, w] (unscaled mean ; logvar) of uint8 images
    [N, 3, H, W], in chunks (each converted with `to_unit` only when encoded); only the first `channels`
    of each chunk (the means, [N, C, h, w]) when given."""
    vae.eval()
    return torch.cat([vae.quant_conv(vae.encoder(to_unit(images[i : i + chunk])))[:, :channels]
                      for i in range(0, images.shape[0], chunk)])


def sample_posterior(moments: torch.Tensor, channels: int, g: torch.Generator, device: torch.device,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, clamped logvar, one sample z) of VAE moments [B, 2C, h, w] (mean ; logvar)."""
    mean, logvar = moments[:, :channels], moments[:, channels:].clamp(-30, 20)
    eps = torch.randn(mean.shape, generator=g).to(device)
    return mean, logvar, mean + (0.5 * logvar).exp() * eps


def reconstruction_loss(recon: torch.Tensor, x: torch.Tensor, detail: float = 0.0,
                        ) -> tuple[torch.Tensor, dict[str, float]]:
    """The autoencoder stages' loss (MSE + 0.1 L1, per pixel weighted by `detail_weights` when `detail`
    > 0) and the plain MSE for the progress line."""
    recon = recon.float()
    mse = {"mse": float(F.mse_loss(recon.detach(), x))}
    if detail <= 0:
        return F.mse_loss(recon, x) + 0.1 * F.l1_loss(recon, x), mse
    weight = detail_weights(x, detail)
    err = (recon - x).pow(2) + 0.1 * (recon - x).abs()
    return (weight * err).mean() / weight.mean(), mse


def detail_weights(x: torch.Tensor, strength: float) -> torch.Tensor:
    """[B, 1, H, W] loss weights 1 + strength * d / mean(d), d = the image's local contrast (absolute
    difference to its 3x3 mean, summed over channels).

    Plain MSE spends the small autoencoder on the large flat areas: the demo VAE trained on it dropped
    glasses (thin rings) and most of the mouth's shape from its 8x8 latents, so no caption could bring
    them back. Weighting edges keeps them in the latents (models/train/README.md).
    """
    d = (x - F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)).abs().sum(1, keepdim=True)
    return 1.0 + strength * d / d.mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8)


@torch.no_grad()
def calibrate_latent_scale(vae: nn.Module, pixels: torch.Tensor, scaling_factor: float) -> float:
    """Rescale the VAE's latent space so that `mean * scaling_factor` has unit standard deviation.

    The posterior mean's channels of `quant_conv` are multiplied by k (the log-variance shifted by
    2 ln k) and `post_quant_conv`'s input divided by k: decode(encode(x)) is unchanged, only the
    latent scale moves to what the manifest's `scaling_factor` assumes. Returns k.
    """
    channels = vae.config.latent_channels
    moments = vae.quant_conv(vae.encoder(pixels))
    std = float(moments[:, :channels].std())
    k = 1.0 / (scaling_factor * std)
    vae.quant_conv.weight[:channels] *= k
    vae.quant_conv.bias[:channels] *= k
    vae.quant_conv.bias[channels:] += 2.0 * math.log(k)
    vae.post_quant_conv.weight /= k
    return k
