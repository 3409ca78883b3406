"""Loading real weights for the `sd2` size from local files (never from a hub).

- `base`: a local diffusers-layout `stable-diffusion-2-inpainting` directory (`unet/`, `vae/`,
  `text_encoder/`, each with `config.json` and `*.safetensors` or `*.bin`).
- `pva`: a PVA checkpoint (state dict, `.safetensors`/`.pt`/`.bin`/`.pth`). Keys are grouped by
  prefix: the paper's `PVADiffusion` names (`unet.` for the `to_visual_*` projections,
  `trans_net.` for the TransformNetwork, `face_net_train.facenet.` for ArcFace,
  `tuned_embedding.modifier_vec` for `<new1>`) or ours (`unet.`, `id_former.`, `face_embedder.`,
  `new1_embedding`).
- `face`: an ArcFace iresnet50 state dict (e.g. `ms1mv3_arcface_r50.pth`), used when the PVA
  checkpoint carries none.
The result is the `weights` argument of `build_stack`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .config import PvaConfig

_PVA_PREFIXES = {
    "unet.": "unet",
    "trans_net.": "id_former",
    "id_former.": "id_former",
    "face_net_train.facenet.": "face_embedder",
    "face_embedder.": "face_embedder",
}
_TOKEN_KEYS = ("tuned_embedding.modifier_vec", "new1_embedding")


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors or a torch pickle file (tensors only, loaded on CPU)."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _component_state(directory: Path) -> dict[str, torch.Tensor]:
    for name in ("model.safetensors", "diffusion_pytorch_model.safetensors", "pytorch_model.bin",
                 "diffusion_pytorch_model.bin"):
        if (directory / name).is_file():
            return load_state(directory / name)
    raise FileNotFoundError(f"no weights file in {directory}")


def _check_config(directory: Path, expected: dict[str, Any], keys: tuple[str, ...]) -> None:
    found = json.loads((directory / "config.json").read_text())
    for key in keys:
        want, got = expected[key], found.get(key)
        if isinstance(want, tuple):
            got = tuple(got) if isinstance(got, list) else got
        if got != want:
            raise ValueError(f"{directory}/config.json: {key} = {got!r}, this exporter builds {want!r}")


def load_weights(config: PvaConfig, base: Path, pva: Path | None = None, face: Path | None = None) -> dict[str, Any]:
    """Read the base model, the PVA checkpoint and the face embedder into `build_stack` weights."""
    _check_config(base / "unet", config.unet,
                  ("in_channels", "block_out_channels", "cross_attention_dim", "layers_per_block"))
    _check_config(base / "vae", config.vae, ("block_out_channels", "latent_channels"))
    _check_config(base / "text_encoder", config.text, ("hidden_size", "num_hidden_layers"))
    weights: dict[str, Any] = {
        "unet": _component_state(base / "unet"),
        "vae": _component_state(base / "vae"),
        "text_encoder": _component_state(base / "text_encoder"),
    }
    if face is not None:
        weights["face_embedder"] = load_state(face)
    if pva is not None:
        for key, value in load_state(pva).items():
            if key in _TOKEN_KEYS:
                weights["new1_embedding"] = value
                continue
            for prefix, group in _PVA_PREFIXES.items():
                if key.startswith(prefix):
                    weights.setdefault(group, {})[key[len(prefix):]] = value
                    break
    return weights


#: Weight groups of a trained checkpoint (`models/train`), each stored under its own key prefix.
TRAINED_GROUPS = ("text_encoder", "face_embedder", "id_former", "unet", "vae")


def save_trained(path: Path, weights: dict[str, Any]) -> None:
    """Write `build_stack` weights as ONE safetensors file: `<group>.<key>` plus `new1_embedding`."""
    from safetensors.torch import save_file

    flat: dict[str, torch.Tensor] = {}
    for group in TRAINED_GROUPS:
        for key, value in weights.get(group, {}).items():
            flat[f"{group}.{key}"] = value.detach().float().contiguous().cpu()
    if "new1_embedding" in weights:
        flat["new1_embedding"] = weights["new1_embedding"].detach().float().reshape(-1).contiguous().cpu()
    save_file(flat, str(path))


def load_trained(path: Path) -> dict[str, Any]:
    """Read a file written by `save_trained` back into `build_stack` weights."""
    weights: dict[str, Any] = {}
    for key, value in load_file(str(path)).items():
        if key == "new1_embedding":
            weights[key] = value
            continue
        group, _, rest = key.partition(".")
        if group not in TRAINED_GROUPS or not rest:
            raise ValueError(f"{path}: unexpected tensor {key!r}")
        weights.setdefault(group, {})[rest] = value
    return weights
