"""The identity former ("TransformNetwork" of the PVA paper): R face embeddings -> 10 identity tokens.

The 10 learned query tokens live in the face-embedding space (512-d) and are appended to the R
embeddings; the R + 10 vectors are projected to D, run through a post-norm transformer encoder with a
final LayerNorm, and the last 10 outputs plus a learned positional term are the identity tokens.

NOTE: the attention is written out (matmul + softmax) instead of using `nn.MultiheadAttention`:
the legacy exporter bakes the sequence length (hence R) into `nn.MultiheadAttention`, and its fast
path is not traceable. Parameter names match `nn.TransformerEncoder`, and `load_paper_state_dict`
maps the paper checkpoint's `nn.Sequential` names (`0.*`, `1.*`) onto them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import IdFormerConfig


class SelfAttention(nn.Module):
    """Multi-head self-attention with `nn.MultiheadAttention`'s parameter names."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads != 0:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        head_dim = width // self.heads
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(batch, length, self.heads, head_dim).transpose(1, 2) for t in (q, k, v))
        scores = torch.matmul(q, k.transpose(-1, -2)) * (head_dim**-0.5)
        out = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))


class EncoderLayer(nn.Module):
    """Post-norm transformer encoder layer (ReLU feed-forward), as `nn.TransformerEncoderLayer`."""

    def __init__(self, width: int, heads: int, feedforward: int) -> None:
        super().__init__()
        self.self_attn = SelfAttention(width, heads)
        self.linear1 = nn.Linear(width, feedforward)
        self.linear2 = nn.Linear(feedforward, width)
        self.norm1 = nn.LayerNorm(width, eps=1e-5)
        self.norm2 = nn.LayerNorm(width, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.self_attn(x))
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class Encoder(nn.Module):
    """A stack of encoder layers followed by a LayerNorm."""

    def __init__(self, width: int, config: IdFormerConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(width, config.heads, config.feedforward) for _ in range(config.layers)
        )
        self.norm = nn.LayerNorm(width, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class IdFormer(nn.Module):
    """`embeddings` [B, R, 512] -> `id_tokens` [B, num_queries, D]; R is free (1..5 in practice)."""

    def __init__(self, config: IdFormerConfig, embedding_dim: int, width: int) -> None:
        super().__init__()
        self.num_queries = config.num_queries
        self.proj = nn.Linear(embedding_dim, width)
        self.encoder = Encoder(width, config)
        self.q_tokens = nn.Parameter(torch.randn(config.num_queries, embedding_dim))
        self.pos_enc = nn.Parameter(torch.zeros(config.num_queries, width))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        queries = self.q_tokens.unsqueeze(0).expand(embeddings.shape[0], -1, -1)
        x = self.encoder(self.proj(torch.cat([embeddings, queries], dim=1)))
        return x[:, -self.num_queries :] + self.pos_enc.unsqueeze(0)

    def load_paper_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a state dict in the paper's `TransformNetwork` naming (`0.` = projection, `1.` = encoder)."""
        renamed = {}
        for key, value in state.items():
            if key.startswith("0."):
                key = "proj." + key[2:]
            elif key.startswith("1."):
                key = "encoder." + key[2:]
            renamed[key] = value
        self.load_state_dict(renamed, strict=True)
