"""Random-weight checkpoints written exactly as customers bring them (the loaders' test inputs).

- a diffusers `stable-diffusion-2-inpainting` directory (`unet/`, `vae/`, `text_encoder/` with
  `config.json` and safetensors or .bin weights, `scheduler/`, `tokenizer/`);
- the paper's `FPIP.bin` (github AtlantixJJ/PVA-CelebAHQ-IDI, lib/pva.py `simple_state_dict`, saved by
  script/pva_train.py): a NESTED dict `{"modifier_vec", "transform_network", "unet", "face_net"}` with
  the paper's own module classes' key names (`TransformNetwork`'s `0.`/`1.`, `FaceNet`'s `facenet.`);
- an arcface_torch iresnet state dict (`ms1mv3_arcface_r50.pth`).

`models/tests/test_weights.py` writes them at the `tiny` width; `scripts/full-size-smoke.sh` writes
them at full width and exports from them:

    python -m pva.checkpoints --size sd2 --out DIR [--seed N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from .face import IResNet
from .stack import PvaStack, build_stack


class TransformNetwork(nn.Sequential):
    """The paper's id former (lib/pva.py), as written there but for the head and feed-forward counts
    (the paper hard-codes 8 heads and PyTorch's default 2048: those of `sd2`)."""

    def __init__(self, in_dim: int, out_dim: int, heads: int, feedforward: int, num_layer: int, num_q_token: int = 10):
        enc_layer = nn.TransformerEncoderLayer(out_dim, heads, dim_feedforward=feedforward, dropout=0.1, batch_first=True)
        trans_enc = nn.TransformerEncoder(enc_layer, num_layer, nn.LayerNorm(out_dim), enable_nested_tensor=False)
        super().__init__(nn.Linear(in_dim, out_dim), trans_enc)
        self.num_q_token = num_q_token
        self.pos_enc = nn.Parameter(torch.randn(num_q_token, out_dim))
        self.q_tokens = nn.Parameter(torch.randn(num_q_token, in_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q_embed = self.q_tokens.unsqueeze(0).repeat(x.shape[0], 1, 1)
        x = super().forward(torch.cat([x, q_embed], 1))[:, -self.num_q_token :]
        return x + self.pos_enc.unsqueeze(0)


class FaceNet(nn.Module):
    """The paper's FaceNet wrapper (lib/face_net.py): the iresnet is `self.facenet`."""

    def __init__(self, face: IResNet) -> None:
        super().__init__()
        self.facenet = face
        self.face_pool = nn.AdaptiveAvgPool2d((112, 112))


def paper_source(size: str, seed: int) -> dict[str, Any]:
    """A stack of `size` whose every part differs from a fresh build: visual projections that are not
    copies of to_q/k/v, a trained-looking `<new1>`, the paper's TransformNetwork and FaceNet modules,
    and an ArcFace state dict."""
    torch.manual_seed(seed * 10 + 1)
    stack = build_stack(size, seed=seed)
    cfg = stack.config
    with torch.no_grad():
        for name, param in stack.unet.named_parameters():
            if "to_visual_" in name:
                param.copy_(torch.randn_like(param) * 0.05)
    paper_id_former = TransformNetwork(cfg.face.embedding_dim, cfg.hidden_size, cfg.id_former.heads,
                                       cfg.id_former.feedforward, cfg.id_former.layers).eval()
    face = FaceNet(IResNet(cfg.face)).eval()
    return {
        "stack": stack,
        "new1": torch.randn(cfg.hidden_size),
        "transform_network": paper_id_former,
        "face_net": face,
        "arcface": {k: v.clone() for k, v in stack.face_embedder.state_dict().items()},
    }


def visual_state(stack: PvaStack) -> dict[str, torch.Tensor]:
    """What the paper's `simple_state_dict` keeps of the UNet for tune_unet "PVA"."""
    return {k: v.clone() for k, v in stack.unet.state_dict().items() if "attn2" in k and "visual" in k}


def write_diffusers(root: Path, stack: PvaStack, fmt: str = "safetensors", legacy_names: bool = False) -> Path:
    """A diffusers directory of `stack`'s base parts (`fmt`: safetensors or bin). `legacy_names`: the
    VAE attention as old diffusers saved it (query/key/value/proj_attn) and CLIP's position_ids."""
    cfg = stack.config
    unet = {k: v for k, v in stack.unet.state_dict().items() if "to_visual_" not in k}
    vae = dict(stack.vae.state_dict())
    text = {f"text_model.{k}": v for k, v in stack.text_encoder.clip.state_dict().items()}
    if legacy_names:
        old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
        vae = {next((k.replace(f".{n}.", f".{o}.") for n, o in old.items() if "mid_block.attentions" in k
                     and f".{n}." in k), k): v for k, v in vae.items()}
        text["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    names = {"safetensors": ("diffusion_pytorch_model.safetensors", "model.safetensors"),
             "bin": ("diffusion_pytorch_model.bin", "pytorch_model.bin")}[fmt]
    parts = (("unet", unet, cfg.unet, names[0]), ("vae", vae, cfg.vae, names[0]),
             ("text_encoder", text, cfg.text, names[1]))
    for folder, state, config, file in parts:
        (root / folder).mkdir(parents=True)
        (root / folder / "config.json").write_text(json.dumps({"_class_name": folder, **config}))
        state = {k: v.contiguous() for k, v in state.items()}
        if fmt == "safetensors":
            save_file(state, str(root / folder / file))
        else:
            torch.save(state, root / folder / file)
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "PNDMScheduler",
                                                                          **cfg.scheduler}))
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.json").write_text("{}")
    return root


def write_fpip(path: Path, source: dict[str, Any], drop: tuple[str, ...] = (), **extra: Any) -> Path:
    """The paper's FPIP.bin: torch.save(simple_state_dict(...)), a nested dict (`drop`: entries to
    leave out, `extra`: entries to add)."""
    data = {
        "modifier_vec": source["new1"].clone(),
        "transform_network": source["transform_network"].state_dict(),
        "unet": visual_state(source["stack"]),
        "face_net": source["face_net"].state_dict(),
    }
    torch.save({**{k: v for k, v in data.items() if k not in drop}, **extra}, path)
    return path


def write_all(size: str, out: Path, seed: int = 0, log=print) -> dict[str, Path]:
    """A base directory, a stage-2 `FPIP.bin` (without `face_net`, so the ArcFace file supplies the
    face embedder) and an ArcFace file under `out`; returns their paths by export flag."""
    start = time.perf_counter()
    source = paper_source(size, seed)
    log(f"built a random {size} source in {time.perf_counter() - start:.1f} s")
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "base": write_diffusers(out / "stable-diffusion-2-inpainting", source["stack"]),
        "pva": write_fpip(out / "FPIP.bin", source, drop=("face_net",)),
        "face": out / "ms1mv3_arcface_r50.pth",
    }
    torch.save(source["arcface"], paths["face"])
    log(f"wrote {', '.join(str(p) for p in paths.values())} in {time.perf_counter() - start:.1f} s")
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pva.checkpoints", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "demo", "sd2"), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_all(args.size, args.out, args.seed)


if __name__ == "__main__":
    main()
