"""The graph-level wrappers: modules whose `forward` takes exactly CONTRACT.md's inputs.

Each wrapper holds a built model and adapts its calling convention; the exporter exports these and
the tests compare the exported ONNX graphs against them.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn


class UnetGraph(nn.Module):
    """`sample, timestep, encoder_hidden_states, id_tokens, id_switch, adapter` -> `noise_pred`."""

    def __init__(self, unet: UNet2DConditionModel) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        id_tokens: torch.Tensor,
        id_switch: torch.Tensor,
        adapter: torch.Tensor,
    ) -> torch.Tensor:
        kwargs = {"id_tokens": id_tokens, "id_switch": id_switch, "adapter": adapter}
        return self.unet(
            sample, timestep, encoder_hidden_states, cross_attention_kwargs=kwargs, return_dict=False
        )[0]


class VaeEncoderGraph(nn.Module):
    """`image` [B, 3, H, W] in [-1, 1] -> `latent_mean` [B, 4, h, w], the UNSCALED posterior mean."""

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        moments = self.vae.encoder(image)
        if self.vae.quant_conv is not None:
            moments = self.vae.quant_conv(moments)
        # The moments are [mean ; logvar] along channels.
        return moments[:, : self.vae.config.latent_channels]


class VaeDecoderGraph(nn.Module):
    """`latent` [B, 4, h, w] (unscaled) -> `image` [B, 3, H, W], roughly [-1, 1]."""

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent, return_dict=False)[0]
