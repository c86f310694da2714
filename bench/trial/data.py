"""CIFAR-10 from its official files, and a writer of CIFAR-format files.

Two layouts are read, each from a folder or from its `.tar.gz`:
- binary: `cifar-10-batches-bin/data_batch_{1..5}.bin`, `test_batch.bin`; each
  record is 1 label byte + 3072 pixel bytes (R, G, B planes of 32x32).
- python: `cifar-10-batches-py/data_batch_{1..5}`, `test_batch`; pickles of
  {'data': uint8 (n, 3072), 'labels': [n ints]}.

Gluon's own CIFAR10 dataset re-downloads every file whose SHA-1 is not the
official one, so it cannot load anything else (tests, the demo); this module
reads the files itself and records whether they are the official CIFAR-10.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.errors import BenchError
from bench.fileio import write_bytes_atomic

if TYPE_CHECKING:
    import numpy.typing as npt

IMAGE_SHAPE = (3, 32, 32)
RECORD_PIXELS = 3 * 32 * 32
TRAIN_BATCHES = tuple(f'data_batch_{i}' for i in range(1, 6))
TEST_BATCH = 'test_batch'
BIN_FOLDER = 'cifar-10-batches-bin'
PY_FOLDER = 'cifar-10-batches-py'
BIN_ARCHIVE = 'cifar-10-binary.tar.gz'
PY_ARCHIVE = 'cifar-10-python.tar.gz'
DOWNLOAD_URL = 'https://www.cs.toronto.edu/~kriz/' + BIN_ARCHIVE

# Published checksums of the official files: SHA-1 of the binary batches (as
# MXNet's CIFAR10 dataset checks them) and MD5 of the python batches (as
# torchvision checks them).
OFFICIAL_BIN_SHA1 = {
    'data_batch_1': 'aadd24acce27caa71bf4b10992e9e7b2d74c2540',
    'data_batch_2': 'c0ba65cce70568cd57b4e03e9ac8d2a5367c1795',
    'data_batch_3': '1dd00a74ab1d17a6e7d73e185b69dbf31242f295',
    'data_batch_4': 'aab85764eb3584312d3c7f65fd2fd016e36a258e',
    'data_batch_5': '26e2849e66a845b7f1e4614ae70f4889ae604628',
    'test_batch': '67eb016db431130d61cd03c7ad570b013799c88c',
}
OFFICIAL_PY_MD5 = {
    'data_batch_1': 'c99cafc152244af753f735de768cd75f',
    'data_batch_2': 'd4bba439e000b95fd0a9bffe97cbabec',
    'data_batch_3': '54ebc095f3ab1f0389bbae665268c751',
    'data_batch_4': '634d18415352ddfa80567beed471001a',
    'data_batch_5': '482c414d41f54cd18b22e5b47cb7c3cb',
    'test_batch': '40351d587109b95175f43aff81a1287e',
}


# The original recipe's input normalisation (per RGB channel, of pixels in 0..1).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

# The digest that identifies the official CIFAR-10 in trial ids: computed from the
# published checksums above, so that the plan of a sweep on CIFAR-10 (its trial ids)
# is known before the files are on the machine. Only files whose every checksum
# matches get it; any other data is identified by a digest of its records.
OFFICIAL_DIGEST = hashlib.sha1(
    (
        'cifar10-official:'
        + ','.join(OFFICIAL_BIN_SHA1[name] for name in sorted(OFFICIAL_BIN_SHA1))
    ).encode()
).hexdigest()
TRAIN_IMAGES, TEST_IMAGES = 50000, 10000


class DataError(BenchError, RuntimeError):
    """Data that is missing or malformed; the message says what to do."""


class DataMissing(DataError):
    """No copy of the data set was found where the sweep points (and none was fetched)."""


@dataclass(frozen=True)
class DataIdentity:
    """What a result was trained on. `official` is True only for the published CIFAR-10 files."""

    name: str
    official: bool
    digest: str  # SHA-1 over every record in the binary layout; layout-independent
    layout: str  # 'bin' or 'py'
    source: str  # folder or archive the records came from
    train_images: int
    test_images: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def label(self) -> str:
        return 'CIFAR-10' if self.official else f'{self.name} (not CIFAR-10)'


@dataclass
class Dataset:
    train_images: np.ndarray  # uint8 (n, 3, 32, 32)
    train_labels: np.ndarray  # int32 (n,)
    test_images: np.ndarray
    test_labels: np.ndarray
    identity: DataIdentity

    @property
    def classes(self) -> int:
        return int(max(self.train_labels.max(), self.test_labels.max())) + 1


def default_root() -> str:
    """MXNet's usual data folder, without importing MXNet: $MXNET_HOME/datasets/cifar10."""
    home = os.environ.get('MXNET_HOME', os.path.join('~', '.mxnet'))
    return os.path.expanduser(os.path.join(home, 'datasets', 'cifar10'))


# ---------------------------------------------------------------- decoding


def decode_bin(blob: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    if len(blob) == 0 or len(blob) % (RECORD_PIXELS + 1):
        raise DataError(
            f'{name}: {len(blob)} bytes is not a whole number of CIFAR records '
            f'({RECORD_PIXELS + 1} bytes each); the file is truncated or not CIFAR'
        )
    records = np.frombuffer(blob, dtype=np.uint8).reshape(-1, RECORD_PIXELS + 1)
    return records[:, 1:].reshape((-1,) + IMAGE_SHAPE), records[:, 0].astype(np.int32)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The python layout is a pickle: allow the numpy classes it needs and nothing else."""

    _ALLOWED = {
        ('numpy.core.multiarray', '_reconstruct'),
        ('numpy', 'ndarray'),
        ('numpy', 'dtype'),
        ('numpy.core.multiarray', 'scalar'),
        ('_codecs', 'encode'),
    }

    def find_class(self, module: str, name: str) -> Callable[..., Any]:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'{module}.{name} is not allowed in a CIFAR batch')


def decode_py(blob: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _NumpyOnlyUnpickler(io.BytesIO(blob), encoding='bytes').load()
        batch = {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}
        data = np.asarray(batch['data'], dtype=np.uint8)
        labels = np.asarray(batch['labels'], dtype=np.int32)
    except Exception as error:  # any failure here means the file is not a CIFAR batch
        raise DataError(f'{name}: not a CIFAR python batch ({error})') from error
    if data.ndim != 2 or data.shape[1] != RECORD_PIXELS or len(labels) != len(data):
        raise DataError(
            f'{name}: expected data of shape (n, {RECORD_PIXELS}) and n labels, '
            f'found {data.shape} and {len(labels)}'
        )
    return data.reshape((-1,) + IMAGE_SHAPE), labels


def record_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """The binary layout's records for these images: what the identity digest is computed on."""
    records = np.empty((len(images), RECORD_PIXELS + 1), dtype=np.uint8)
    records[:, 0] = labels
    records[:, 1:] = images.reshape(len(images), RECORD_PIXELS)
    return records.tobytes()


# ---------------------------------------------------------------- finding files


def _folder_reader(folder: Path, suffix: str) -> tuple[str, Callable[[str], bytes]] | None:
    paths = {name: folder / f'{name}{suffix}' for name in TRAIN_BATCHES + (TEST_BATCH,)}
    if not all(path.is_file() for path in paths.values()):
        return None
    return str(folder), lambda name: paths[name].read_bytes()


def _archive_reader(archive: Path, suffix: str) -> tuple[str, Callable[[str], bytes]] | None:
    if not archive.is_file():
        return None
    try:
        with tarfile.open(archive, 'r:gz') as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            wanted = [f'{name}{suffix}' for name in TRAIN_BATCHES + (TEST_BATCH,)]
            missing = [name for name in wanted if name not in members]
            if missing:
                raise DataError(f'{archive} lacks {", ".join(missing)}: not a CIFAR-10 archive')
            blobs = {
                name: tar.extractfile(members[f'{name}{suffix}']).read()
                for name in TRAIN_BATCHES + (TEST_BATCH,)
            }
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DataError(
            f'{archive} cannot be read ({error}); delete it and fetch it again'
        ) from error
    return str(archive), blobs.__getitem__


def _locate(root: str | Path) -> tuple[str, str, Callable[[str], bytes]] | None:
    """(layout, source, read(name) -> bytes) for the first CIFAR-10 copy found under root."""
    root = Path(root)
    candidates = [
        ('bin', lambda: _folder_reader(root / BIN_FOLDER, '.bin')),
        ('bin', lambda: _folder_reader(root, '.bin')),
        ('py', lambda: _folder_reader(root / PY_FOLDER, '')),
        ('py', lambda: _folder_reader(root, '')),
        ('bin', lambda: _archive_reader(root / BIN_ARCHIVE, '.bin')),
        ('py', lambda: _archive_reader(root / PY_ARCHIVE, '')),
    ]
    for layout, find in candidates:
        found = find()
        if found is not None:
            return (layout,) + found
    return None


def missing_data_message(root: str | Path, cause: Exception | None = None) -> str:
    root = Path(root)
    lines = [
        f'CIFAR-10 was not found under {root}.',
        f'Expected one of: {root / BIN_FOLDER}/data_batch_1.bin ... test_batch.bin, '
        f'{root / PY_FOLDER}/data_batch_1 ... test_batch, {root / BIN_ARCHIVE} or '
        f'{root / PY_ARCHIVE}.',
    ]
    if cause:
        lines.append(f'Downloading it failed: {cause}.')
    lines.append(
        f'Fetch {DOWNLOAD_URL} and put it in {root} (no need to unpack it), '
        'or point the data root at your copy (data.root in the sweep file; '
        '--data-root for python -m bench.train).'
    )
    return '\n'.join(lines)


def download_cifar10(root: str | Path, url: str = DOWNLOAD_URL, timeout: float = 30) -> Path:
    """Fetch the official binary archive into root; raise DataError when the network says no."""
    target = Path(root) / BIN_ARCHIVE
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            blob = response.read()
    except (urllib.error.URLError, OSError) as error:
        raise DataMissing(missing_data_message(root, cause=error)) from error
    write_bytes_atomic(target, blob)
    return target


# ---------------------------------------------------------------- loading


def load_cifar10(
    root: str | Path | None = None, download: bool = True, name: str | None = None
) -> Dataset:
    """The CIFAR-10 copy under `root` (default: MXNet's data folder), with its identity.

    `name` labels data that is not the official CIFAR-10 (e.g. 'sklearn-digits');
    the official files are always named 'cifar10'.

    Where nothing is found it is downloaded when `download` is set and the network
    allows; otherwise a DataError names the file to fetch and the folder to put it in.
    """
    root = Path(root) if root is not None else Path(default_root())
    located = _locate(root)
    if located is None and download:
        download_cifar10(root)
        located = _locate(root)
    if located is None:
        raise DataMissing(missing_data_message(root))
    layout, source, read = located
    decode = decode_bin if layout == 'bin' else decode_py
    published, digest_of = (
        (OFFICIAL_BIN_SHA1, hashlib.sha1) if layout == 'bin' else (OFFICIAL_PY_MD5, hashlib.md5)
    )

    batches, official = {}, True
    records_digest = hashlib.sha1()
    for batch_name in TRAIN_BATCHES + (TEST_BATCH,):
        blob = read(batch_name)
        official = official and digest_of(blob).hexdigest() == published[batch_name]
        images, labels = decode(blob, f'{source}/{batch_name}')
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise DataError(
                f'{source}/{batch_name}: labels must be 0..255, found '
                f'{labels.min()}..{labels.max()}'
            )
        records_digest.update(record_bytes(images, labels))
        batches[batch_name] = (images, labels)

    train_images = np.concatenate([batches[n][0] for n in TRAIN_BATCHES])
    train_labels = np.concatenate([batches[n][1] for n in TRAIN_BATCHES])
    test_images, test_labels = batches[TEST_BATCH]
    identity = DataIdentity(
        name='cifar10' if official else (name or f'cifar-format data at {source}'),
        official=official,
        digest=OFFICIAL_DIGEST if official else records_digest.hexdigest(),
        layout=layout,
        source=source,
        train_images=len(train_images),
        test_images=len(test_images),
    )
    return Dataset(
        np.ascontiguousarray(train_images),
        train_labels,
        np.ascontiguousarray(test_images),
        test_labels,
        identity,
    )


# ---------------------------------------------------------------- writing


def _as_chw(images: npt.ArrayLike) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f'images must be uint8, got {images.dtype}')
    if images.shape[1:] == (32, 32, 3):
        images = images.transpose(0, 3, 1, 2)
    if images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f'images must be (n, 32, 32, 3) or (n, 3, 32, 32), got {images.shape}')
    return images


def write_cifar10(
    root: str | Path,
    train_images: npt.ArrayLike,
    train_labels: npt.ArrayLike,
    test_images: npt.ArrayLike,
    test_labels: npt.ArrayLike,
    layout: str = 'bin',
    archive: bool = False,
) -> Path:
    """Write CIFAR-format files under root, the way the official copy is laid out.

    The training images are spread over the five data_batch files. Returns the
    folder (or archive) written. Tests and the demo use it to make real files
    that go through the same loading code as CIFAR-10 itself.
    """
    root = Path(root)
    folder_name, suffix = (BIN_FOLDER, '.bin') if layout == 'bin' else (PY_FOLDER, '')
    if layout not in ('bin', 'py'):
        raise ValueError(f"layout must be 'bin' or 'py', got {layout!r}")
    train_images, test_images = _as_chw(train_images), _as_chw(test_images)
    chunks = zip(TRAIN_BATCHES, np.array_split(np.arange(len(train_images)), len(TRAIN_BATCHES)))
    parts = [(name, train_images[idx], np.asarray(train_labels)[idx]) for name, idx in chunks]
    parts.append((TEST_BATCH, test_images, np.asarray(test_labels)))

    def encode(images: np.ndarray, labels: np.ndarray) -> bytes:
        if layout == 'bin':
            return record_bytes(images, labels)
        return pickle.dumps(
            {
                'batch_label': 'written by bench.trial.data.write_cifar10',
                'labels': [int(x) for x in labels],
                'data': images.reshape(len(images), RECORD_PIXELS),
            },
            protocol=2,
        )

    files = {
        f'{folder_name}/{name}{suffix}': encode(images, labels) for name, images, labels in parts
    }
    if archive:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode='w:gz') as tar:
            for member, blob in files.items():
                info = tarfile.TarInfo(member)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
        return write_bytes_atomic(
            root / (BIN_ARCHIVE if layout == 'bin' else PY_ARCHIVE), buffer.getvalue()
        )
    for member, blob in files.items():
        write_bytes_atomic(root / member, blob)
    return root / folder_name


def official_identity(root: str | Path | None = None) -> DataIdentity:
    """The identity the official CIFAR-10 gets when its files are loaded, known without
    them: what the plan of a sweep on CIFAR-10 is computed with before they are there."""
    root = Path(root) if root is not None else Path(default_root())
    return DataIdentity(
        name='cifar10',
        official=True,
        digest=OFFICIAL_DIGEST,
        layout='bin',
        source=f'{root} (not there yet)',
        train_images=TRAIN_IMAGES,
        test_images=TEST_IMAGES,
    )


def digits_arrays(
    test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits (8x8, 1797 images) as 32x32 RGB uint8 images:
    (train images, train labels, test images, test labels), the demo data set's content.

    The pixels are shifted and scaled so that, after the recipe's normalisation,
    every channel has mean 0 and standard deviation 1, as CIFAR-10's nearly has.
    Raw digits (black background) normalise to mean -0.9 and variance 3.5, and the
    ResNet v2 stem's BatchNorm never updates its running statistics under MXNet
    (they are updated in the backward pass, which that layer does not have): it
    evaluates as the identity, so on raw digits every v2 network evaluated far
    below how it trained.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = digits.images.repeat(4, axis=1).repeat(4, axis=2)  # 8x8 -> 32x32
    standardised = (gray - gray.mean()) / gray.std()
    images = np.stack(
        [
            np.clip(np.round(255.0 * (mean + std * standardised)), 0, 255)
            for mean, std in zip(CIFAR_MEAN, CIFAR_STD)
        ],
        axis=1,
    ).astype(np.uint8)
    labels = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = int(len(images) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return images[train], labels[train], images[test], labels[test]


def make_digits_dataset(root: str | Path, test_fraction: float = 0.2, seed: int = 0) -> Path:
    """The digits (digits_arrays) written as CIFAR-format files under root, once: a small
    real data set that ships inside a package, so the demo shows real learning with no
    download. Later calls reuse the files."""
    root = Path(root)
    if _locate(root) is not None:
        return root
    write_cifar10(root, *digits_arrays(test_fraction, seed))
    return root


DEMO_NAME = 'sklearn-digits'
# Named for its pixel statistics: folders written by earlier versions hold raw digits.
DEMO_FOLDER = Path('data') / 'demo-digits-cifar-stats'  # relative to the sweep file or cwd


def load_demo_digits(root: str | Path) -> Dataset:
    """The demo data set: the digits written (once) under root, loaded like CIFAR-10."""
    return load_cifar10(make_digits_dataset(root), download=False, name=DEMO_NAME)


def demo_digits_identity(root: str | Path) -> DataIdentity:
    """The identity load_demo_digits(root) gives, without writing anything: from the files
    where they are there, else computed from the digits in memory."""
    root = Path(root)
    if _locate(root) is not None:
        return load_cifar10(root, download=False, name=DEMO_NAME).identity
    train_images, train_labels, test_images, test_labels = digits_arrays()
    # The files hold the training records in order over five batches, then the test
    # batch: the digest load_cifar10 computes over them is this one.
    digest = hashlib.sha1(
        record_bytes(train_images, train_labels) + record_bytes(test_images, test_labels)
    ).hexdigest()
    return DataIdentity(
        name=DEMO_NAME,
        official=False,
        digest=digest,
        layout='bin',
        source=str(root / BIN_FOLDER),
        train_images=len(train_images),
        test_images=len(test_images),
    )
