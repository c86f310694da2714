"""The data set on the trial's device, and augmentation as a few array operations per batch.

The whole split is held on the device once, zero-padded by 4 pixels, as uint8.
A batch is one gather from it: the gather index encodes, per image, which image,
which 32x32 window of the padded 40x40 (the random crop) and whether columns run
backwards (the horizontal flip). No per-image Python, no worker processes.
"""

from __future__ import annotations

from collections.abc import Sequence

import mxnet as mx
import numpy as np

from bench.trial.data import CIFAR_MEAN, CIFAR_STD


class DeviceImages:
    """One split (train or test) on one device, ready to be cut into batches."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        ctx: mx.Context,
        pad: int = 4,
        mean: Sequence[float] = CIFAR_MEAN,
        std: Sequence[float] = CIFAR_STD,
    ) -> None:
        images = np.asarray(images, dtype=np.uint8)
        count, channels, height, width = images.shape
        self.count, self.pad, self.ctx = count, pad, ctx
        self.height, self.width = height, width
        padded_h, padded_w = height + 2 * pad, width + 2 * pad
        if count * channels * padded_h * padded_w >= 2**31:
            raise ValueError('data set too large for int32 gather indices; split it')
        padded = np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        self.flat = mx.nd.array(padded.reshape(-1), ctx=ctx, dtype='uint8')
        self.labels = mx.nd.array(labels, ctx=ctx, dtype='float32')
        self.image_stride = channels * padded_h * padded_w
        self.row_stride = padded_w
        rows = np.arange(height)
        cols = np.arange(width)
        self._channel_row_offsets = mx.nd.array(
            (
                np.arange(channels)[:, None, None] * padded_h * padded_w
                + rows[None, :, None] * padded_w
            )[None],
            ctx=ctx,
            dtype='int32',
        )
        self._cols = mx.nd.array(cols.reshape(1, 1, 1, width), ctx=ctx, dtype='int32')
        self._flip_cols = mx.nd.array(
            (width - 1 - 2 * cols).reshape(1, 1, 1, width), ctx=ctx, dtype='int32'
        )
        std = np.asarray(std, dtype=np.float32)
        # (x / 255 - mean) / std as one multiply and one add
        self._scale = mx.nd.array((1.0 / (255.0 * std)).reshape(1, -1, 1, 1), ctx=ctx)
        self._shift = mx.nd.array(
            (-np.asarray(mean, np.float32) / std).reshape(1, -1, 1, 1), ctx=ctx
        )

    def batch(
        self,
        indices: np.ndarray,
        row_offsets: np.ndarray,
        col_offsets: np.ndarray,
        flips: np.ndarray,
    ) -> tuple[mx.nd.NDArray, mx.nd.NDArray]:
        """Normalised float32 images (n, C, H, W) and their labels.

        row_offsets/col_offsets are each image's window corner in the padded image
        (0..2*pad; `pad` means no shift); flips says which images are mirrored.
        """
        indices = np.asarray(indices)
        base = (
            indices * self.image_stride
            + np.asarray(row_offsets) * self.row_stride
            + np.asarray(col_offsets)
        ).astype(np.int32)
        n = len(indices)
        base = mx.nd.array(base.reshape(n, 1, 1, 1), ctx=self.ctx, dtype='int32')
        flips = mx.nd.array(
            np.asarray(flips, dtype=np.int32).reshape(n, 1, 1, 1), ctx=self.ctx, dtype='int32'
        )
        cols = mx.nd.broadcast_add(self._cols, mx.nd.broadcast_mul(flips, self._flip_cols))
        gather = mx.nd.broadcast_add(mx.nd.broadcast_add(base, self._channel_row_offsets), cols)
        pixels = mx.nd.take(self.flat, gather).astype('float32')
        images = mx.nd.broadcast_add(mx.nd.broadcast_mul(pixels, self._scale), self._shift)
        labels = mx.nd.take(self.labels, mx.nd.array(indices, ctx=self.ctx, dtype='int32'))
        return images, labels

    def plain_batch(self, indices: np.ndarray) -> tuple[mx.nd.NDArray, mx.nd.NDArray]:
        """Images without augmentation (for evaluation): the centre window, unflipped."""
        centred = np.full(len(indices), self.pad)
        return self.batch(indices, centred, centred, np.zeros(len(indices), dtype=bool))
