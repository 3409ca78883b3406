"""The training loop: the stack being trained, its data, and one stage run with checkpoints that resume.

`Trainer` holds what every stage shares (the stack on its device, the dataset, cached latents and
face embeddings, prompts, masks and noised latents of a batch); `Trainer.run_stage` runs one stage's
plan (`pva.train.stages`) with AdamW, a warm-up + cosine schedule, an EMA, checkpoints to
``WORK/<stage>.pt`` and a resume that continues bit for bit. The command line is `pva.train.cli`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from pva import PvaStack, build_stack
from pva.config import get_config
from pva.tokenizer import encode, render_prompt
from pva.train.data import FaceDataset, face_crops, latent_mask, random_masks, to_unit
from pva.train.stages import BUDGET_PROBE, PLANS, SMALL_ONLY, STAGES, Hyper, posterior_moments
from pva.tuning import alphas_cumprod
from pva.weights import WeightsError, load_checkpoints, load_trained, save_trained


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
            # The parts the stages train (id former, visual projections, <new1>) may be missing and
            # keep their init; the summary says where every part came from.
            try:
                loaded = load_checkpoints(self.config, Path(args.base), [], Path(args.face) if args.face else None,
                                          partial=True)
            except WeightsError as err:
                raise SystemExit(f"sd2: {err}") from None
            for line in loaded.summary():
                print(line, flush=True)
            weights = loaded.weights
        else:
            weights = None
        self.stack: PvaStack = build_stack(args.size, seed=args.seed, weights=weights,
                                           resolution=getattr(args, "resolution", None))
        self.config = self.stack.config
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

    # ---------------------------------------------------------------- the loop
    def run_stage(self, name: str, hp: Hyper, seconds: float | None = None) -> None:
        """Train one stage to `hp.steps`, or, given `seconds`, to as many steps as fit in that time
        (timed over the first steps, then fixed: the LR schedule knows its length from there on)."""
        if self.size == "sd2" and name in SMALL_ONLY:
            raise SystemExit(f"stage {name} trains a small-size base model; sd2 loads SD-2 and ArcFace instead")
        plan = PLANS[name](self, hp)
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


def load_final(modules: dict[str, nn.Module], final: dict[str, dict[str, torch.Tensor]]) -> None:
    """Load a finished stage's resulting weights into its modules."""
    for key, module in modules.items():
        module.load_state_dict(final[key])
