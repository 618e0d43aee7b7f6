"""airbench94's network (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024),
written here from the paper's description and constants, with its widths scaled by `width`
(airbench94: width 64, blocks of 64, 256, 256 channels):

    whitening conv 2x2 (3 -> 24, frozen) + bias, GELU
    -> 3 x [conv 3x3, max-pool 2, BN, GELU, conv 3x3, BN, GELU]  (widths w, 4w, 4w)
    -> global max pool -> times 1/9

The whitening conv's 24 filters are the eigenvectors of the 2x2 patch covariance of the training
images, each scaled by 1 / sqrt(eigenvalue + 5e-4), and their negatives (`fit_whitening`, called
once by the trainer on a fixed-seed sample of the training images). They are a buffer, never
trained; the bias trains for the first `whiten_bias_epochs` epochs (airbench: 3), then freezes.
The convolutions start as identities on their first c_in filters (`model.dirac`, on by default here).
BatchNorm's airbench settings (no trained scale, eps 1e-12, momentum 0.4) are train.* keys that
apply to every backbone (README "The airbench techniques").
"""

from __future__ import annotations

import torch
from torch import nn

from ccn.models.base import Backbone
from ccn.models.registry import register_backbone

WHITEN_EPS = 5e-4  # airbench's regulariser of the eigenvalues
WHITEN_KERNEL = 2
MIN_SIZE = 9  # 9 -> 8 after the whitening conv -> 4, 2, 1 after the poolings


class ConvGroup(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(c_out)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class Whitening(nn.Module):
    """A 2x2 convolution whose weights are fitted to the data, not trained (a buffer), plus a trained bias."""

    def __init__(self, channels: int = 3, kernel: int = WHITEN_KERNEL):
        super().__init__()
        dims = channels * kernel * kernel
        self.register_buffer("weight", torch.zeros(2 * dims, channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(2 * dims))
        self.out_channels = 2 * dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(x, self.weight, self.bias)

    @torch.no_grad()
    def fit(self, images: torch.Tensor, chunk: int = 500) -> None:
        """Set the filters from (N, C, H, W) normalised images: the eigenvectors of the uncentred
        covariance of all their k x k patches, scaled by 1/sqrt(eigenvalue + eps), and their negatives."""
        c, k = self.weight.shape[1], self.weight.shape[2]
        dims = c * k * k
        cov = torch.zeros(dims, dims, dtype=torch.float64)
        count = 0
        for part in images.split(chunk):  # the patches of 5,000 CIFAR images would take 230 MB at once
            patches = part.double().cpu().unfold(2, k, 1).unfold(3, k, 1)  # (n, C, H', W', k, k)
            flat = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, dims)
            cov += flat.T @ flat
            count += len(flat)
        values, vectors = torch.linalg.eigh(cov / max(1, count))  # ascending; vectors in columns
        order = torch.arange(dims - 1, -1, -1)  # largest eigenvalue first
        filters = (vectors[:, order].T / torch.sqrt(values[order].clamp_min(0) + WHITEN_EPS)[:, None])
        filters = filters.reshape(dims, c, k, k).float()
        self.weight.copy_(torch.cat([filters, -filters]).to(self.weight.device))


class AirbenchNet(Backbone):
    fits_to_data = True
    dirac_default = True  # airbench initialises every convolution as an identity on its first c_in filters
    min_input_side = MIN_SIZE  # the run plan (ccn.plan) refuses smaller images before anything is trained
    min_input_reason = "a 2x2 whitening conv, then three 2x2 poolings"

    def __init__(self, width: int = 64, whiten_bias_epochs: int = 3):
        super().__init__()
        if width < 1:
            raise ValueError(f"airbench width must be a positive integer, got {width}")
        self.whiten = Whitening()
        self.blocks = nn.Sequential(ConvGroup(self.whiten.out_channels, width), ConvGroup(width, 4 * width),
                                    ConvGroup(4 * width, 4 * width))
        self.act = nn.GELU()
        self.num_features = 4 * width
        self.feature_scale = 1 / 9  # airbench scales its logits by 1/9; before the linear head it is the same
        # parameters trained only for the first N epochs (the trainer sets their learning rate to 0 after)
        self.epochs_trained = {"whiten.bias": whiten_bias_epochs}

    def fit_to_data(self, images: torch.Tensor) -> None:
        """Data-dependent initialisation from normalised training images (see Backbone)."""
        self.whiten.fit(images)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < MIN_SIZE:  # a library caller's images; a run's plan refused them before training
            raise ValueError(f"airbench needs images of at least {MIN_SIZE}px ({self.min_input_reason}), "
                             f"got {tuple(x.shape[-2:])}")
        return self.blocks(self.act(self.whiten(x))).amax(dim=(2, 3)) * self.feature_scale


register_backbone("airbench")(AirbenchNet)
