"""Reading and writing CIFAR-format files, the data identity, and on-device augmentation."""

import hashlib
import io
import pickle
import urllib.error
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from bench.trial import data as data_module
from bench.trial.batches import epoch_plan, eval_batches
from bench.trial.data import (
    CIFAR_MEAN,
    CIFAR_STD,
    DataError,
    load_cifar10,
    make_digits_dataset,
    record_bytes,
    write_cifar10,
)
from bench.trial.gluon.augment import DeviceImages

from .conftest import make_images


@pytest.fixture
def arrays():
    train = make_images(50, seed=3)
    test = make_images(12, seed=4)
    return train + test


@pytest.mark.parametrize('layout', ['bin', 'py'])
@pytest.mark.parametrize('archive', [False, True])
def test_written_files_load_back_identically(tmp_path, arrays, layout, archive):
    train_images, train_labels, test_images, test_labels = arrays
    written = write_cifar10(tmp_path, *arrays, layout=layout, archive=archive)
    assert written.exists()
    loaded = load_cifar10(tmp_path, download=False)
    np.testing.assert_array_equal(loaded.train_images, train_images)
    np.testing.assert_array_equal(loaded.train_labels, train_labels)
    np.testing.assert_array_equal(loaded.test_images, test_images)
    np.testing.assert_array_equal(loaded.test_labels, test_labels)
    assert loaded.identity.layout == layout
    assert loaded.identity.official is False
    assert 'not CIFAR-10' in loaded.identity.label
    assert (loaded.identity.train_images, loaded.identity.test_images) == (50, 12)


def test_binary_layout_matches_the_official_record_format(tmp_path, arrays):
    write_cifar10(tmp_path, *arrays)
    blob = (tmp_path / 'cifar-10-batches-bin' / 'test_batch.bin').read_bytes()
    assert len(blob) == 12 * 3073
    test_images, test_labels = arrays[2], arrays[3]
    assert blob[0] == test_labels[0]
    assert blob[1 : 1 + 1024] == test_images[0, 0].tobytes()  # red plane first
    assert blob[3073] == test_labels[1]


def test_identity_digest_does_not_depend_on_the_layout(tmp_path, arrays):
    write_cifar10(tmp_path / 'a', *arrays, layout='bin')
    write_cifar10(tmp_path / 'b', *arrays, layout='py', archive=True)
    assert (
        load_cifar10(tmp_path / 'a', download=False).identity.digest
        == load_cifar10(tmp_path / 'b', download=False).identity.digest
    )
    changed = list(arrays)
    changed[3] = (changed[3] + 1) % 10
    write_cifar10(tmp_path / 'c', *changed)
    assert (
        load_cifar10(tmp_path / 'c', download=False).identity.digest
        != load_cifar10(tmp_path / 'a', download=False).identity.digest
    )


@pytest.mark.parametrize('layout', ['bin', 'py'])
def test_files_with_the_published_checksums_are_recognised_as_cifar10(
    tmp_path, arrays, monkeypatch, layout
):
    folder = write_cifar10(tmp_path, *arrays, layout=layout)
    suffix, table, algorithm = (
        ('.bin', 'OFFICIAL_BIN_SHA1', hashlib.sha1)
        if layout == 'bin'
        else ('', 'OFFICIAL_PY_MD5', hashlib.md5)
    )
    published = {
        name: algorithm((folder / f'{name}{suffix}').read_bytes()).hexdigest()
        for name in getattr(data_module, table)
    }
    monkeypatch.setattr(data_module, table, published)
    identity = load_cifar10(tmp_path, download=False).identity
    assert identity.official and identity.name == 'cifar10' and identity.label == 'CIFAR-10'

    # One changed byte and it is no longer CIFAR-10.
    batch = folder / f'data_batch_3{suffix}'
    blob = bytearray(batch.read_bytes())
    blob[len(blob) // 2] ^= 1  # a pixel byte in either layout
    batch.write_bytes(bytes(blob))
    assert load_cifar10(tmp_path, download=False).identity.official is False


def test_writer_accepts_channels_last_images(tmp_path, arrays):
    train_images, train_labels, test_images, test_labels = arrays
    write_cifar10(
        tmp_path,
        train_images.transpose(0, 2, 3, 1),
        train_labels,
        test_images.transpose(0, 2, 3, 1),
        test_labels,
    )
    np.testing.assert_array_equal(load_cifar10(tmp_path, download=False).train_images, train_images)
    with pytest.raises(ValueError, match='uint8'):
        write_cifar10(
            tmp_path, train_images.astype(np.float32), train_labels, test_images, test_labels
        )


def test_missing_data_names_the_file_and_the_folder(tmp_path):
    with pytest.raises(DataError) as error:
        load_cifar10(tmp_path / 'empty', download=False)
    message = str(error.value)
    assert str(tmp_path / 'empty') in message
    assert 'cifar-10-binary.tar.gz' in message and 'data_batch_1.bin' in message


def test_offline_download_failure_explains_what_to_fetch(tmp_path, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise urllib.error.URLError('network is unreachable')

    monkeypatch.setattr(data_module.urllib.request, 'urlopen', refuse)
    with pytest.raises(DataError) as error:
        load_cifar10(tmp_path, download=True)
    assert 'network is unreachable' in str(error.value)
    assert 'cifar-10-binary.tar.gz' in str(error.value)
    assert not list(tmp_path.iterdir())


def test_download_puts_the_archive_in_the_root_and_loads_it(tmp_path, arrays, monkeypatch):
    archive = write_cifar10(tmp_path / 'server', *arrays, archive=True)
    payload = archive.read_bytes()
    requested = []

    def fake_urlopen(url, timeout):
        requested.append(url)
        return io.BytesIO(payload)

    monkeypatch.setattr(data_module.urllib.request, 'urlopen', fake_urlopen)
    loaded = load_cifar10(tmp_path / 'root', download=True)
    assert requested == [data_module.DOWNLOAD_URL]
    assert (tmp_path / 'root' / 'cifar-10-binary.tar.gz').read_bytes() == payload
    assert loaded.identity.train_images == 50


def test_truncated_and_malicious_files_are_refused(tmp_path, arrays):
    folder = write_cifar10(tmp_path / 'bin', *arrays)
    (folder / 'data_batch_2.bin').write_bytes(b'\x00' * 3000)
    with pytest.raises(DataError, match='truncated'):
        load_cifar10(tmp_path / 'bin', download=False)

    folder = write_cifar10(tmp_path / 'py', *arrays, layout='py')

    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / 'pwned',))

    (folder / 'test_batch').write_bytes(pickle.dumps({'data': Evil(), 'labels': []}))
    with pytest.raises(DataError, match='not a CIFAR python batch'):
        load_cifar10(tmp_path / 'py', download=False)
    assert not (tmp_path / 'pwned').exists()


def test_digits_demo_dataset_is_real_small_data(tmp_path):
    root = make_digits_dataset(tmp_path)
    first = (root / 'cifar-10-batches-bin' / 'data_batch_1.bin').stat().st_mtime_ns
    make_digits_dataset(tmp_path)  # reuses the files
    assert (root / 'cifar-10-batches-bin' / 'data_batch_1.bin').stat().st_mtime_ns == first
    data = load_cifar10(root, download=False, name='sklearn-digits')
    assert data.identity.train_images + data.identity.test_images == 1797
    assert data.identity.label == 'sklearn-digits (not CIFAR-10)'
    assert set(np.unique(data.train_labels)) == set(range(10))
    # After the recipe's normalisation every channel has mean 0 and std 1, as CIFAR-10
    # nearly has (the v2 stem's BN evaluates as the identity under MXNet).
    pixels = np.concatenate([data.train_images, data.test_images]) / 255.0
    for channel, (mean, std) in enumerate(zip(CIFAR_MEAN, CIFAR_STD)):
        normalised = (pixels[:, channel] - mean) / std
        assert abs(normalised.mean()) < 0.02 and abs(normalised.std() - 1) < 0.02
    assert len(np.unique(data.train_images[:, 0])) > 10  # not a binary image


def _reference_augment(images, indices, rows, cols, flips, pad=4):
    padded = np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad))).astype(np.float32)
    out = np.stack([padded[i, :, r : r + 32, c : c + 32] for i, r, c in zip(indices, rows, cols)])
    out[flips] = out[flips][..., ::-1]
    mean = np.array(CIFAR_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.array(CIFAR_STD, np.float32).reshape(1, 3, 1, 1)
    return (out / 255.0 - mean) / std


def test_device_batches_crop_flip_and_normalise_like_the_reference():
    images, labels = make_images(30, seed=5)
    device = DeviceImages(images, labels, mx.cpu())
    rng = np.random.default_rng(0)
    indices = rng.permutation(30)[:16]
    rows, cols = rng.integers(0, 9, size=(2, 16))
    flips = rng.random(16) < 0.5
    x, y = device.batch(indices, rows, cols, flips)
    np.testing.assert_allclose(
        x.asnumpy(), _reference_augment(images, indices, rows, cols, flips), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(y.asnumpy(), labels[indices])

    plain, _ = device.plain_batch(np.arange(5))
    np.testing.assert_allclose(
        plain.asnumpy(),
        _reference_augment(images, range(5), [4] * 5, [4] * 5, np.zeros(5, bool)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_epoch_plan_is_seeded_and_drops_the_partial_batch():
    first = epoch_plan(np.random.default_rng(7), 100, 32)
    again = epoch_plan(np.random.default_rng(7), 100, 32)
    assert len(first) == 3
    for a, b in zip(first, again):
        for part_a, part_b in zip(a, b):
            np.testing.assert_array_equal(part_a, part_b)
    seen = np.concatenate([batch[0] for batch in first])
    assert len(set(seen)) == 96
    no_aug = epoch_plan(np.random.default_rng(7), 100, 32, random_crop=False, random_flip=False)
    assert all((b[1] == 4).all() and (b[2] == 4).all() and not b[3].any() for b in no_aug)
    assert [len(b) for b in eval_batches(100, 32)] == [32, 32, 32, 4]


def test_record_bytes_round_trip():
    images, labels = make_images(3)
    decoded, decoded_labels = data_module.decode_bin(record_bytes(images, labels), 'x')
    np.testing.assert_array_equal(decoded, images)
    np.testing.assert_array_equal(decoded_labels, labels)
