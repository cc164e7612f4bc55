"""The latent diffusion U-Net of the ``oct_latent_diffusion`` bundle."""
from __future__ import annotations

import torch
from monai.networks.nets import DiffusionModelUNet

__all__ = ["LatentDiffusionUNet"]


class LatentDiffusionUNet(DiffusionModelUNet):
    """MONAI ``DiffusionModelUNet`` (``spatial_dims=3``) on latent videos ``[B, 4, T', h, w]`` that stores its
    latent ``scale_factor`` as a buffer (in ``state_dict``: the weight file and training checkpoints carry it).

    ``forward(x, timesteps=None, ...)``: the noise / velocity prediction ``[B, out_channels, T', h, w]``. Without
    ``timesteps`` (model-zoo shape checks, TorchScript tracing) it predicts at ``num_train_timesteps - 1``, the
    first step of sampling from pure noise. ``scale_factor`` 0 means "not set yet" (the trainer computes it).
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 4, out_channels: int = 4,
                 num_train_timesteps: int = 1000, scale_factor: float | None = None, **kwargs) -> None:
        super().__init__(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs)
        self.num_train_timesteps = int(num_train_timesteps)
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor or 0.0)))
        self.size_multiple = 2 ** (len(self.block_out_channels) - 1)

    @property
    def scale(self) -> float:
        """The latent scale factor (1.0 while unset)."""
        s = float(self.scale_factor)
        return s if s > 0 else 1.0

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | None = None, context=None, class_labels=None,
                down_block_additional_residuals=None, mid_block_additional_residual=None) -> torch.Tensor:
        if any(int(s) % self.size_multiple for s in x.shape[2:]):
            raise ValueError(f"latent size {tuple(x.shape[2:])} must be divisible by {self.size_multiple} in every "
                             f"axis for a U-Net with {len(self.block_out_channels)} levels (choose the number of "
                             f"frames / B-scan size accordingly, or fewer levels)")
        if timesteps is None:
            timesteps = torch.full((x.shape[0],), self.num_train_timesteps - 1, device=x.device, dtype=torch.long)
        return super().forward(x, timesteps, context, class_labels, down_block_additional_residuals,
                               mid_block_additional_residual)
