"""`build_stack`: every PVA module of one size, built from its config, in eval mode.

This is the single entry point the exporter, the reference pipeline, the tests and the adapter
tuning code use. Random init is seeded per component (so adding a component never shifts another's
weights); given `weights` replace the random ones (see `pva.weights.load_checkpoints`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn

from .attention import VISUAL_PROJECTIONS, AdapterEntry, install_pva, use_explicit_attention
from .config import PvaConfig, get_config
from .face import IResNet, randomize_batch_norms
from .graphs import UnetGraph, VaeDecoderGraph, VaeEncoderGraph
from .id_former import IdFormer
from .text import TextEncoder, build_clip
from .tokenizer import word_id

# Seed offsets per component: component k is initialised from seed * 100 + k.
_SEEDS = {"text_encoder": 1, "face_embedder": 2, "id_former": 3, "unet": 4, "vae": 5}


@dataclass
class PvaStack:
    """All PVA modules of one size plus what the manifest needs to describe them."""

    config: PvaConfig
    text_encoder: TextEncoder
    face_embedder: IResNet
    id_former: IdFormer
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    unet_graph: UnetGraph
    vae_encoder: VaeEncoderGraph
    vae_decoder: VaeDecoderGraph
    adapter_layout: list[AdapterEntry]
    initial_params: torch.Tensor

    @property
    def scheduler_config(self) -> dict[str, Any]:
        """The diffusers scheduler config (DDIM and DPM-Solver++ are built from it)."""
        return dict(self.config.scheduler)

    @property
    def tokenizer(self) -> dict[str, Any]:
        """Tokenizer settings of the manifest."""
        return dict(self.config.tokenizer)

    @property
    def hidden_size(self) -> int:
        """Width D of text states, cross-attention context and identity tokens."""
        return self.config.hidden_size

    @property
    def visual_length(self) -> int:
        """P: elements of the `visual` segment (all `to_visual_*` weights)."""
        return sum(e.size for e in self.adapter_layout if e.group == "visual")

    @property
    def token_length(self) -> int:
        """Elements of the `token` segment (the `<new1>` embedding, D)."""
        return sum(e.size for e in self.adapter_layout if e.group == "token")

    def split_params(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A flat `params` [P + D] -> (visual [P], new1_embedding [D])."""
        p = self.visual_length
        return params[:p], params[p:]

    def unet_forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        id_tokens: torch.Tensor,
        id_switch: torch.Tensor,
        adapter: torch.Tensor,
    ) -> torch.Tensor:
        """The UNet with a flat visual adapter [P] in plain PyTorch (differentiable in `adapter`)."""
        return self.unet_graph(sample, timestep, encoder_hidden_states, id_tokens, id_switch, adapter)

    def encode_text(self, input_ids: torch.Tensor, new1_embedding: torch.Tensor) -> torch.Tensor:
        """`input_ids` [B, 77] -> hidden states [B, 77, D] (differentiable in `new1_embedding`)."""
        return self.text_encoder(input_ids, new1_embedding)

    def weights(self, new1_embedding: torch.Tensor | None = None) -> dict[str, Any]:
        """The modules' weights in the form `build_stack(weights=...)` loads (and `save_trained`
        writes); with `new1_embedding` if given."""
        weights: dict[str, Any] = {
            "text_encoder": self.text_encoder.clip.state_dict(),
            "face_embedder": self.face_embedder.state_dict(),
            "id_former": self.id_former.state_dict(),
            "unet": self.unet.state_dict(),
            "vae": self.vae.state_dict(),
        }
        if new1_embedding is not None:
            weights["new1_embedding"] = new1_embedding
        return weights

    def modules(self) -> dict[str, nn.Module]:
        """The graph modules by CONTRACT.md graph name (all but `adapter_step`)."""
        return {
            "text_encoder": self.text_encoder,
            "face_embedder": self.face_embedder,
            "id_former": self.id_former,
            "unet": self.unet_graph,
            "vae_encoder": self.vae_encoder,
            "vae_decoder": self.vae_decoder,
        }


def _seeded(seed: int, component: str):
    torch.manual_seed(seed * 100 + _SEEDS[component])


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}


def build_stack(size: str, seed: int = 0, weights: dict[str, Any] | None = None,
                resolution: int | None = None) -> PvaStack:
    """Build every PVA module of `size` (`tiny` or `sd2`) in eval mode with frozen weights.

    `resolution` (optional) replaces the size's image resolution (a multiple of the VAE factor times
    the UNet's total downsampling): the weights do not depend on it, the exported graphs' fixed
    shapes (the tuning step's latents) and the manifest do.

    `weights` (optional) maps component names to state dicts that replace the random init:
    `text_encoder` (CLIPTextModel), `unet` (diffusers UNet; `to_visual_*` keys optional),
    `vae`, `face_embedder` (ArcFace iresnet), `id_former` (ours or the paper's TransformNetwork
    naming), and `new1_embedding` (a [D] tensor; default: the token table's row of "person").
    """
    config = get_config(size)
    if resolution is not None and resolution != config.resolution:
        step = config.vae_factor * 2 ** (len(config.unet["block_out_channels"]) - 1)
        if resolution <= 0 or resolution % step:
            raise ValueError(f"resolution {resolution} is not a positive multiple of {step}")
        config = replace(config, resolution=resolution)
    weights = dict(weights or {})
    unknown = set(weights) - set(_SEEDS) - {"new1_embedding"}
    if unknown:
        raise ValueError(f"unknown weight groups: {sorted(unknown)}")

    with torch.random.fork_rng(devices=[]):
        _seeded(seed, "text_encoder")
        clip = build_clip(config.text)
        if "text_encoder" in weights:
            clip.load_state_dict(_strip(weights["text_encoder"], "text_model."), strict=True)
        text_encoder = TextEncoder(clip, config.tokenizer["new_token_id"])

        _seeded(seed, "face_embedder")
        face = IResNet(config.face)
        randomize_batch_norms(face, torch.Generator().manual_seed(seed * 100 + _SEEDS["face_embedder"]))
        if "face_embedder" in weights:
            face.load_state_dict(weights["face_embedder"], strict=True)

        _seeded(seed, "id_former")
        id_former = IdFormer(config.id_former, config.face.embedding_dim, config.hidden_size)
        if "id_former" in weights:
            state = weights["id_former"]
            if any(k.startswith("0.") for k in state):
                id_former.load_paper_state_dict(state)
            else:
                id_former.load_state_dict(state, strict=True)

        _seeded(seed, "unet")
        unet = UNet2DConditionModel(**config.unet)
        unet_state = dict(weights.get("unet", {}))
        visual_state = {k: v for k, v in unet_state.items() if any(p in k for p in VISUAL_PROJECTIONS)}
        base_state = {k: v for k, v in unet_state.items() if k not in visual_state}
        if base_state:
            unet.load_state_dict(base_state, strict=True)
        layout = install_pva(unet)
        if visual_state:
            missing = {e.name for e in layout} - set(visual_state)
            if missing:
                raise ValueError(f"PVA weights lack {len(missing)} visual projections, e.g. {min(missing)}")
            unet.load_state_dict(visual_state, strict=False)

        _seeded(seed, "vae")
        vae = AutoencoderKL(**config.vae)
        if "vae" in weights:
            vae.load_state_dict(weights["vae"], strict=True)
        use_explicit_attention(vae)

    modules: list[nn.Module] = [text_encoder, face, id_former, unet, vae]
    for module in modules:
        module.eval().requires_grad_(False)

    new1 = weights.get("new1_embedding")
    if new1 is None:
        new1 = text_encoder.token_table[word_id(config.init_token)]
    new1 = new1.detach().float().reshape(-1)
    if new1.numel() != config.hidden_size:
        raise ValueError(f"new1_embedding has {new1.numel()} values, expected {config.hidden_size}")

    visual_length = sum(e.size for e in layout)
    token = AdapterEntry("new1_embedding", "token", visual_length, (config.hidden_size,))
    modules_by_name = dict(unet.named_modules())
    visual = [
        modules_by_name[e.name.rsplit(".", 1)[0]].weight.detach().reshape(-1) for e in layout
    ]
    params = torch.cat([*visual, new1]).contiguous()

    return PvaStack(
        config=config,
        text_encoder=text_encoder,
        face_embedder=face,
        id_former=id_former,
        unet=unet,
        vae=vae,
        unet_graph=UnetGraph(unet).eval(),
        vae_encoder=VaeEncoderGraph(vae).eval(),
        vae_decoder=VaeDecoderGraph(vae).eval(),
        adapter_layout=[*layout, token],
        initial_params=params,
    )
