"""The PyTorch trial backend: the same data, loop, checkpoints and records as Gluon's."""

import gc
import json

import mxnet as mx
import numpy as np
import pytest

torch = pytest.importorskip('torch', reason='the torch extra is not installed')

from bench.train import main as train_main  # noqa: E402
from bench.trial.batches import epoch_plan  # noqa: E402
from bench.trial.checkpoint import latest_checkpoint  # noqa: E402
from bench.trial.data import load_cifar10  # noqa: E402
from bench.trial.gluon.augment import DeviceImages as GluonImages  # noqa: E402
from bench.trial.gluon.trainer import GluonSession  # noqa: E402
from bench.trial.loop import TrainingDiverged, train_epoch  # noqa: E402
from bench.trial.pytorch import trainer as torch_trainer  # noqa: E402
from bench.trial.pytorch.augment import DeviceImages  # noqa: E402
from bench.trial.pytorch.trainer import CHECKPOINT_FILE, TorchSession, train  # noqa: E402
from bench.trial.recipe import Recipe, TrialSpec  # noqa: E402
from models.kernels.torch_ops import torch_kernel_status  # noqa: E402
from models.pytorch import load_gluon_parameters  # noqa: E402

REAL_DEVICE_FOR = torch_trainer.device_for


@pytest.fixture(autouse=True)
def on_the_cpu(monkeypatch):
    """Every training here runs on the CPU, also on a machine with GPUs: results there
    are bit-exact (cuDNN's autotuning and TF32 are not)."""
    monkeypatch.setattr(torch_trainer, 'device_for', lambda num_gpus=None: torch.device('cpu'))


def torch_spec(attention='eca', model='cifar_resnet8_v1', **recipe_changes):
    recipe = dict(epochs=2, batch_size=16, lr_decay_epochs=(1,), backend='torch')
    recipe.update(recipe_changes)
    return TrialSpec(model, attention, seed=3, recipe=Recipe(**recipe))


def train_one_batch(session):
    """One step on the first 16 training images, centred and unflipped."""
    return session.train_batch(list(range(16)), [4] * 16, [4] * 16, [False] * 16)


@pytest.fixture
def data(tiny_cifar_root):
    return load_cifar10(tiny_cifar_root, download=False)


def test_both_backends_cut_the_same_float32_pixels_from_a_plan(data):
    plan = epoch_plan(np.random.default_rng(0), len(data.train_images), 16)
    ours = DeviceImages(data.train_images, data.train_labels, 'cpu')
    reference = GluonImages(data.train_images, data.train_labels, mx.cpu())
    for step in plan[:3]:
        x, y = ours.batch(*step)
        gx, gy = reference.batch(*step)
        np.testing.assert_array_equal(x.numpy(), gx.asnumpy())
        np.testing.assert_array_equal(y.numpy(), gy.asnumpy().astype(np.int64))
    indices = np.arange(5)
    np.testing.assert_array_equal(
        ours.plain_batch(indices)[0].numpy(), reference.plain_batch(indices)[0].asnumpy()
    )
    channels_last = DeviceImages(
        data.train_images, data.train_labels, 'cpu', channels_last=True
    ).batch(*plan[0])[0]
    assert channels_last.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(channels_last.numpy(), ours.batch(*plan[0])[0].numpy())


@pytest.mark.parametrize(
    'model,attention', [('cifar_resnet8_v1', 'se'), ('cifar_resnet8_v2', 'gct')]
)
def test_a_session_on_gluon_weights_evaluates_and_trains_its_first_batch_as_gluon(
    data, model, attention
):
    """Same weights, same batch: the same evaluation and the same first training loss.
    (Later steps drift apart at float32 rounding, which training amplifies: see
    docs/backends.md for how the two are compared over whole runs.)"""
    spec = torch_spec(attention, model)
    gluon_session = GluonSession(
        TrialSpec(model, attention, seed=3, recipe=Recipe(epochs=2, batch_size=16)),
        data,
        [mx.cpu()],
    )
    gluon_session.net(mx.nd.zeros((1, 3, 32, 32)))
    session = TorchSession(spec, data, 'cpu')
    load_gluon_parameters(session.net, gluon_session.net)
    np.testing.assert_allclose(session.evaluate(), gluon_session.evaluate(), rtol=1e-5)
    plan = epoch_plan(np.random.default_rng(0), len(data.train_images), 16)[:1]
    ours, reference = train_epoch(session, plan, 0), train_epoch(gluon_session, plan, 0)
    np.testing.assert_allclose(ours, reference, rtol=1e-5)


def test_training_records_every_metric_and_what_ran(data, tmp_path):
    history = train(torch_spec(), data, checkpoint_dir=tmp_path)
    assert [m['epoch'] for m in history] == [1, 2]
    assert [m['lr'] for m in history] == [0.003, pytest.approx(0.0003)]
    assert all(np.isfinite(m['val_loss']) and 0 <= m['val_acc'] <= 1 for m in history)
    assert (latest_checkpoint(tmp_path) / CHECKPOINT_FILE).is_file()
    session = TorchSession(torch_spec(), data, 'cpu')
    assert session.describe() == {'devices': 'cpu', 'kernels': f'torch {torch.__version__}'}
    assert session.threads == torch.get_num_threads()


@pytest.mark.parametrize('attention,optimizer', [('gct', 'adam'), ('se', 'nag'), ('none', 'sgd')])
def test_two_epochs_equal_one_plus_resume_plus_one_bit_for_bit(
    data, tmp_path, attention, optimizer
):
    spec = torch_spec(attention, optimizer=optimizer, lr=0.01)
    straight = train(spec, data, checkpoint_dir=tmp_path / 'straight')

    class Killed(Exception):
        pass

    def kill_after_first(metrics, _path):
        if metrics['epoch'] == 1:
            raise Killed

    with pytest.raises(Killed):
        train(spec, data, checkpoint_dir=tmp_path / 'cut', on_epoch=kill_after_first)
    resumed = train(spec, data, checkpoint_dir=tmp_path / 'cut')
    for key in ('train_loss', 'train_acc', 'val_loss', 'val_acc', 'lr'):
        assert resumed[1][key] == straight[1][key], key
    a = torch.load(latest_checkpoint(tmp_path / 'straight') / CHECKPOINT_FILE)
    b = torch.load(latest_checkpoint(tmp_path / 'cut') / CHECKPOINT_FILE)
    for name, value in a['model'].items():
        assert torch.equal(value, b['model'][name]), name


def test_a_non_finite_loss_stops_with_epoch_and_batch(data):
    with pytest.raises(TrainingDiverged, match='at epoch 1, batch'):
        train(torch_spec(lr=1e12, optimizer='sgd'), data)


def test_mixed_precision_and_bad_devices_are_refused_with_what_to_change(data, monkeypatch):
    with pytest.raises(ValueError, match='amp_bfloat16 needs a GPU, but this trial runs on cpu'):
        TorchSession(torch_spec(precision='amp_bfloat16'), data, 'cpu')
    with pytest.raises(ValueError, match='amp_float16 needs a GPU'):
        torch_trainer.check_precision(
            Recipe(backend='torch', precision='amp_float16'), torch.device('cpu')
        )
    capped = []
    monkeypatch.setattr(
        torch.cuda,
        'set_per_process_memory_fraction',
        lambda fraction, device: capped.append((fraction, device)),
    )
    assert torch_trainer.trial_devices(0.5, ['3']) == [torch.device('cuda', 0)]
    assert capped == [(0.5, 0)]  # half a card: half its memory
    assert torch_trainer.trial_devices(1, ['3']) == [torch.device('cuda', 0)]
    assert capped == [(0.5, 0)]
    assert torch_trainer.trial_devices(0, []) == [torch.device('cpu')]
    with pytest.raises(torch_trainer.DeviceError, match='one GPU, but Ray assigned 2'):
        torch_trainer.trial_devices(2, ['0', '1'])
    if not torch.cuda.is_available():
        with pytest.raises(torch_trainer.DeviceError, match='1 GPU asked for but 0 visible'):
            REAL_DEVICE_FOR(1)


def test_command_line_trains_with_the_torch_backend(tiny_cifar_root, tmp_path, capsys):
    output = tmp_path / 'history.json'
    assert (
        train_main(
            [
                '--backend',
                'torch',
                '--model',
                'cifar_resnet8_v2',
                '--gct',
                '--data-root',
                str(tiny_cifar_root),
                '--num-epochs',
                '1',
                '--batch-size',
                '16',
                '--num-gpus',
                '0',
                '--quiet',
                '--output',
                str(output),
            ]
        )
        == 0
    )
    saved = json.loads(output.read_text())
    assert saved['spec']['recipe']['backend'] == 'torch'
    assert 'on cpu (torch)' in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_code:
        train_main(
            [
                '--backend',
                'torch',
                '--precision',
                'amp_bfloat16',
                '--num-gpus',
                '0',
                '--data-root',
                str(tiny_cifar_root),
                '--quiet',
            ]
        )
    assert exit_code.value.code == 2
    assert 'amp_bfloat16 needs a GPU' in capsys.readouterr().err


@pytest.mark.slow
def test_compiled_networks_train_the_same_epochs(data):
    """torch.compile is a switch: the same numbers to float32 rounding, on the CPU too."""
    spec = torch_spec('se', epochs=1)
    eager = train(spec, data, device=torch.device('cpu'))
    compiled = train(torch_spec('se', epochs=1, compile=True), data, device=torch.device('cpu'))
    for key in ('train_loss', 'val_loss'):
        assert compiled[0][key] == pytest.approx(eager[0][key], rel=1e-3), key
    # The count the session reads to know that inductor skipped CUDA graphs is real:
    # a graph compiled for them on the CPU is run without them, and counted.
    skips = torch_trainer.cudagraph_skips()
    torch.compile(lambda x: x * 2 + 1, mode='reduce-overhead')(torch.ones(3))
    assert torch_trainer.cudagraph_skips() == skips + 1


class CompilerStandIn:
    """torch.compile's stand-in: the network runs as it is, except where `fail` says."""

    def __init__(self, fail):
        self.fail, self.calls = fail, 0

    def __call__(self, network, mode=None):
        def compiled(*args, **kwargs):
            self.calls += 1
            return self.fail(self.calls, lambda: network(*args, **kwargs))

        return compiled


@pytest.fixture
def cuda_graph_mode(monkeypatch):
    """The CPU session compiles as a GPU's does: with CUDA graphs."""
    monkeypatch.setitem(torch_trainer.COMPILE_MODES, 'cpu', 'reduce-overhead')


def assert_falls_back_to_eager(
    data, monkeypatch, capsys, stand_in, where, failure, attention, epochs=1
):
    """A trial compiled by `stand_in` says once that compiling failed in `where` with
    `failure` and trains the eager trial's epochs, bit for bit."""
    eager = train(torch_spec(attention, epochs=epochs), data, device=torch.device('cpu'))
    monkeypatch.setattr(torch, 'compile', stand_in)
    capsys.readouterr()
    spec = torch_spec(attention, epochs=epochs, compile=True)
    fallen_back = train(spec, data, device=torch.device('cpu'))
    said = (
        f'torch.compile (mode {torch_trainer.compile_mode("cpu")}) failed on cpu in {where}: '
        f'{failure}; this trial trains without compiling'
    )
    assert capsys.readouterr().out.count(said) == 1
    assert len(fallen_back) == len(eager) == epochs
    for epoch, (ours, reference) in enumerate(zip(fallen_back, eager)):
        for key in ('train_loss', 'train_acc', 'val_loss', 'val_acc'):
            assert ours[key] == reference[key], (epoch, key)


def test_compile_chooses_cuda_graphs_on_gpus_and_falls_back_with_a_message(
    data, monkeypatch, capsys
):
    """On a GPU `compile: true` is torch.compile's CUDA-graph mode (a small network's step
    is bound by kernel launches); where compiling or capturing fails, the trial says so
    once and trains eagerly: the eager numbers, not a failed trial."""
    from bench.trial.pytorch.trainer import TorchSession, compile_mode

    assert compile_mode(torch.device('cuda', 0)) == 'reduce-overhead'
    assert compile_mode(torch.device('cpu')) == 'default'

    def fails_when_called(call, forward):
        raise RuntimeError('CUDA graph capture failed (a stand-in)\nmore lines')

    assert_falls_back_to_eager(
        data,
        monkeypatch,
        capsys,
        CompilerStandIn(fails_when_called),
        'a training step',
        'RuntimeError: CUDA graph capture failed (a stand-in)',
        'gct',
    )
    session = TorchSession(torch_spec('gct', epochs=1, compile=True), data, 'cpu')
    train_one_batch(session)
    described = session.describe()
    assert 'eager (compiling failed)' in described['kernels']
    # Eager on the CPU, the attention took the fused kernels, and the record says which.
    if torch_kernel_status().loaded:
        assert described['kernels'].endswith('+ fused attention CPU kernels')
        assert described['kernel_isa'] in ('avx512', 'avx2', 'baseline')


@pytest.mark.parametrize('failing_call', [2, 3])
def test_capture_failing_after_the_warm_up_step_falls_back_from_the_same_statistics(
    data, monkeypatch, capsys, cuda_graph_mode, failing_call
):
    """CUDA graph trees warm up on a step's first call and capture on the second: a
    capture that fails there, after its forward pass has moved BatchNorm's running
    statistics, falls back to eager, and the failed step is retried from the statistics
    as they were: the eager run's numbers, bit for bit."""

    def capture_fails(call, forward):
        out = forward()
        if call == failing_call:
            raise RuntimeError('operation not permitted when stream is capturing (a stand-in)')
        return out

    assert_falls_back_to_eager(
        data,
        monkeypatch,
        capsys,
        CompilerStandIn(capture_fails),
        'a training step',
        'RuntimeError: operation not permitted when stream is capturing (a stand-in)',
        'gct',
    )


@pytest.mark.parametrize('failing_evaluation', [1, 2])
def test_a_compiled_evaluation_that_fails_falls_back_with_a_message(
    data, monkeypatch, capsys, cuda_graph_mode, failing_evaluation
):
    """Inference compiles and captures graphs of its own, not necessarily in the first
    evaluation: a failure in any evaluation falls back."""
    batches_per_evaluation = 3  # 40 test images in batches of 16

    def inference_fails(call, forward):
        if torch.is_inference_mode_enabled():
            inference_fails.calls += 1
            if inference_fails.calls > (failing_evaluation - 1) * batches_per_evaluation:
                raise RuntimeError('operation not permitted when stream is capturing (stand-in)')
        return forward()

    inference_fails.calls = 0
    assert_falls_back_to_eager(
        data,
        monkeypatch,
        capsys,
        CompilerStandIn(inference_fails),
        'an evaluation',
        'RuntimeError: operation not permitted when stream is capturing (stand-in)',
        'se',
        epochs=2,
    )
    # The record says that the trial trained compiled until then.
    inference_fails.calls = 0
    session = TorchSession(torch_spec('se', epochs=1, compile=True), data, 'cpu')
    for _ in range(3):
        train_one_batch(session)
    for _ in range(failing_evaluation):
        session.evaluate()
    assert session.describe()['kernels'].startswith(
        f'torch {torch.__version__} compiled for 3 steps, then eager (compiling failed in '
        'an evaluation)'
    )


def test_a_compiled_evaluation_sees_one_batch_shape_and_the_eager_numbers(
    data, monkeypatch, cuda_graph_mode
):
    """The short last test batch would be a second compiled (and captured) graph: it is
    filled up to the batch size, and the filling's outputs are dropped."""
    shapes = []

    def records_shapes(call, forward):
        out = forward()
        shapes.append(tuple(out.shape))
        return out

    eager = TorchSession(torch_spec('gct', epochs=1), data, 'cpu')
    monkeypatch.setattr(torch, 'compile', CompilerStandIn(records_shapes))
    compiled = TorchSession(torch_spec('gct', epochs=1, compile=True), data, 'cpu')
    assert len(data.test_images) % 16  # the last batch is short
    # The last batch's images go through the convolutions at another batch size, which
    # oneDNN may block differently (float32 rounding; 1e-5 as the other evaluations).
    np.testing.assert_allclose(compiled.evaluate(), eager.evaluate(), rtol=1e-5)
    assert set(shapes) == {(16, 10)}


def test_graphs_inductor_runs_without_cuda_graphs_are_said_once_and_recorded(
    data, monkeypatch, capsys, cuda_graph_mode
):
    """Where inductor skips CUDA graphs (it only warns, and runs that graph's kernels
    launch by launch), the trial says so once, with inductor's reason, and its record
    says it."""
    from torch._inductor.cudagraph_utils import log_cudagraph_skip_and_bump_counter

    def skips_graphs(call, forward):
        if call in (1, 2, 5):  # two training steps' graphs and an evaluation's
            log_cudagraph_skip_and_bump_counter(
                'skipping cudagraphs due to mutated inputs (2 instances). Found from: \n  File x'
            )
        return forward()

    monkeypatch.setattr(torch, 'compile', CompilerStandIn(skips_graphs))
    session = TorchSession(torch_spec('eca', epochs=1, compile=True), data, 'cpu')
    capsys.readouterr()
    for _ in range(4):
        train_one_batch(session)
    session.evaluate()
    assert capsys.readouterr().out.splitlines() == [
        'CUDA graphs skipped on cpu in training: skipping cudagraphs due to mutated inputs '
        '(2 instances); inductor runs that graph without them (slower on small networks)'
    ]
    assert (
        'compiled (reduce-overhead, CUDA graphs skipped in training)'
        in (session.describe()['kernels'])
    )

    # A skip first seen in an evaluation, after the steps that prove compiling, counts too.
    def skips_inference_graphs(call, forward):
        return skips_graphs(5 if torch.is_inference_mode_enabled() else 0, forward)

    monkeypatch.setattr(torch, 'compile', CompilerStandIn(skips_inference_graphs))
    session = TorchSession(torch_spec('eca', epochs=1, compile=True), data, 'cpu')
    for _ in range(4):
        train_one_batch(session)
    assert 'CUDA graphs skipped' not in capsys.readouterr().out
    session.evaluate()
    assert capsys.readouterr().out.count('CUDA graphs skipped on cpu in evaluation') == 1
    assert 'CUDA graphs skipped in evaluation' in session.describe()['kernels']
    # Graphs that keep their CUDA graphs are recorded as compiled with them.
    monkeypatch.setattr(torch, 'compile', CompilerStandIn(lambda call, forward: forward()))
    session = TorchSession(torch_spec('eca', epochs=1, compile=True), data, 'cpu')
    train_one_batch(session)
    session.evaluate()
    assert 'compiled (reduce-overhead)' in session.describe()['kernels']
    assert capsys.readouterr().out == ''


def test_every_network_compiled_in_one_process_is_compiled(monkeypatch):
    """Each network compiled in a process is another version of the same `forward` code;
    past dynamo's recompile limit (8) the rest would run eagerly without a word, as the
    benchmark's compiled rows did from the ninth network on."""
    import functools

    from torch._dynamo.utils import counters

    monkeypatch.setattr(torch, 'compile', functools.partial(torch.compile, backend='eager'))
    config = torch._dynamo.config
    limit = config.recompile_limit
    monkeypatch.setattr(config, 'recompile_limit', limit)  # restored after the test

    class Network(torch.nn.Module):
        def __init__(self, depth):
            super().__init__()
            self.layers = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(depth))

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    before = counters['stats']['unique_graphs']
    modules = [Network(depth) for depth in range(1, 13)]
    networks = [torch_trainer.compile_network(module) for module in modules]
    assert config.recompile_limit == limit + 8 * len(networks)
    for network in networks:
        network(torch.randn(2, 4))
    assert counters['stats']['unique_graphs'] - before == len(networks)
    # The room lasts while the network lives: the limit does not grow without bound.
    del networks, network, modules
    torch._dynamo.reset()
    gc.collect()
    assert config.recompile_limit == limit
