"""Loading real weights from local files (never from a hub), each part from a named source.

An export needs seven parts; `load_checkpoints` finds each in the files given, checks its keys and
shapes against the exporter's modules, and stops with a `WeightsError` naming the part, the files
it looked in and the keys it looked for when one is missing or does not fit:

| part | sources (later ones replace earlier ones) |
|---|---|
| `unet`, `vae`, `text_encoder` | `base`: a diffusers directory (`unet/`, `vae/`, `text_encoder/`, each with `config.json` and `diffusion_pytorch_model.safetensors`/`.bin` or `model.safetensors`/`pytorch_model.bin`); a PVA file may replace some tensors (the paper's `["unet"]` of a CrossQKV finetune; our `unet.`/`vae.`/`text_encoder.`) |
| `face_embedder` | `face`: an arcface_torch iresnet state dict (`conv1.weight`, ...; or the paper's FaceNet, `facenet.*`); a PVA file's `["face_net"]`, `face_net_train.facenet.*`, `face_embedder.*` |
| `id_former` | a PVA file's `["transform_network"]` (the paper's TransformNetwork, `0.*`/`1.*`), `trans_net.*`, `id_former.*` |
| `visual` | a PVA file's `["unet"]` or `unet.*`: `*.attn2.to_visual_{q,k,v}.weight`, every one of them |
| `new1` | a PVA file's `["modifier_vec"]`, `["modifier_token"]` (one token), `tuned_embedding.modifier_vec`, `new1_embedding` |

PVA files are the paper's `FPIP.bin` (`torch.save` of a NESTED dict: `modifier_vec`,
`transform_network`, `unet`, `face_net`, each present only if that part was trained) or flat state
dicts with the prefixes above (`save_trained` files included). Several PVA files are layered in
order, part by part: a per-person finetune (no `transform_network`) goes after the stage-2 file it
started from. `allow_init` names parts that may instead keep `build_stack`'s init: `visual` (a copy
of each attn2's `to_q/to_k/to_v`, as the paper's `change_forward` starts training) and `new1` (the
embedding of "person", the paper's init). `LoadedWeights.summary()` says where each part came from.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from safetensors.torch import load_file

from .config import PvaConfig

#: Every part an export needs, in summary order.
BASE_PARTS = ("unet", "vae", "text_encoder")
PARTS = (*BASE_PARTS, "face_embedder", "id_former", "visual", "new1")
LABELS = {
    "unet": "unet",
    "vae": "vae",
    "text_encoder": "text encoder",
    "face_embedder": "face embedder",
    "id_former": "id former",
    "visual": "visual projections",
    "new1": "<new1>",
}
#: Parts `allow_init` may leave to `build_stack`'s init, and what that init is.
INITS = {
    "visual": "copied from each attn2's to_q/to_k/to_v (--allow-init visual; the paper's change_forward init)",
    "new1": 'the token embedding of "person" (--allow-init new1; the paper\'s init)',
}
#: What each part is looked for as (the errors quote these).
LOOKED_FOR = {
    "unet": "BASE/unet/diffusion_pytorch_model.safetensors (or .bin)",
    "vae": "BASE/vae/diffusion_pytorch_model.safetensors (or .bin)",
    "text_encoder": "BASE/text_encoder/model.safetensors (or pytorch_model.bin)",
    "face_embedder": '--face (arcface_torch iresnet keys "conv1.weight", "layer1.0.bn1.weight", ..., or '
    'the paper\'s FaceNet "facenet.*"), or in a --pva file: nested ["face_net"], prefixes '
    '"face_net_train.facenet.", "face_embedder."',
    "id_former": 'in a --pva file: nested ["transform_network"] (the paper\'s TransformNetwork: "0.weight", '
    '"1.layers.0.self_attn.in_proj_weight", ..., "q_tokens", "pos_enc"), prefixes "trans_net.", "id_former."',
    "visual": 'in a --pva file: nested ["unet"] or prefix "unet.", keys "*.attn2.to_visual_q.weight", '
    '"*.attn2.to_visual_k.weight", "*.attn2.to_visual_v.weight"',
    "new1": 'in a --pva file: nested ["modifier_vec"] or ["modifier_token"], keys "tuned_embedding.modifier_vec", '
    '"new1_embedding"',
}
_SUPPLY = {
    "face_embedder": "pass --face ARCFACE (e.g. ms1mv3_arcface_r50.pth)",
    "id_former": "pass the checkpoint that has it as an earlier --pva (e.g. the stage-2 FPIP.bin a per-person "
    "finetune started from; later --pva files replace earlier ones part by part)",
    "visual": "pass a checkpoint that has them as another --pva, or --allow-init visual",
    "new1": "pass a checkpoint that has it as another --pva, or --allow-init new1",
}

_WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
    "pytorch_model.fp16.bin",
)
_CONFIG_KEYS = {
    "unet": ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "cross_attention_dim",
             "attention_head_dim", "use_linear_projection", "down_block_types", "up_block_types"),
    "vae": ("block_out_channels", "latent_channels", "layers_per_block"),
    "text_encoder": ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act"),
}
# Flat keys of a PVA file: prefix -> part (first match wins); `unet.` is split into visual + unet.
_FLAT_PREFIXES = (
    ("face_net_train.facenet.", "face_embedder"),
    ("face_embedder.", "face_embedder"),
    ("trans_net.", "id_former"),
    ("id_former.", "id_former"),
    ("unet.", "unet"),
    ("text_encoder.", "text_encoder"),
    ("vae.", "vae"),
)
_FLAT_TOKENS = ("tuned_embedding.modifier_vec", "new1_embedding")
_UNUSABLE = {
    "clip_vision_model": "a CLIP image encoder (the paper's CLIP-A/CLIP-S variants)",
    "clip_vision_projection": "a CLIP image projection (the paper's CLIP-A/CLIP-S variants)",
}
_DEPRECATED_ATTENTION = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")
_DEPRECATED_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


class WeightsError(ValueError):
    """A part is missing, does not fit, or a file holds what the exporter cannot use."""


@dataclass
class Source:
    """Where one part (or some of its tensors) came from."""

    file: Path
    where: str  # '' (the whole file), '["unet"]' (a nested key), '"unet.*"' (a flat prefix), ...
    count: int
    notes: list[str] = field(default_factory=list)

    def place(self) -> str:
        """The file and where in it."""
        return f"{self.file} {self.where}" if self.where else str(self.file)

    def __str__(self) -> str:
        extra = "".join(f"; {n}" for n in self.notes)
        return f"{self.place()} ({_tensors(self.count)}{extra})"


@dataclass
class LoadedWeights:
    """`build_stack` weights plus where each part came from."""

    weights: dict[str, Any]
    sources: dict[str, list[Source]]  # part -> the sources applied, in order
    initialized: dict[str, str]  # part -> what init it keeps (allow_init, or not loaded at all)
    notes: list[str]  # other lines worth printing (tokenizer, scheduler)

    def summary(self) -> list[str]:
        """One line per part: `unet: /x/unet/diffusion_pytorch_model.safetensors (686 tensors)`, ..."""
        lines = []
        for part in PARTS:
            label = LABELS[part]
            if part in self.initialized:
                lines.append(f"{label}: {self.initialized[part]}")
                continue
            sources = self.sources[part]
            if part == "new1":
                lines.append(f"{label}: {sources[-1].place()}" + "".join(f"; {n}" for n in sources[-1].notes))
            elif part in BASE_PARTS:
                replaced = "".join(f"; {s.count} replaced by {s.place()}" for s in sources[1:])
                lines.append(f"{label}: {sources[0]}{replaced}")
            else:
                lines.append(f"{label}: {sources[-1]}")
        return lines + self.notes


@dataclass
class _Piece:
    part: str
    tensors: dict[str, torch.Tensor]
    source: Source


# ---------------------------------------------------------------------------- reference modules
_REFERENCES: dict[str, dict[str, dict[str, tuple[int, ...]]]] = {}


def _reference(config: PvaConfig) -> dict[str, dict[str, tuple[int, ...]]]:
    """Key -> shape of every part of the exporter's modules for `config` (cached by config name)."""
    if config.name not in _REFERENCES:
        _REFERENCES[config.name] = _build_reference(config)
    return _REFERENCES[config.name]


def _build_reference(config: PvaConfig) -> dict[str, dict[str, tuple[int, ...]]]:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from .attention import VISUAL_PROJECTIONS, install_pva
    from .face import IResNet
    from .id_former import IdFormer
    from .text import build_clip

    def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in module.state_dict().items()}

    # NOTE: on the meta device: names and shapes only, no memory, no init cost.
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config.unet)
        install_pva(unet)
        full = shapes(unet)
        return {
            "unet": {k: v for k, v in full.items() if not any(p in k for p in VISUAL_PROJECTIONS)},
            "visual": {k: v for k, v in full.items() if any(p in k for p in VISUAL_PROJECTIONS)},
            "vae": shapes(AutoencoderKL(**config.vae)),
            "text_encoder": shapes(build_clip(config.text)),
            "face_embedder": shapes(IResNet(config.face)),
            "id_former": shapes(IdFormer(config.id_former, config.face.embedding_dim, config.hidden_size)),
            "new1": {"": (config.hidden_size,)},
        }


# ---------------------------------------------------------------------------- reading files
def _torch_load(path: Path) -> Any:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        # NOTE: mmap needs the zip format (torch >= 1.6); a legacy pickle loads without it.
        return torch.load(str(path), map_location="cpu", weights_only=True)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    try:
        data = load_file(str(path)) if path.suffix == ".safetensors" else _torch_load(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported with its path
        raise WeightsError(f"{path}: cannot read it as a state dict ({type(err).__name__}: {err})") from err
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: holds a {type(data).__name__}, not a dict of tensors")
    return data


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """A flat state dict from a safetensors or torch pickle file (a `state_dict` entry is unwrapped)."""
    data = _read(path)
    if isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    others = sorted(k for k, v in data.items() if not isinstance(v, torch.Tensor))
    if others:
        raise WeightsError(f"{path}: not a flat state dict: entries {_few(others)} are no tensors")
    return data


def _few(keys: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(f'"{k}"' for k in list(keys)[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _tensors(n: int) -> str:
    return f"{n} tensor{'' if n == 1 else 's'}"


def _contents(data: dict[str, Any]) -> str:
    """What a PVA file holds, for error messages."""
    nested = [f'["{k}"] ({_tensors(len(v))})' if isinstance(v, dict) else f'["{k}"] (a tensor {list(v.shape)})'
              for k, v in data.items()
              if isinstance(v, dict) or (isinstance(v, torch.Tensor) and "." not in k)]
    flat = [k for k, v in data.items() if isinstance(v, torch.Tensor) and "." in k]
    prefixes = sorted({k.split(".", 1)[0] + ("." if "." in k else "") for k in flat})
    parts = []
    if nested:
        parts.append("nested " + ", ".join(nested))
    if flat:
        parts.append(f"{len(flat)} flat tensors under " + ", ".join(f'"{p}"' for p in prefixes))
    return "; ".join(parts) or "nothing"


# ---------------------------------------------------------------------------- normalisation
def _normalize(part: str, tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]):
    """Map a part's keys onto the exporter's names; returns (tensors, notes)."""
    notes: list[str] = []
    if part == "text_encoder":
        tensors = {k.removeprefix("text_model."): v for k, v in tensors.items()}
        if "embeddings.position_ids" in tensors and "embeddings.position_ids" not in expected:
            # NOTE: transformers < 4.31 saved this buffer (0..76); newer CLIP computes it.
            tensors.pop("embeddings.position_ids")
            notes.append("dropped the position_ids buffer")
    elif part == "vae":
        renamed = {}
        for key, value in tensors.items():
            m = _DEPRECATED_ATTENTION.match(key)
            new = f"{m[1]}.{_DEPRECATED_NAMES[m[2]]}.{m[3]}" if m and key not in expected else key
            renamed[new] = value
        count = sum(1 for k in tensors if k not in renamed)
        if count:
            notes.append(f"{count} deprecated attention names (query/key/value/proj_attn) renamed")
        tensors = renamed
    elif part == "face_embedder":
        if tensors and all(k.startswith("facenet.") for k in tensors):
            tensors = {k.removeprefix("facenet."): v for k, v in tensors.items()}
        counters = [k for k in expected if k.endswith(".num_batches_tracked") and k not in tensors]
        if counters and tensors:
            # NOTE: BatchNorm's step counter is unused at inference; some saved state dicts leave it out.
            tensors = {**tensors, **{k: torch.tensor(0) for k in counters}}
            notes.append(f"{len(counters)} absent num_batches_tracked counters set to 0")
    elif part == "id_former":
        if any(k.startswith(("0.", "1.")) for k in tensors):
            tensors = {("proj." + k[2:] if k.startswith("0.") else "encoder." + k[2:] if k.startswith("1.") else k): v
                       for k, v in tensors.items()}
    return tensors, notes


def _check_fit(piece: _Piece, expected: dict[str, tuple[int, ...]], whole: bool, size: str) -> None:
    """Keys and shapes of a piece against the exporter's module; a whole piece must have every key."""
    label = LABELS[piece.part]
    tensors = piece.tensors
    problems = []
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys, e.g. {_few(unexpected)}")
    if whole:
        missing = sorted(set(expected) - set(tensors))
        if missing:
            problems.append(f"{len(missing)} of its {len(expected)} keys missing, e.g. {_few(missing)}")
    shapes = [f'"{k}" is {list(v.shape)}, expected {list(expected[k])}'
              for k, v in tensors.items() if k in expected and tuple(v.shape) != expected[k]]
    if shapes:
        problems.append(f"{len(shapes)} shapes differ: " + "; ".join(shapes[:3]))
    if problems:
        raise WeightsError(f"{label}: {piece.source.place()} does not fit the exporter's {label} "
                           f"(size {size}): " + "; ".join(problems))


# ---------------------------------------------------------------------------- the sources
def _check_config(directory: Path, expected: dict[str, Any], keys: Iterable[str]) -> None:
    path = directory / "config.json"
    if not path.is_file():
        raise WeightsError(f"{path}: missing (a diffusers directory has config.json next to each model's weights)")
    found = json.loads(path.read_text())
    for key in keys:
        want, got = expected[key], found.get(key)
        if isinstance(want, tuple):
            got = tuple(got) if isinstance(got, list) else got
        if got != want:
            raise WeightsError(f"{path}: {key} = {got!r}, this exporter builds {want!r}")


def _base_pieces(config: PvaConfig, base: Path) -> tuple[list[_Piece], list[str]]:
    if not base.is_dir():
        raise WeightsError(f"--base {base}: not a directory (expected a diffusers layout: unet/, vae/, text_encoder/)")
    pieces, notes = [], []
    for part, folder, expected in (("unet", "unet", config.unet), ("vae", "vae", config.vae),
                                   ("text_encoder", "text_encoder", config.text)):
        directory = base / folder
        if not directory.is_dir():
            have = sorted(p.name for p in base.iterdir())
            raise WeightsError(f"{LABELS[part]}: {directory} missing ({LOOKED_FOR[part]}; {base} holds {have})")
        _check_config(directory, expected, _CONFIG_KEYS[part])
        file = next((directory / n for n in _WEIGHT_FILES if (directory / n).is_file()), None)
        if file is None:
            have = sorted(p.name for p in directory.iterdir())
            raise WeightsError(f"{LABELS[part]}: no weights file in {directory} (looked for "
                               f"{', '.join(_WEIGHT_FILES)}; it holds {have})")
        tensors = load_state(file)
        pieces.append(_Piece(part, tensors, Source(file, "", len(tensors))))
    scheduler = base / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():
        found = json.loads(scheduler.read_text())
        keys = [k for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")
                if k in found]
        for key in keys:
            if found[key] != config.scheduler[key]:
                raise WeightsError(f"{scheduler}: {key} = {found[key]!r}, this exporter's scheduler has "
                                   f"{config.scheduler[key]!r}")
        notes.append(f"scheduler: {scheduler} agrees on {', '.join(keys) or 'nothing it sets'} "
                     f"(the manifest's scheduler block is pva/config.py's)")
    else:
        notes.append(f"scheduler: {base / 'scheduler'} absent (the manifest's scheduler block is pva/config.py's)")
    tokenizer = base / "tokenizer"
    notes.append(f"tokenizer: {tokenizer} {'present, not read' if tokenizer.is_dir() else 'absent, not needed'} "
                 f"(prompts are tokenized by pva/tokenizer.py, the CLIP BPE the worker ports)")
    return pieces, notes


def _face_pieces(face: Path) -> list[_Piece]:
    tensors = load_state(face)
    where = '"facenet.*"' if tensors and all(k.startswith("facenet.") for k in tensors) else ""
    return [_Piece("face_embedder", tensors, Source(face, where, len(tensors)))]


def _one_tensor(path: Path, key: str, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    tensors = [v for v in value.values() if isinstance(v, torch.Tensor)]
    if len(value) != 1 or len(tensors) != 1:
        raise WeightsError(f'<new1>: {path} ["{key}"] holds {len(value)} entries ({_few(list(value))}); '
                           f"expected one token's embedding")
    return tensors[0]


def _pva_pieces(path: Path) -> tuple[list[_Piece], dict[str, Any]]:
    """The parts one PVA file holds (nested paper format, flat prefixes, or both)."""
    data = _read(path)
    pieces: list[_Piece] = []
    unexpected: list[str] = []
    flat: dict[tuple[str, str], dict[str, torch.Tensor]] = {}

    def add_unet(tensors: dict[str, torch.Tensor], where: str) -> None:
        visual = {k: v for k, v in tensors.items() if "to_visual_" in k}
        other = {k: v for k, v in tensors.items() if k not in visual}
        if visual:
            pieces.append(_Piece("visual", visual, Source(path, where, len(visual))))
        if other:
            pieces.append(_Piece("unet", other, Source(path, where, len(other))))

    for key, value in data.items():
        if key in _UNUSABLE:
            if len(value):
                unexpected.append(f'["{key}"] ({_tensors(len(value))}: {_UNUSABLE[key]})')
        elif isinstance(value, dict) and not all(isinstance(v, torch.Tensor) for v in value.values()):
            unexpected.append(f'["{key}"] (a dict that is not a state dict)')
        elif key in ("modifier_vec", "modifier_token"):
            pieces.append(_Piece("new1", {"": _one_tensor(path, key, value)}, Source(path, f'["{key}"]', 1)))
        elif key in _FLAT_TOKENS and isinstance(value, torch.Tensor):
            pieces.append(_Piece("new1", {"": value}, Source(path, f'"{key}"', 1)))
        elif key == "transform_network" and isinstance(value, dict):
            pieces.append(_Piece("id_former", value, Source(path, f'["{key}"]', len(value))))
        elif key == "face_net" and isinstance(value, dict):
            where = f'["{key}"]' + (' "facenet.*"' if value and all(k.startswith("facenet.") for k in value) else "")
            pieces.append(_Piece("face_embedder", value, Source(path, where, len(value))))
        elif key == "unet" and isinstance(value, dict):
            add_unet(value, f'["{key}"]')
        elif isinstance(value, torch.Tensor):
            match = next(((p, part) for p, part in _FLAT_PREFIXES if key.startswith(p)), None)
            if match is None:
                unexpected.append(f'"{key}"')
            else:
                flat.setdefault(match, {})[key[len(match[0]):]] = value
        else:
            unexpected.append(f'["{key}"] ({type(value).__name__})')
    if unexpected:
        raise WeightsError(f"{path}: holds what this exporter cannot use: {', '.join(unexpected[:5])}"
                           + (f" (+{len(unexpected) - 5} more)" if len(unexpected) > 5 else "")
                           + "; it exports ID-conditioned PVA (ArcFace + id former + to_visual_q/k/v + <new1>)")
    for (prefix, part), tensors in flat.items():
        if part == "unet":
            add_unet(tensors, f'"{prefix}*"')
        else:
            pieces.append(_Piece(part, tensors, Source(path, f'"{prefix}*"', len(tensors))))
    seen: dict[str, _Piece] = {}
    for piece in pieces:
        if piece.part in seen:
            raise WeightsError(f"{LABELS[piece.part]}: {path} holds it twice, as {seen[piece.part].source.where} "
                               f"and as {piece.source.where}")
        seen[piece.part] = piece
    return pieces, data


def load_checkpoints(
    config: PvaConfig,
    base: Path | None = None,
    pva: Sequence[Path] = (),
    face: Path | None = None,
    allow_init: Iterable[str] = (),
    partial: bool = False,
) -> LoadedWeights:
    """Every part from `base`, then `face`, then each `pva` file in order (a later source replaces an
    earlier one's part; for unet/vae/text encoder, the tensors it holds).

    Every part must be found unless it is in `allow_init` (see `INITS`), or `partial` is set (the
    trainer: parts it trains may start from `build_stack`'s init). Raises `WeightsError`."""
    allow = set(allow_init)
    if allow - set(INITS):
        raise WeightsError(f"--allow-init: {sorted(allow - set(INITS))} cannot be initialised; "
                           f"only {sorted(INITS)} can (a missing id former or face embedder has no sensible init)")
    reference = _reference(config)
    pieces: list[_Piece] = []
    looked_in: list[str] = []
    notes: list[str] = []
    if base is not None:
        base_pieces, notes = _base_pieces(config, base)
        pieces += base_pieces
        looked_in.append(f"--base {base}")
    if face is not None:
        pieces += _face_pieces(face)
        looked_in.append(f"--face {face}")
    for path in pva:
        pva_pieces, data = _pva_pieces(path)
        pieces += pva_pieces
        looked_in.append(f"--pva {path} ({_contents(data)})")

    tensors: dict[str, dict[str, torch.Tensor]] = {}
    sources: dict[str, list[Source]] = {}
    for piece in pieces:
        expected = reference[piece.part]
        piece.tensors, extra = _normalize(piece.part, piece.tensors, expected)
        piece.source.notes += extra
        if piece.part == "new1":
            value = piece.tensors[""]
            if value.numel() != config.hidden_size:
                raise WeightsError(f"<new1>: {piece.source.place()} has {list(value.shape)}, "
                                   f"expected {config.hidden_size} values")
            piece.tensors = {"": value.detach().float().reshape(-1)}
        else:
            # A base part's first source must be whole; later ones replace some of its tensors.
            whole = piece.part not in BASE_PARTS or piece.part not in tensors
            _check_fit(piece, expected, whole, config.name)
        if piece.part in BASE_PARTS and piece.part in tensors:
            tensors[piece.part].update(piece.tensors)
            sources[piece.part].append(piece.source)
        else:
            if piece.part in sources:
                piece.source.notes.append(f"replaces {sources[piece.part][-1].place()}")
            tensors[piece.part] = dict(piece.tensors)
            sources[piece.part] = [piece.source]

    initialized: dict[str, str] = {}
    for part in PARTS:
        if part in tensors:
            if part in allow:
                notes.append(f"--allow-init {part}: unused, {LABELS[part]} loaded")
            continue
        if part in allow:
            initialized[part] = INITS[part]
        elif partial:
            initialized[part] = "not loaded (build_stack's init)"
        else:
            supply = f"; {_SUPPLY[part]}" if part in _SUPPLY else ""
            raise WeightsError(f"{LABELS[part]}: missing. Looked in: {'; '.join(looked_in) or 'nothing (no files given)'}. "
                               f"Looked for: {LOOKED_FOR[part]}{supply}")

    weights: dict[str, Any] = {part: t for part, t in tensors.items() if part not in ("visual", "new1")}
    if "visual" in tensors:
        weights["unet"] = {**weights.get("unet", {}), **tensors["visual"]}
    if "new1" in tensors:
        weights["new1_embedding"] = tensors["new1"][""]
    return LoadedWeights(weights, sources, initialized, notes)


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
