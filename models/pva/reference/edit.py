"""The Python reference PVA edit: ONNX Runtime on a model directory, conventions of CONTRACT.md.

Tokenize (open_clip's CLIP BPE, `<new1>` split out) -> text encoder (cond and uncond) -> face
embedder on the reference crops (through the manifest's `face.embed_window`, when it has one) -> id
former -> VAE encode of the masked image -> denoise with diffusers' DDIMScheduler (eta configurable) or
DPMSolverMultistepScheduler (dpmsolver++, order 2), classifier-free guidance as ONE batched UNet call
(the uncond row's id_switch from the manifest's `guidance`) -> VAE decode.
Images must already be at model size (target/mask at the model resolution, references at
`face_source_size`): resampling is the caller's job, so nothing here can differ from the Rust side.

    .venv/bin/python -m pva.reference.edit --model models/tiny --target t.png --mask m.png \
        --ref r0.png --ref r1.png --prompt "smiling" --scheduler ddim --steps 8 --out out.png
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from PIL import Image
from safetensors.torch import load_file

from pva.tokenizer import encode, render_prompt

SCHEDULERS = ("ddim", "dpm")


def image_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> float32 [1, 3, H, W] in [-1, 1] (`x / 127.5 - 1`)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array / 127.5 - 1.0).permute(2, 0, 1).unsqueeze(0).contiguous()


def face_source_size(manifest: dict) -> int:
    """The side of the aligned face crops the face embedder's path starts from: the embed window's
    `source_size`, or `face.crop_size` when the manifest has no window."""
    window = manifest["face"].get("embed_window")
    return manifest["face"]["crop_size"] if window is None else window["source_size"]


def embed_window(faces: torch.Tensor, manifest: dict) -> torch.Tensor:
    """Aligned face crops [N, 3, S, S] in [-1, 1] -> the face embedder's input [N, 3, crop, crop].

    With the manifest's `face.embed_window` this is PVA's FaceNet.forward (lib/face_net.py of the
    paper's code): bilinear resize to `resize` (align_corners=True; skipped when already that size, as
    the paper skips it), rows `rows[0]:rows[1]` and columns `cols[0]:cols[1]`, adaptive average pooling
    to `crop_size`. Without one the crops already are the input."""
    window = manifest["face"].get("embed_window")
    if window is None:
        return faces
    size = window["resize"]
    if faces.shape[3] != size:
        faces = F.interpolate(faces, (size, size), mode="bilinear", align_corners=True)
    (r0, r1), (c0, c1) = window["rows"], window["cols"]
    crop = manifest["face"]["crop_size"]
    return F.adaptive_avg_pool2d(faces[:, :, r0:r1, c0:c1], (crop, crop)).contiguous()


def guidance_settings(manifest: dict) -> tuple[bool, str]:
    """The manifest's `guidance` section: (whether the unconditional row keeps the identity tokens,
    the default negative prompt); without the section (False, "")."""
    g = manifest.get("guidance") or {}
    return bool(g.get("uncond_identity", False)), str(g.get("negative_prompt", ""))


def mask_tensor(image: Image.Image) -> torch.Tensor:
    """Mask image -> float32 [1, 1, H, W] of 0/1 (channel 0 / 255 >= 0.5; 1 = repaint)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)[:, :, 0] / 255.0
    return torch.from_numpy((array >= 0.5).astype(np.float32))[None, None]


def to_bytes(image: torch.Tensor) -> np.ndarray:
    """Decoded [1, 3, H, W] in ~[-1, 1] -> uint8 HWC with `round(clamp((x + 1) / 2, 0, 1) * 255)`."""
    x = torch.round(torch.clamp((image[0] + 1) / 2, 0, 1) * 255)
    return x.permute(1, 2, 0).to(torch.uint8).numpy()


def make_scheduler(kind: str, config: dict[str, Any]):
    """A diffusers scheduler from the manifest's scheduler config."""
    if kind == "ddim":
        # NOTE: diffusers' DDIM default clips x0 to [-1, 1]; SD-2's scheduler config (and the
        # Rust scheduler) do not clip.
        return DDIMScheduler(**config, clip_sample=False)
    if kind == "dpm":
        settings = {k: v for k, v in config.items() if k != "set_alpha_to_one"}
        return DPMSolverMultistepScheduler(
            **settings, algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True
        )
    raise ValueError(f"unknown scheduler {kind!r}; expected one of {SCHEDULERS}")


@dataclass
class EditRequest:
    """One edit. `init_noise` / `variance_noise` replace draws from the seeded generator."""

    target: Image.Image
    mask: Image.Image
    references: list[Image.Image]
    prompt: str
    negative_prompt: str = ""
    scheduler: str = "ddim"
    eta: float = 1.0
    steps: int = 50
    guidance: float = 1.0
    seed: int = 0
    init_noise: torch.Tensor | None = None
    variance_noise: torch.Tensor | None = None
    params: torch.Tensor | None = None


@dataclass
class EditResult:
    """The output image and every intermediate tensor (for parity fixtures)."""

    image: np.ndarray
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    timesteps: list[int] = field(default_factory=list)


class ReferencePipeline:
    """ONNX Runtime sessions of one model directory and the edit built on them."""

    def __init__(self, model_dir: Path, threads: int = 0) -> None:
        self.model_dir = Path(model_dir)
        self.manifest = json.loads((self.model_dir / "manifest.json").read_text())
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.sessions = {
            name: ort.InferenceSession(
                str(self.model_dir / graph["file"]), options, providers=["CPUExecutionProvider"]
            )
            for name, graph in self.manifest["graphs"].items()
            if name != "adapter_step"
        }
        adapter = self.manifest["adapter"]
        self.params = load_file(str(self.model_dir / adapter["file"]))[adapter["tensor"]]

    def run_graph(self, name: str, **inputs: torch.Tensor) -> torch.Tensor:
        """Run one graph on torch tensors; returns its single output."""
        feeds = {k: v.contiguous().numpy() for k, v in inputs.items()}
        return torch.from_numpy(self.sessions[name].run(None, feeds)[0])

    def token_ids(self, prompt: str, negative_prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond, uncond) ids [1, 77]: the templated prompt and the bare negative prompt (the
        manifest's default negative prompt when this one is empty or only whitespace)."""
        settings = self.manifest["tokenizer"]
        cond = encode(render_prompt(self.manifest["prompt_template"], prompt), settings)
        negative = " ".join(negative_prompt.split()) or " ".join(guidance_settings(self.manifest)[1].split())
        uncond = encode(negative, settings)
        return torch.tensor([cond]), torch.tensor([uncond])

    def edit(self, request: EditRequest) -> EditResult:
        """Run one PVA edit."""
        m = self.manifest
        res, lat, scale = m["resolution"], m["latent"]["size"], m["vae"]["scaling_factor"]
        if request.target.size != (res, res) or request.mask.size != (res, res):
            raise ValueError(f"target and mask must be {res}x{res}")
        crop = face_source_size(m)
        if not 1 <= len(request.references) <= m["max_references"]:
            raise ValueError(f"1..{m['max_references']} references, got {len(request.references)}")
        if any(r.size != (crop, crop) for r in request.references):
            raise ValueError(f"references must be {crop}x{crop} aligned crops")

        params = self.params if request.params is None else request.params
        visual_length = m["adapter"]["visual_length"]
        adapter, new1 = params[:visual_length], params[visual_length:]
        t: dict[str, torch.Tensor] = {}

        ids_cond, ids_uncond = self.token_ids(request.prompt, request.negative_prompt)
        t["input_ids_cond"], t["input_ids_uncond"] = ids_cond, ids_uncond
        t["hidden_cond"] = self.run_graph("text_encoder", input_ids=ids_cond, new1_embedding=new1)
        t["hidden_uncond"] = self.run_graph("text_encoder", input_ids=ids_uncond, new1_embedding=new1)

        faces = embed_window(torch.cat([image_tensor(r) for r in request.references]), m)
        t["ref_embeddings"] = self.run_graph("face_embedder", faces=faces)
        t["id_tokens"] = self.run_graph("id_former", embeddings=t["ref_embeddings"][None])

        image = image_tensor(request.target)
        mask = mask_tensor(request.mask)
        t["image"] = image
        t["mask_latent"] = F.interpolate(mask, size=(lat, lat), mode="nearest")
        t["masked_latents"] = self.run_graph("vae_encoder", image=image * (1 - mask)) * scale

        scheduler = make_scheduler(request.scheduler, m["scheduler"])
        scheduler.set_timesteps(request.steps)
        generator = torch.Generator().manual_seed(request.seed)
        shape = (1, m["latent"]["channels"], lat, lat)
        noise = request.init_noise if request.init_noise is not None else torch.randn(shape, generator=generator)
        t["init_noise"] = noise
        latents = noise * scheduler.init_noise_sigma
        t["latents_0"] = latents

        guided = request.guidance > 1.0
        hidden = torch.cat([t["hidden_uncond"], t["hidden_cond"]]) if guided else t["hidden_cond"]
        rows = hidden.shape[0]
        id_tokens = t["id_tokens"].expand(rows, -1, -1)
        # The unconditional row attends to the identity tokens too where the manifest says so (the
        # paper's `extra_feat_neg`); otherwise its identity keys are removed (switch 0).
        uncond_switch = 1.0 if guidance_settings(m)[0] else 0.0
        id_switch = torch.tensor([uncond_switch, 1.0]) if guided else torch.tensor([1.0])
        stochastic = request.scheduler == "ddim" and request.eta > 0
        variance: list[torch.Tensor] = []
        timesteps = [int(x) for x in scheduler.timesteps]
        for index, step_t in enumerate(scheduler.timesteps):
            model_in = scheduler.scale_model_input(latents, step_t)
            sample = torch.cat([model_in, t["mask_latent"], t["masked_latents"]], dim=1).expand(rows, -1, -1, -1)
            eps = self.run_graph(
                "unet",
                sample=sample,
                timestep=torch.full((rows,), float(step_t), dtype=torch.float32),
                encoder_hidden_states=hidden,
                id_tokens=id_tokens,
                id_switch=id_switch,
                adapter=adapter,
            )
            if guided:
                eps = eps[:1] + request.guidance * (eps[1:] - eps[:1])
            kwargs: dict[str, Any] = {}
            if request.scheduler == "ddim":
                kwargs["eta"] = request.eta
                if stochastic:
                    vn = (
                        request.variance_noise[index : index + 1].reshape(shape)
                        if request.variance_noise is not None
                        else torch.randn(shape, generator=generator)
                    )
                    variance.append(vn)
                    kwargs["variance_noise"] = vn
            latents = scheduler.step(eps, step_t, latents, return_dict=False, **kwargs)[0]
            t[f"latents_{index + 1}"] = latents
        if stochastic:
            t["variance_noise"] = torch.cat(variance)

        t["decoded"] = self.run_graph("vae_decoder", latent=latents / scale)
        return EditResult(image=to_bytes(t["decoded"]), tensors=t, timesteps=timesteps)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pva.reference.edit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--target", type=Path, required=True)
    parser.add_argument("--mask", type=Path, required=True)
    parser.add_argument("--ref", type=Path, action="append", required=True)
    parser.add_argument("--prompt", default="")
    parser.add_argument("--negative-prompt", default="", help="default: the manifest's guidance.negative_prompt")
    parser.add_argument("--scheduler", choices=SCHEDULERS, default="ddim")
    parser.add_argument("--eta", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    pipeline = ReferencePipeline(args.model)
    result = pipeline.edit(
        EditRequest(
            target=Image.open(args.target),
            mask=Image.open(args.mask),
            references=[Image.open(p) for p in args.ref],
            prompt=args.prompt,
            negative_prompt=args.negative_prompt,
            scheduler=args.scheduler,
            eta=args.eta,
            steps=args.steps,
            guidance=args.guidance,
            seed=args.seed,
        )
    )
    Image.fromarray(result.image).save(args.out)
    print(f"wrote {args.out}; timesteps {result.timesteps}")


if __name__ == "__main__":
    main()
