"""The face embedder: an ArcFace-style iresnet mapping aligned 112x112 crops to 512-d features.

The structure and parameter names follow InsightFace's `arcface_torch` iresnet (conv stem,
IBasicBlocks of BN-Conv-BN-PReLU-Conv-BN with a strided second conv, four stride-2 stages, then
BN -> dropout -> fc -> BN), so that an ArcFace checkpoint (e.g. `ms1mv3_arcface_r50`) loads with
`load_state_dict` unchanged. Only the layer counts and stage widths come from the config.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import FaceConfig

_BN_EPS = 1e-5


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation residual block: BN, conv, BN, PReLU, strided conv, BN, plus the shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=_BN_EPS)
        self.conv1 = _conv3x3(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=_BN_EPS)
        self.prelu = nn.PReLU(cout)
        self.conv2 = _conv3x3(cout, cout, stride)
        self.bn3 = nn.BatchNorm2d(cout, eps=_BN_EPS)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(cout, eps=_BN_EPS),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """ArcFace iresnet: `faces` [N, 3, 112, 112] in [-1, 1] -> `embeddings` [N, 512] (unnormalised)."""

    def __init__(self, config: FaceConfig) -> None:
        super().__init__()
        if config.crop_size % 16 != 0:
            raise ValueError(f"crop size {config.crop_size} is not divisible by 16")
        widths = config.widths
        self.conv1 = _conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0], eps=_BN_EPS)
        self.prelu = nn.PReLU(widths[0])
        cin = widths[0]
        for index, (count, width) in enumerate(zip(config.layers, widths), start=1):
            blocks = [IBasicBlock(cin, width, stride=2)]
            blocks += [IBasicBlock(width, width, stride=1) for _ in range(count - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
            cin = width
        self.bn2 = nn.BatchNorm2d(cin, eps=_BN_EPS)
        self.dropout = nn.Dropout(p=0.0)
        spatial = config.crop_size // 16
        self.fc = nn.Linear(cin * spatial * spatial, config.embedding_dim)
        self.features = nn.BatchNorm1d(config.embedding_dim, eps=_BN_EPS)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(faces)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def randomize_batch_norms(module: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm random running statistics and affine terms.

    A freshly built BatchNorm in eval mode is the identity; random statistics make the random-init
    model exercise the normalisation arithmetic that the exported graph must reproduce.
    """
    for bn in module.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            n = bn.num_features
            with torch.no_grad():
                bn.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                bn.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                bn.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                bn.bias.copy_(torch.randn(n, generator=generator) * 0.1)
