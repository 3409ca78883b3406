"""Configurations of the two PVA sizes built by one code path.

`tiny` is a random-init model small enough to commit and to run in tests on a CPU; `sd2` is the
paper's full-size model (Stable Diffusion 2 inpainting + ArcFace iresnet50 + TransformNetwork).
Only the numbers differ: every module is built by the same functions from these configs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


#: CONTRACT.md's named mask regions: [x0, y0, x1, y1) as fractions of the aligned square crop (the
#: Rust worker's src/pipeline/mask.rs, the fixtures, the trainer and the benchmark all use these).
REGIONS = {
    "whole_face": (0.1875, 0.25, 0.8125, 0.9375),
    "lower_face": (0.1875, 0.5625, 0.8125, 0.9375),
    "eyebrows": (0.21875, 0.28125, 0.78125, 0.40625),
    "eyes": (0.21875, 0.375, 0.78125, 0.5),
    "mouth": (0.3125, 0.6875, 0.6875, 0.84375),
}


def region_box(region: str, size: int) -> tuple[int, int, int, int]:
    """Pixel bounds (x0, y0, x1, y1) of a named region at `size`: `round(f * size)` with halves to even,
    as Python's `round` and the worker (`src/pipeline/mask.rs`, `round_ties_even`) both round. At 64
    and 512 every bound is an integer; at 112 `eyebrows` has halves (24.5 -> 24, 87.5 -> 88)."""
    x0, y0, x1, y1 = (round(f * size) for f in REGIONS[region])
    return x0, y0, x1, y1


#: The paper's face window (manifest `face.embed_window`): PVA's FaceNet.forward (lib/face_net.py of
#: github.com/AtlantixJJ/PVA-CelebAHQ-IDI) takes the whole aligned face (its dataset's 512x512 images),
#: resizes it to 256x256 (`F.interpolate(mode="bilinear", align_corners=True)`), keeps rows 35:223 and
#: columns 32:220, and average-pools that to 112x112 (`AdaptiveAvgPool2d`) before ArcFace. `None` (the
#: tiny and demo models) is the worker's older convention: the face crop resized straight to 112.
PAPER_EMBED_WINDOW: dict[str, Any] = {"source_size": 512, "resize": 256, "rows": [35, 223], "cols": [32, 220]}

#: The paper's prompt (config/SDI2_PVA_*.json `personalized_words` "a <new1> person" in lib/dataset.py's
#: templates "photo of {}" and "photo of {}, has beard", ...): the job's prompt after a comma.
PAPER_PROMPT_TEMPLATE = "photo of a <new1> person, {prompt}"

#: The paper's classifier-free guidance (manifest `guidance`): script/pva_infer.py's "control" prompt set
#: sets `extra_feat_neg = True`, so lib/diffusers.py's PVAInpaintPipeline gives the unconditional row the
#: identity tokens too; lib/pva.py `PVADiffusion.inpaint` passes the negative prompt "photo of {}" with
#: `normal_words` "a person". `None` (tiny, demo): identity keys removed from that row, negative prompt "".
PAPER_GUIDANCE: dict[str, Any] = {"uncond_identity": True, "negative_prompt": "photo of a person"}


@dataclass(frozen=True)
class FaceConfig:
    """The iresnet face embedder (ArcFace-style)."""

    layers: tuple[int, int, int, int]
    widths: tuple[int, int, int, int]
    embedding_dim: int = 512
    crop_size: int = 112
    # How an aligned face crop becomes the embedder's input (PAPER_EMBED_WINDOW); None: resized to
    # crop_size directly.
    embed_window: dict[str, Any] | None = None


@dataclass(frozen=True)
class IdFormerConfig:
    """The TransformNetwork turning R face embeddings into identity tokens."""

    layers: int
    heads: int
    feedforward: int
    num_queries: int = 10
    max_references: int = 5


@dataclass(frozen=True)
class PvaConfig:
    """Everything that distinguishes one size from the other."""

    name: str
    resolution: int
    hidden_size: int
    text: dict[str, Any]
    unet: dict[str, Any]
    vae: dict[str, Any]
    face: FaceConfig
    id_former: IdFormerConfig
    scaling_factor: float = 0.18215
    latent_channels: int = 4
    vae_factor: int = 8
    scheduler: dict[str, Any] = field(
        default_factory=lambda: {
            "num_train_timesteps": 1000,
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "prediction_type": "epsilon",
            "steps_offset": 1,
            "set_alpha_to_one": False,
            "timestep_spacing": "leading",
        }
    )
    tokenizer: dict[str, Any] = field(
        default_factory=lambda: {
            "max_length": 77,
            "pad_id": 0,
            "bos_id": 49406,
            "eos_id": 49407,
            "new_token": "<new1>",
            "new_token_id": 49408,
        }
    )
    prompt_template: str = "a <new1> person {prompt}"
    # The unconditional row of classifier-free guidance (PAPER_GUIDANCE); None: identity keys removed,
    # negative prompt "" (the manifest leaves the section out).
    guidance: dict[str, Any] | None = None
    # The word whose token embedding initialises `<new1>` (the paper initialises from "person").
    init_token: str = "person"
    tuning: dict[str, Any] = field(
        default_factory=lambda: {
            "batch_size": 2,
            "steps": 40,
            "lr_visual": 1e-5,
            "lr_token": 1e-3,
            "weight_decay": 0.01,
            "beta1": 0.9,
            "beta2": 0.999,
            "eps": 1e-8,
        }
    )

    @property
    def latent_size(self) -> int:
        """Spatial size of the latents (resolution / VAE factor)."""
        return self.resolution // self.vae_factor


TINY = PvaConfig(
    name="pva-tiny",
    resolution=64,
    hidden_size=32,
    text={
        "vocab_size": 49408,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
    },
    unet={
        "sample_size": 8,
        "in_channels": 9,
        "out_channels": 4,
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
        "norm_num_groups": 8,
        "use_linear_projection": True,
    },
    vae={
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (8, 16, 32, 32),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "latent_channels": 4,
        "sample_size": 64,
        "scaling_factor": 0.18215,
    },
    face=FaceConfig(layers=(1, 1, 1, 1), widths=(8, 16, 32, 64)),
    id_former=IdFormerConfig(layers=1, heads=2, feedforward=64),
)

# NOTE: the numbers below are those of stabilityai/stable-diffusion-2-inpainting's config files
# (unet/config.json, vae/config.json, text_encoder/config.json); real weights must match them.
SD2 = PvaConfig(
    name="pva-sd2",
    resolution=512,
    hidden_size=1024,
    text={
        "vocab_size": 49408,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 23,
        "num_attention_heads": 16,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": 512,
    },
    unet={
        "sample_size": 64,
        "in_channels": 9,
        "out_channels": 4,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "down_block_types": (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        "up_block_types": (
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        "cross_attention_dim": 1024,
        "attention_head_dim": (5, 10, 20, 20),
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "use_linear_projection": True,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "act_fn": "silu",
    },
    vae={
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (128, 256, 512, 512),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "latent_channels": 4,
        "sample_size": 512,
        "scaling_factor": 0.18215,
    },
    face=FaceConfig(layers=(3, 4, 14, 3), widths=(64, 128, 256, 512), embed_window=PAPER_EMBED_WINDOW),
    id_former=IdFormerConfig(layers=4, heads=8, feedforward=2048),
    prompt_template=PAPER_PROMPT_TEMPLATE,
    guidance=PAPER_GUIDANCE,
)

# The trained demo model (models/demo): the tiny architecture, trained from scratch on synthetic faces
# by pva.train. Its noise parameterisation differs: v-prediction, because epsilon-prediction
# is poor at high noise, where a small model must get the colours right. And its tuning rate of the
# visual projections: at the paper's 1e-5 forty AdamW steps leave the small model's projections as they
# were (benchmark: tuned = untuned to the fourth digit); 1e-3 was the largest rate that raised the
# identity measures without costing more than 0.1 of caption accuracy on validation identities
# (`python -m pva.train.benchmark --seed 2000 --persons 16 --tune-lr-visual ...`; models/train/README.md).
DEMO = replace(
    TINY,
    name="pva-demo",
    scheduler={**TINY.scheduler, "prediction_type": "v_prediction"},
    tuning={**TINY.tuning, "lr_visual": 1e-3},
)

CONFIGS: dict[str, PvaConfig] = {"tiny": TINY, "demo": DEMO, "sd2": SD2}


def get_config(size: str) -> PvaConfig:
    """The config of a size name (`tiny`, `demo` or `sd2`)."""
    try:
        return CONFIGS[size]
    except KeyError:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(CONFIGS)}") from None
