"""The data set on the trial's device as uint8, and each batch augmented there in one gather.

The same arithmetic as the Gluon backend's DeviceImages (bench/trial/gluon/augment.py):
the split is zero-padded by 4 pixels once; a batch's gather index encodes, per image,
which image, which 32x32 window (the random crop) and whether columns run backwards
(the flip); then (x / 255 - mean) / std as one multiply and one add. Given the same
plan, both backends see the same float32 pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from bench.trial.data import CIFAR_MEAN, CIFAR_STD


class DeviceImages:
    """One split (train or test) on one torch device, ready to be cut into batches."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        device: str | torch.device,
        pad: int = 4,
        mean: Sequence[float] = CIFAR_MEAN,
        std: Sequence[float] = CIFAR_STD,
        channels_last: bool = False,
    ) -> None:
        images = np.asarray(images, dtype=np.uint8)
        count, channels, height, width = images.shape
        self.count, self.pad, self.device = count, pad, torch.device(device)
        self.channels_last = channels_last
        padded_h, padded_w = height + 2 * pad, width + 2 * pad
        padded = np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        self.flat = torch.from_numpy(padded.reshape(-1)).to(self.device)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)
        self.image_stride = channels * padded_h * padded_w
        self.row_stride = padded_w
        rows, cols = np.arange(height), np.arange(width)
        self._channel_rows = self._on_device(
            (
                np.arange(channels)[:, None, None] * padded_h * padded_w
                + rows[None, :, None] * padded_w
            )[None]
        )
        self._cols = self._on_device(cols.reshape(1, 1, 1, width))
        self._flip_cols = self._on_device((width - 1 - 2 * cols).reshape(1, 1, 1, width))
        std = np.asarray(std, dtype=np.float32)
        self._scale = torch.from_numpy((1.0 / (255.0 * std)).reshape(1, -1, 1, 1)).to(self.device)
        self._shift = torch.from_numpy(
            (-np.asarray(mean, np.float32) / std).reshape(1, -1, 1, 1)
        ).to(self.device)

    def _on_device(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64)).to(self.device)

    def batch(
        self,
        indices: np.ndarray,
        row_offsets: np.ndarray,
        col_offsets: np.ndarray,
        flips: np.ndarray,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float32 images (n, C, H, W) and their int64 labels on the device."""
        indices = np.asarray(indices)
        n = len(indices)
        base = (
            (
                indices * self.image_stride
                + np.asarray(row_offsets) * self.row_stride
                + np.asarray(col_offsets)
            )
            .astype(np.int64)
            .reshape(n, 1, 1, 1)
        )
        flips = np.asarray(flips, dtype=np.int64).reshape(n, 1, 1, 1)
        # Three small host arrays cross to the device per batch; the gather runs there.
        base, flips, picked = (
            torch.from_numpy(a).to(self.device, non_blocking=True)
            for a in (base, flips, indices.astype(np.int64))
        )
        gather = base + self._channel_rows + self._cols + flips * self._flip_cols
        images = self.flat[gather].float() * self._scale + self._shift
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, self.labels[picked]

    def plain_batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Images without augmentation (for evaluation): the centre window, unflipped."""
        centred = np.full(len(indices), self.pad)
        return self.batch(indices, centred, centred, np.zeros(len(indices), dtype=bool))
