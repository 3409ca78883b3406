"""Train PVA on a dataset directory of identities, with checkpoints that resume, and export it.

    # the synthetic faces the demo model learns from (one folder per person)
    .venv/bin/python models/train/train.py data --out /tmp/faces --persons 2000 --images 8
    # every stage of the small size from scratch, into a work directory (rerun = resume)
    .venv/bin/python models/train/train.py run --size demo --data /tmp/faces --work /tmp/pva-train
    # the trained weights -> a model directory the worker loads (the unchanged graph contract)
    .venv/bin/python models/train/train.py export --size demo --work /tmp/pva-train --out models/demo

Stages, in order (``--stages`` picks some; each one freezes everything it does not list):

- ``vae``   the autoencoder (small size only; full size uses SD-2's VAE). Afterwards the latent scale is
  calibrated so that ``latent * scaling_factor`` has unit variance, without changing what it decodes.
- ``face``  the face embedder, ArcFace-style (additive-margin softmax over identities). Small size only:
  the paper uses a pretrained ArcFace, which a full-size run loads with ``--face`` (or swaps).
- ``base``  the inpainting UNet and the text encoder (small size only; full size uses SD-2 inpainting),
  identity branch off (``id_switch`` 0).
- ``pva1``  the paper's stage 1: identity former, ``to_visual_q/k/v`` and the ``<new1>`` token; base UNet,
  VAE, text encoder and face embedder frozen.
- ``pva2``  the paper's stage 2: as stage 1, plus the face embedder.
- ``decoder`` (only when asked for) the VAE decoder alone, for the frozen encoder: the latent space the
  UNet was trained in stays as it is, so a better decoder sharpens every output without retraining the
  stages before it (small size only; Stable Diffusion's ft-MSE decoder was made the same way).

``import`` recovers ``WORK/weights.safetensors`` from an exported model directory (``recover.py``), so a
shipped model can be trained further without the run that made it.

Every stage optimises the model's own parameterisation (epsilon or v, from the size's scheduler
config) with the loss weighted towards the masked region, keeps an EMA of what it trains where
configured, checkpoints to ``WORK/<stage>.pt`` every few hundred steps and at the end, and after
finishing writes all current weights to ``WORK/weights.safetensors``. Rerunning resumes the stage
bit-for-bit where it stopped (all randomness comes from one checkpointed generator); asking for more
steps than a finished stage had extends it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[0] / "export"))
sys.path.insert(0, str(HERE.parents[1]))

from pva import PvaStack, build_stack  # noqa: E402
from pva.attention import VISUAL_PROJECTIONS  # noqa: E402
from pva.config import get_config  # noqa: E402
from pva.tokenizer import encode, render_prompt, word_id  # noqa: E402
from pva.tuning import alphas_cumprod  # noqa: E402
from pva.weights import load_trained, load_weights, save_trained  # noqa: E402

from models.train.data import FaceDataset, face_crops, latent_mask, random_masks, to_unit  # noqa: E402

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


class Progress:
    """A one-line-per-interval progress display plus a JSON-lines log in the work directory."""

    def __init__(self, stage: str, total: int, start: int, log_path: Path, every: int) -> None:
        self.stage, self.total, self.start, self.every = stage, total, start, every
        self.log = log_path.open("a")
        self.t0 = time.perf_counter()
        self.losses: list[float] = []

    def update(self, step: int, loss: float, extra: dict[str, float] | None = None) -> None:
        self.losses.append(loss)
        if step % self.every and step != self.total:
            return
        elapsed = time.perf_counter() - self.t0
        rate = (step - self.start) / max(elapsed, 1e-9)
        eta = (self.total - step) / max(rate, 1e-9)
        mean = sum(self.losses) / len(self.losses)
        extras = "".join(f" {k}={v:.3f}" for k, v in (extra or {}).items())
        print(f"[{self.stage}] {step}/{self.total} loss={mean:.4f}{extras} {rate:.2f} it/s "
              f"eta {int(eta // 60)}m{int(eta % 60):02d}s", flush=True)
        self.log.write(json.dumps({"stage": self.stage, "step": step, "loss": mean, "it_per_s": rate,
                                   **(extra or {}), "time": time.time()}) + "\n")
        self.log.flush()
        self.losses.clear()

    def close(self) -> None:
        self.log.close()


@dataclass
class StagePlan:
    """What one stage trains and how one step computes its loss."""

    groups: list[dict[str, Any]]  # optimiser parameter groups
    step: Callable[[torch.Generator], tuple[torch.Tensor, dict[str, float]]]
    train_modules: list[nn.Module] = field(default_factory=list)  # put in train mode
    state_modules: dict[str, nn.Module] = field(default_factory=dict)  # saved as the stage's result
    ema: bool = True
    finish: Callable[[], None] | None = None  # after the EMA swap (calibration, copies)


class Trainer:
    """The stack being trained, its data, and the stages."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.size = args.size
        self.config = get_config(args.size)
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(args.device)
        self.amp = bool(args.amp) and self.device.type == "cuda"
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.set_float32_matmul_precision("high")
        weights_file = self.work / "weights.safetensors"
        if weights_file.is_file():
            weights = load_trained(weights_file)
        elif args.size == "sd2":
            if args.base is None:
                raise SystemExit("sd2 needs --base (a local stable-diffusion-2-inpainting directory)")
            weights = load_weights(self.config, Path(args.base), None, Path(args.face) if args.face else None)
        else:
            weights = None
        self.stack: PvaStack = build_stack(args.size, seed=args.seed, weights=weights)
        for module in self.stack.modules().values():
            module.to(self.device)
        self.new1 = self.stack.split_params(self.stack.initial_params)[1].clone().to(self.device)
        # What the diffusion stages call; `--compile` wraps them with torch.compile (same parameters).
        self.unet_fn: Callable[..., torch.Tensor] = self.stack.unet_graph
        self.text_fn: Callable[..., torch.Tensor] = self.stack.text_encoder
        if args.compile != "off":
            mode = None if args.compile == "default" else args.compile
            self.unet_fn = torch.compile(self.stack.unet_graph, mode=mode)
            self.text_fn = torch.compile(self.stack.text_encoder, mode=mode)
        self.data = FaceDataset.load(Path(args.data), self.config.resolution, args.max_persons)
        # The images live where the model does (about 200 MB for 16k images at 64 px): no per-step copy.
        self.data.images = self.data.images.to(self.device)
        self.group_table, self.group_sizes, self.slot = person_table(self.data.person)
        self._prompt_tables: dict[str, torch.Tensor] = {}
        self.acp = alphas_cumprod(self.config.scheduler).to(self.device)
        self.prediction = self.config.scheduler["prediction_type"]
        self.scale = self.config.scaling_factor
        self._ids: dict[str, torch.Tensor] = {}
        self._latents: torch.Tensor | None = None
        self._embeddings: torch.Tensor | None = None
        print(f"data: {len(self.data)} images of {self.data.persons} persons at {self.config.resolution}px; "
              f"device {self.device}{' (bf16 autocast)' if self.amp else ''}", flush=True)

    # ---------------------------------------------------------------- shared pieces
    def weights(self) -> dict[str, Any]:
        """All current weights in `build_stack` form."""
        return self.stack.weights(self.new1)

    def save_weights(self) -> None:
        path = self.work / "weights.safetensors"
        tmp = path.with_suffix(".tmp")
        save_trained(tmp, self.weights())
        tmp.replace(path)

    def ids(self, text: str) -> torch.Tensor:
        """Token ids [77] of a full text (cached)."""
        if text not in self._ids:
            self._ids[text] = torch.tensor(encode(text, self.config.tokenizer), dtype=torch.int64)
        return self._ids[text]

    def prompts(self, index: torch.Tensor, template: str, dropout: float, g: torch.Generator,
                dropped: str | None = None) -> torch.Tensor:
        """Token ids [B, 77]: the template around each image's caption; a `dropout` share of them get
        `dropped` instead (default: the template without a caption)."""
        if template not in self._prompt_tables:  # every image's prompt, tokenised once
            self._prompt_tables[template] = torch.stack(
                [self.ids(render_prompt(template, c)) for c in self.data.captions])
        table = self._prompt_tables[template]
        empty = self.ids(render_prompt(template, "") if dropped is None else dropped)
        drop = (torch.rand(index.shape[0], generator=g) < dropout)[:, None]
        return torch.where(drop, empty[None], table[index]).to(self.device)

    def pixels(self, index: torch.Tensor) -> torch.Tensor:
        return to_unit(self.data.images[index]).to(self.device)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Scaled posterior means, as the `vae_encoder` graph and the pipeline produce them."""
        return self.stack.vae_encoder(pixels) * self.scale

    @torch.no_grad()
    def latents(self) -> torch.Tensor:
        """Scaled clean latents of every image (computed once per frozen VAE): the posterior means, as
        the `vae_encoder` graph and the pipeline produce them."""
        if self._latents is None:
            self._latents = self.moments()[:, : self.config.latent_channels] * self.scale
        return self._latents

    def moments(self) -> torch.Tensor:
        """The VAE encoder's posterior moments [N, 2C, h, w] of every image (unscaled mean ; logvar)."""
        return posterior_moments(self.stack.vae, self.data.images)

    @torch.no_grad()
    def embeddings(self) -> torch.Tensor:
        """Face embeddings of every image (computed once per frozen face embedder)."""
        if self._embeddings is None:
            self.stack.face_embedder.eval()
            crop = self.config.face.crop_size
            chunks = [self.stack.face_embedder(face_crops(self.pixels(torch.arange(i, min(i + 128, len(self.data)))), crop))
                      for i in range(0, len(self.data), 128)]
            self._embeddings = torch.cat(chunks)
        return self._embeddings

    def diffusion_inputs(self, index: torch.Tensor, g: torch.Generator):
        """Noisy latents, UNet conditioning channels, timesteps, target and loss weights of a batch."""
        b = index.shape[0]
        lat = self.config.latent_size
        x0 = self.latents()[index.to(self.latents().device)]
        masks = random_masks(b, self.config.resolution, g).to(self.device)
        masked = self.encode(self.pixels(index) * (1 - masks))
        mask_lat = latent_mask(masks, lat)
        t = torch.randint(0, self.acp.shape[0], (b,), generator=g).to(self.device)
        noise = torch.randn(x0.shape, generator=g).to(self.device)
        a = self.acp[t].reshape(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * x0 if self.prediction == "v_prediction" else noise
        sample = torch.cat([noisy, mask_lat, masked], dim=1)
        return sample, t, target, mask_lat

    def diffusion_loss(self, pred: torch.Tensor, target: torch.Tensor, mask_lat: torch.Tensor, hp: Hyper) -> torch.Tensor:
        weight = 1.0 + hp.mask_weight * mask_lat
        err = (pred.float() - target.float()).pow(2).mean(dim=1, keepdim=True)
        return (weight * err).sum() / weight.sum()

    def sample_index(self, b: int, g: torch.Generator) -> torch.Tensor:
        return torch.randint(0, len(self.data), (b,), generator=g)

    def references(self, index: torch.Tensor, count: int, g: torch.Generator) -> torch.Tensor:
        """[B, count] image indices of OTHER images of each sample's person, in random order without
        repeats while the person has enough, cycling through them when not."""
        person = self.data.person[index]
        table, sizes = self.group_table[person], self.group_sizes[person]  # [B, M], [B]
        keys = torch.rand(table.shape, generator=g)
        slots = torch.arange(table.shape[1])
        keys[(slots[None] >= sizes[:, None]) | (slots[None] == self.slot[index][:, None])] = 2.0
        order = keys.argsort(dim=1)  # the others first, shuffled
        cycle = torch.arange(count)[None] % (sizes[:, None] - 1)
        return table.gather(1, order.gather(1, cycle))

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    # ---------------------------------------------------------------- the stages
    def plan_vae(self, hp: Hyper) -> StagePlan:
        vae = self.stack.vae
        vae.requires_grad_(True)
        channels = self.config.latent_channels

        def step(g: torch.Generator):
            x = self.pixels(self.sample_index(hp.batch, g))
            with self.autocast():
                mean, logvar, z = sample_posterior(vae.quant_conv(vae.encoder(x)), channels, g, self.device)
                recon = vae.decode(z, return_dict=False)[0]
            rec, extra = reconstruction_loss(recon, x, hp.detail_weight)
            kl = 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1 - logvar.float()).mean()
            return rec + 1e-6 * kl, extra

        def finish() -> None:
            vae.eval()
            self._latents = None
            calibrate_latent_scale(vae, self.pixels(torch.arange(min(len(self.data), 1024))), self.scale)

        return StagePlan([{"params": list(vae.parameters()), "lr": hp.lr}], step, [vae], {"vae": vae},
                         ema=False, finish=finish)

    def plan_decoder(self, hp: Hyper) -> StagePlan:
        vae = self.stack.vae
        params = [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()]
        for p in params:
            p.requires_grad_(True)
        channels = self.config.latent_channels
        moments = self.moments()

        def step(g: torch.Generator):
            index = self.sample_index(hp.batch, g)
            _, _, z = sample_posterior(moments[index.to(moments.device)], channels, g, self.device)
            with self.autocast():
                recon = vae.decode(z, return_dict=False)[0]
            return reconstruction_loss(recon, self.pixels(index), hp.detail_weight)

        def finish() -> None:
            vae.eval()

        return StagePlan([{"params": params, "lr": hp.lr}], step, [vae.decoder], {"vae": vae}, finish=finish)

    def plan_face(self, hp: Hyper) -> StagePlan:
        face = self.stack.face_embedder
        face.requires_grad_(True)
        dim = self.config.face.embedding_dim
        head = nn.Parameter(torch.randn(self.data.persons, dim, generator=torch.Generator().manual_seed(7)).to(self.device))
        crop = self.config.face.crop_size
        scale, margin = 16.0, 0.25

        def step(g: torch.Generator):
            index = self.sample_index(hp.batch, g)
            labels = self.data.person[index].to(self.device)
            with self.autocast():
                emb = face(face_crops(self.pixels(index), crop))
            cos = F.normalize(emb.float(), dim=1) @ F.normalize(head, dim=1).T
            logits = scale * (cos - margin * F.one_hot(labels, self.data.persons))
            loss = F.cross_entropy(logits, labels)
            accuracy = float((cos.argmax(1) == labels).float().mean())
            return loss, {"acc": accuracy}

        def finish() -> None:
            face.eval()
            self._embeddings = None

        return StagePlan([{"params": [*face.parameters(), head], "lr": hp.lr}], step, [face],
                         {"face_embedder": face}, ema=False, finish=finish)

    def plan_base(self, hp: Hyper) -> StagePlan:
        s = self.stack
        base = [p for n, p in s.unet.named_parameters() if not any(v in n for v in VISUAL_PROJECTIONS)]
        for p in base:
            p.requires_grad_(True)
        s.text_encoder.requires_grad_(True)
        d, q = self.config.hidden_size, self.config.id_former.num_queries

        def step(g: torch.Generator):
            index = self.sample_index(hp.batch, g)
            # Dropped captions become the bare negative prompt "" that guidance's unconditional row uses.
            ids = self.prompts(index, "a person {prompt}", hp.caption_dropout, g, dropped="")
            sample, t, target, mask_lat = self.diffusion_inputs(index, g)
            b = index.shape[0]
            with self.autocast():
                hidden = self.text_fn(ids, self.new1)
                pred = self.unet_fn(sample, t.float(), hidden, torch.zeros(b, q, d, device=self.device),
                                    torch.zeros(b, device=self.device), None)
            return self.diffusion_loss(pred, target, mask_lat, hp), {}

        def finish() -> None:
            # The identity branch starts as a copy of the trained text branch (as `install_pva` does),
            # and `<new1>` as the trained token of "person".
            copy_visual_from_text(s.unet)
            with torch.no_grad():
                self.new1.copy_(s.text_encoder.token_table[word_id(self.config.init_token)])

        return StagePlan([{"params": base + list(s.text_encoder.parameters()), "lr": hp.lr}], step,
                         [s.unet, s.text_encoder], {"unet": s.unet, "text_encoder": s.text_encoder.clip},
                         finish=finish)

    def plan_pva(self, hp: Hyper, with_face: bool) -> StagePlan:
        s = self.stack
        visual = [p for n, p in s.unet.named_parameters() if any(v in n for v in VISUAL_PROJECTIONS)]
        for p in visual:
            p.requires_grad_(True)
        s.id_former.requires_grad_(True)
        self.new1.requires_grad_(True)
        groups = [
            {"params": visual + list(s.id_former.parameters()), "lr": hp.lr},
            {"params": [self.new1], "lr": hp.lr_token or hp.lr, "weight_decay": 0.0},
        ]
        train, state = [s.id_former], {"unet": s.unet, "id_former": s.id_former}
        crop = self.config.face.crop_size
        if with_face:
            s.face_embedder.requires_grad_(True)
            groups.append({"params": list(s.face_embedder.parameters()), "lr": hp.lr_face or hp.lr})
            state["face_embedder"] = s.face_embedder
        template = self.config.prompt_template

        def step(g: torch.Generator):
            index = self.sample_index(hp.batch, g)
            count = int(torch.randint(1, hp.max_references + 1, (), generator=g))
            refs = self.references(index, count, g)
            ids = self.prompts(index, template, hp.caption_dropout, g)
            sample, t, target, mask_lat = self.diffusion_inputs(index, g)
            b = index.shape[0]
            with self.autocast():
                if with_face:
                    # BatchNorm statistics stay those of the face stage (eval mode); the weights move.
                    emb = s.face_embedder(face_crops(self.pixels(refs.flatten()), crop)).reshape(b, count, -1)
                else:
                    emb = self.embeddings()[refs.flatten().to(self.embeddings().device)].reshape(b, count, -1)
                tokens = s.id_former(emb.float())
                hidden = self.text_fn(ids, self.new1)
                pred = self.unet_fn(sample, t.float(), hidden, tokens, torch.ones(b, device=self.device), None)
            return self.diffusion_loss(pred, target, mask_lat, hp), {"refs": float(count)}

        def finish() -> None:
            self._embeddings = None

        return StagePlan(groups, step, train, {**state, "new1": _TensorModule(self.new1)}, finish=finish)

    # ---------------------------------------------------------------- the loop
    def run_stage(self, name: str, hp: Hyper, seconds: float | None = None) -> None:
        """Train one stage to `hp.steps`, or, given `seconds`, to as many steps as fit in that time
        (timed over the first steps, then fixed: the LR schedule knows its length from there on)."""
        if self.size == "sd2" and name in SMALL_ONLY:
            raise SystemExit(f"stage {name} trains a small-size base model; sd2 loads SD-2 and ArcFace instead")
        plan = {
            "vae": self.plan_vae, "face": self.plan_face, "base": self.plan_base,
            "pva1": lambda h: self.plan_pva(h, False), "pva2": lambda h: self.plan_pva(h, True),
            "decoder": self.plan_decoder,
        }[name](hp)
        params = [p for group in plan.groups for p in group["params"]]
        optimiser = torch.optim.AdamW(plan.groups, lr=hp.lr, weight_decay=hp.weight_decay,
                                      fused=self.device.type == "cuda")
        total = [hp.steps]  # the schedule's length; a budgeted stage fixes it after its probe steps
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda i: min(1.0, (i + 1) / max(1, hp.warmup)) * (0.5 * (1 + math.cos(math.pi * min(i, total[0]) / total[0])) * 0.9 + 0.1))
        ema = [p.detach().clone() for p in params] if plan.ema and hp.ema > 0 else None
        generator = torch.Generator().manual_seed(self.args.seed * 1000 + STAGES.index(name))
        path = self.work / f"{name}.pt"
        step = 0
        if path.is_file():
            state = torch.load(path, map_location=self.device, weights_only=False)
            if seconds is not None:  # a budgeted stage keeps the length it fixed
                hp = replace(hp, steps=int(state["hyper"]["steps"]))
                total[0] = hp.steps
                seconds = None
            if state["done"] and state["step"] >= hp.steps:
                load_final(plan.state_modules, state["final"])
                print(f"[{name}] done earlier ({state['step']} steps); skipped", flush=True)
                self._after_skip(name)
                return
            with torch.no_grad():
                for p, saved in zip(params, state["params"]):
                    p.copy_(saved)
                if ema is not None and state.get("ema") is not None:
                    for e, saved in zip(ema, state["ema"]):
                        e.copy_(saved)
            optimiser.load_state_dict(state["optimiser"])
            schedule.load_state_dict(state["schedule"])
            generator.set_state(state["generator"])
            step = state["step"]
            print(f"[{name}] resuming at step {step}/{hp.steps}", flush=True)

        for module in plan.train_modules:
            module.train()
        progress = Progress(name, hp.steps, step, self.work / "log.jsonl", self.args.log_every)
        last_save = time.perf_counter()

        def save(done: bool) -> None:
            state = {
                "stage": name, "step": step, "done": done, "hyper": hp.__dict__,
                "params": [p.detach().clone() for p in params],
                "ema": None if ema is None else [e.clone() for e in ema],
                "optimiser": optimiser.state_dict(), "schedule": schedule.state_dict(),
                "generator": generator.get_state(),
            }
            if done:
                state["final"] = {k: {n: v.detach().clone() for n, v in m.state_dict().items()}
                                  for k, m in plan.state_modules.items()}
            tmp = path.with_suffix(".tmp")
            torch.save(state, tmp)
            tmp.replace(path)

        deadline = None if self.args.minutes is None else time.perf_counter() + 60 * self.args.minutes
        started = time.perf_counter()
        probe_start = None
        while step < total[0]:
            loss, extra = plan.step(generator)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            schedule.step()
            if ema is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - hp.ema)
            step += 1
            progress.update(step, float(loss.detach()), extra)
            now = time.perf_counter()
            if seconds is not None:
                if step == BUDGET_PROBE[0]:
                    probe_start = now
                elif step == BUDGET_PROBE[1] and probe_start is not None:
                    rate = (BUDGET_PROBE[1] - BUDGET_PROBE[0]) / (now - probe_start)
                    total[0] = max(step + 1, int(step + rate * (seconds - (now - started))))
                    hp = replace(hp, steps=total[0])
                    progress.total = total[0]
                    print(f"[{name}] {rate:.1f} it/s: {total[0]} steps fit in {seconds:.0f} s", flush=True)
                elif now - started > 1.1 * seconds:  # slower than probed: end the schedule here
                    print(f"[{name}] over its time at step {step}/{total[0]}; finishing", flush=True)
                    total[0] = step
                    hp = replace(hp, steps=step)
            if now - last_save > self.args.save_seconds:
                save(False)
                last_save = now
            if deadline is not None and now > deadline and step < hp.steps:
                save(False)
                progress.close()
                raise SystemExit(f"[{name}] time limit reached at step {step}; rerun to resume")
        progress.close()
        for module in plan.train_modules:
            module.eval()
        if ema is not None:
            with torch.no_grad():
                for p, e in zip(params, ema):
                    p.copy_(e)
        if plan.finish is not None:
            plan.finish()
        for p in params:
            p.requires_grad_(False)
        save(True)
        self.save_weights()
        print(f"[{name}] finished {step} steps; weights in {self.work / 'weights.safetensors'}", flush=True)

    def _after_skip(self, name: str) -> None:
        if name == "vae":
            self._latents = None
        if name in ("face", "pva2"):
            self._embeddings = None


def person_table(person: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each person's image indices as a padded table [P, M], the counts [P], and each image's slot [N]."""
    persons = int(person.max()) + 1
    sizes = torch.bincount(person, minlength=persons)
    table = torch.zeros(persons, int(sizes.max()), dtype=torch.int64)
    slot = torch.zeros_like(person)
    filled = [0] * persons
    for i, p in enumerate(person.tolist()):
        table[p, filled[p]] = i
        slot[i] = filled[p]
        filled[p] += 1
    return table, sizes, slot


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


def load_final(modules: dict[str, nn.Module], final: dict[str, dict[str, torch.Tensor]]) -> None:
    """Load a finished stage's resulting weights into its modules."""
    for key, module in modules.items():
        module.load_state_dict(final[key])


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


def _write_chunk(job: tuple[Path, int, int, int, int, int]) -> None:
    from models.train.synthetic import write_dataset

    out, seed, first, count, images, size = job
    write_dataset(out, seed=seed, persons=count, images_per_person=images, size=size, first_person=first)


def write_dataset_parallel(out: Path, seed: int, persons: int, images: int, size: int, jobs: int) -> None:
    """`synthetic.write_dataset` split into person ranges over `jobs` processes (same files)."""
    chunk = math.ceil(persons / max(1, jobs))
    work = [(out, seed, first, min(chunk, persons - first), images, size) for first in range(0, persons, chunk)]
    if jobs <= 1:
        for job in work:
            _write_chunk(job)
        return
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        pool.map(_write_chunk, work)


def export(size: str, work: Path, out: Path, adapter_step: bool = True) -> None:
    """Export `WORK/weights.safetensors` through the exporter into a model directory."""
    from export import export_all  # models/export/export.py

    weights = load_trained(work / "weights.safetensors")
    stack = build_stack(size, weights=weights)
    export_all(stack, out, adapter_step=adapter_step)
    print(f"wrote {out}")


def import_model(size: str, model: Path, work: Path, force: bool = False) -> None:
    """`WORK/weights.safetensors` recovered from the graphs of `model` (see `recover.py`)."""
    from models.train.recover import compare, recover

    path = Path(work) / "weights.safetensors"
    if path.exists() and not force:
        raise SystemExit(f"{path} exists: training there would lose it (--force replaces it)")
    start = time.perf_counter()
    result = recover(model, size)
    errors = compare(model, build_stack(size, weights=result.weights))
    worst = max(errors.values())
    if worst > 1e-4:
        raise SystemExit(f"recovered weights do not reproduce {model}: relative errors {errors}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_trained(path, result.weights)
    print(f"recovered {result.recovered} tensors from {model} ({len(result.folded)} BatchNorms folded into "
          f"their layers came back as identity + shift; unrecoverable: {result.missing or 'none'}); "
          f"graphs reproduced within {worst:.1e} (relative); wrote {path} in {time.perf_counter() - start:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="write the synthetic-face dataset directory")
    data.add_argument("--out", type=Path, required=True)
    data.add_argument("--persons", type=int, default=2000)
    data.add_argument("--images", type=int, default=8)
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--size", type=int, default=64)
    data.add_argument("--jobs", type=int, default=1, help="processes writing persons in parallel")

    run = sub.add_parser("run", help="train stages into a work directory (rerun resumes)")
    run.add_argument("--size", choices=("demo", "tiny", "sd2"), default="demo")
    run.add_argument("--data", type=Path, required=True, help="dataset directory (one folder per person)")
    run.add_argument("--work", type=Path, required=True, help="checkpoints, log and weights go here")
    run.add_argument("--stages", default=None, help=f"comma-separated subset of {','.join(STAGES)}")
    run.add_argument("--set", action="append", default=[], metavar="STAGE.FIELD=VALUE",
                     help="override a hyper-parameter, e.g. base.steps=8000")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="cpu")
    run.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    run.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    run.add_argument("--max-persons", type=int, default=None)
    run.add_argument("--log-every", type=int, default=50)
    run.add_argument("--save-seconds", type=float, default=120.0)
    run.add_argument("--minutes", type=float, default=None, help="stop (resumably) after this long per stage")
    run.add_argument("--compile", choices=("off", "default", "reduce-overhead"), default="off",
                     help="torch.compile the UNet and text encoder (reduce-overhead: CUDA graphs)")
    run.add_argument("--budget-minutes", type=float, default=None,
                     help="fit the stages' step counts into this much time (shares: BUDGET_SHARE)")
    run.add_argument("--base", help="sd2: local stable-diffusion-2-inpainting directory")
    run.add_argument("--face", help="sd2: ArcFace iresnet50 weights (or your own embedder's)")
    run.add_argument("--export", type=Path, default=None, help="export a model directory when done")

    exp = sub.add_parser("export", help="export WORK/weights.safetensors to a model directory")
    exp.add_argument("--size", choices=("demo", "tiny", "sd2"), default="demo")
    exp.add_argument("--work", type=Path, required=True)
    exp.add_argument("--out", type=Path, required=True)
    exp.add_argument("--no-adapter-step", action="store_true",
                     help="leave out adapter_step.onnx (the worker edits but refuses to tune)")
    imp = sub.add_parser("import", help="recover WORK/weights.safetensors from an exported model directory")
    imp.add_argument("--size", choices=("demo", "tiny", "sd2"), default="demo")
    imp.add_argument("--model", type=Path, required=True, help="a model directory (manifest.json + graphs)")
    imp.add_argument("--work", type=Path, required=True)
    imp.add_argument("--force", action="store_true", help="replace an existing WORK/weights.safetensors")

    args = parser.parse_args(argv)
    if args.command == "data":
        start = time.perf_counter()
        write_dataset_parallel(args.out, args.seed, args.persons, args.images, args.size, args.jobs)
        print(f"wrote {args.persons} x {args.images} images to {args.out} in {time.perf_counter() - start:.0f} s")
    elif args.command == "run":
        if args.threads:
            torch.set_num_threads(args.threads)
        stages = DEFAULT_STAGES if args.stages is None else tuple(s.strip() for s in args.stages.split(",") if s.strip())
        unknown = set(stages) - set(STAGES)
        if unknown:
            parser.error(f"unknown stages {sorted(unknown)}; expected some of {STAGES}")
        if args.size == "sd2" and args.stages is None:
            stages = ("pva1", "pva2")
        overrides = parse_overrides(args.set)
        trainer = Trainer(args)
        share = sum(BUDGET_SHARE[s] for s in stages)
        for stage in STAGES:
            if stage in stages:
                seconds = None if args.budget_minutes is None else 60 * args.budget_minutes * BUDGET_SHARE[stage] / share
                trainer.run_stage(stage, hyper_for(args.size, stage, overrides), seconds)
        if args.export is not None:
            export(args.size, args.work, args.export)
    elif args.command == "import":
        import_model(args.size, args.model, args.work, args.force)
    else:
        export(args.size, args.work, args.out, adapter_step=not args.no_adapter_step)


if __name__ == "__main__":
    main()
