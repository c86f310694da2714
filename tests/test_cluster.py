"""Sweeps on a two-node Ray cluster whose nodes share no disk (both nodes on this
machine): the second node runs in a mount namespace of its own where the results folder
is an empty read-only tmpfs, hidden and read-only at once: a read there of the driver's
store finds nothing, and a write fails loudly instead of landing on a disk the driver never
sees. Trials on either node end up in the driver's store; a node that dies mid-trial costs
at most the epoch in progress.

Every address is a loopback one, and every Ray process a test starts it ends."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.store import ResultsStore

from .sweep_helpers import write_sweep, write_tiny_data

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / 'ray')
pytestmark = pytest.mark.slow
SECOND_NODE_IP = '127.0.0.2'


def _free_port():
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def _can_hide_folders():
    if os.geteuid() != 0 or not shutil.which('unshare'):
        return False
    done = subprocess.run(
        ['unshare', '--mount', '--propagation', 'private', 'true'], capture_output=True
    )
    return done.returncode == 0


def _environment():
    env = dict(
        os.environ,
        PYTHONUNBUFFERED='1',
        # A cluster of this test alone, on loopback: no token to share between
        # its nodes, and a node's death told within seconds.
        RAY_AUTH_MODE='disabled',
        RAY_health_check_initial_delay_ms='1000',
        RAY_health_check_period_ms='1000',
        RAY_health_check_timeout_ms='1000',
        RAY_health_check_failure_threshold='3',
    )
    env.pop('RAY_ADDRESS', None)
    return env


class TwoNodes:
    """A head (1 CPU) and a second node (1 CPU, at 127.0.0.2) in its own session each, the
    second in a mount namespace where the results folder is an empty read-only tmpfs."""

    def __init__(self, folder, results):
        self.folder, self.env = folder, _environment()
        self.port = _free_port()
        self.address = f'127.0.0.1:{self.port}'
        results.mkdir(parents=True, exist_ok=True)
        self.head = self._start(
            'head',
            [
                RAY,
                'start',
                '--head',
                '--node-ip-address',
                '127.0.0.1',
                '--port',
                str(self.port),
                '--num-cpus',
                '1',
                '--include-dashboard',
                'false',
                '--block',
            ],
        )
        self._wait_for_nodes(1)
        second = (
            f'mount -t tmpfs -o ro tmpfs {results} && exec {RAY} start --address '
            f'{self.address} --node-ip-address {SECOND_NODE_IP} --num-cpus 1 --block'
        )
        self.second_command = second
        self.second = self._start(
            'second', ['unshare', '--mount', '--propagation', 'private', 'sh', '-c', second]
        )
        self._wait_for_nodes(2)

    def _start(self, name, command):
        log = open(self.folder / f'{name}.log', 'w')
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )

    def _wait_for_nodes(self, count, seconds=90):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            done = subprocess.run(
                [RAY, 'status', '--address', self.address],
                capture_output=True,
                text=True,
                env=self.env,
            )
            if (
                done.returncode == 0
                and len(re.findall(r'^ 1 node_', done.stdout, flags=re.M)) >= count
            ):
                return
            time.sleep(1)
        pytest.fail(
            f'the cluster did not reach {count} node(s): '
            + (self.folder / 'second.log').read_text()[-2000:]
        )

    def kill_second(self):
        os.killpg(self.second.pid, signal.SIGKILL)

    def ensure_second(self):
        """The second node again where a test killed it (a new node at the same address)."""
        if self.second.poll() is None:
            return
        self.second.wait(30)
        self.second = self._start(
            'second',
            ['unshare', '--mount', '--propagation', 'private', 'sh', '-c', self.second_command],
        )
        self._wait_for_nodes(2)

    def stop(self):
        for process in (self.second, self.head):
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(30)
        # `ray start --head` names its cluster here, where a later ray.init() without an
        # address would look for one to join.
        current = Path('/tmp/ray/ray_current_cluster')
        if current.is_file() and f':{self.port}' in current.read_text():
            current.unlink()


@pytest.fixture(scope='module')
def two_nodes(tmp_path_factory):
    """One cluster for the module's tests (starting one takes ~20 s), ended after them."""
    if not _can_hide_folders():
        pytest.skip('hiding the results folder from a node needs root and unshare')
    folder = tmp_path_factory.mktemp('cluster')
    nodes = TwoNodes(folder, folder / 'results')
    yield nodes
    nodes.stop()


@pytest.fixture
def cluster(two_nodes, tmp_path):
    """The cluster with both nodes up, and `results`: this test's results folder, inside
    the one the second node can neither read nor write."""
    nodes = two_nodes
    nodes.ensure_second()
    nodes.results = Path(nodes.folder) / 'results' / tmp_path.name
    yield nodes


def _sweep(tmp_path, cluster, epochs, max_failures=0):
    data_root = write_tiny_data(tmp_path / 'cifar', train=64, test=16)
    return write_sweep(
        tmp_path,
        data_root,
        models=['cifar_resnet8_v1'],
        attentions=['none', 'eca'],
        epochs=epochs,
        extra={
            'resources': {'cpus_per_trial': 1, 'gpus_per_trial': 0, 'max_failures': max_failures},
            'outputs': {
                'results': str(cluster.results),
                'readme': None,
                'figures': 'figures',
                'report': None,
            },
        },
    )


def _run(path, cluster, tmp_path):
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / 'run_sweep.py'),
            '--config',
            str(path),
            '--address',
            cluster.address,
            '--no-report',
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=cluster.env,
        timeout=400,
    )


def _histories(store_dir):
    store = ResultsStore(store_dir)
    return {
        store.read_spec(t)['name']: [r['epoch'] for r in store.read_history(t)]
        for t in store.trial_ids()
    }


def test_a_cluster_without_a_shared_disk_fills_the_drivers_store(tmp_path, cluster):
    path = _sweep(tmp_path, cluster, epochs=2)
    done = _run(path, cluster, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f'starts on node {SECOND_NODE_IP}' in done.stdout  # one trial ran there
    store_dir = cluster.results / 'tiny'
    store = ResultsStore(store_dir)
    nodes = set()
    for trial_id in store.trial_ids():
        final = store.read_final(trial_id)
        assert final['epochs'] == 2 and store.checkpoint_epoch(trial_id) == 2
        assert sorted(p.name for p in store.checkpoint_path(trial_id).iterdir()) == [
            'model.params',
            'optimizer.json',
            'optimizer.params',
            'state.json',
        ]
        nodes.add(final['node_ip'])
    assert SECOND_NODE_IP in nodes and len(nodes) == 2
    assert _histories(store_dir) == {
        'cifar_resnet8_v1-none-s0': [1, 2],
        'cifar_resnet8_v1-eca-s0': [1, 2],
    }
    again = _run(path, cluster, tmp_path)
    assert again.returncode == 0 and ' epoch ' not in again.stdout  # nothing retrained


def test_a_node_that_dies_mid_trial_costs_at_most_the_epoch_in_progress(tmp_path, cluster):
    epochs = 20
    path = _sweep(tmp_path, cluster, epochs=epochs, max_failures=1)
    log = open(tmp_path / 'sweep.log', 'w')
    sweep = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / 'run_sweep.py'),
            '--config',
            str(path),
            '--address',
            cluster.address,
            '--no-report',
        ],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=cluster.env,
        start_new_session=True,
    )
    store_dir = cluster.results / 'tiny'
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            text = (tmp_path / 'sweep.log').read_text()
            there = re.search(
                rf'^\d\d:\d\d:\d\d (\S+) starts on node {re.escape(SECOND_NODE_IP)}',
                text,
                flags=re.M,
            )
            if (
                there
                and len(
                    re.findall(
                        rf'^\d\d:\d\d:\d\d {re.escape(there.group(1))} epoch ', text, flags=re.M
                    )
                )
                >= 3
            ):
                break
            assert sweep.poll() is None, text[-3000:]
            time.sleep(0.2)
        else:
            pytest.fail(
                'no trial trained on the second node: '
                + (tmp_path / 'sweep.log').read_text()[-3000:]
            )
        cluster.kill_second()
        assert sweep.wait(400) == 0, (tmp_path / 'sweep.log').read_text()[-3000:]
    finally:
        try:
            os.killpg(sweep.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
    output = (tmp_path / 'sweep.log').read_text()
    name = there.group(1)
    retried = re.search(
        rf'^\d\d:\d\d:\d\d {re.escape(name)}: node {re.escape(SECOND_NODE_IP)} died while '
        r'the trial trained there; Tune retries it \(retry 1 of 1\) from the '
        r'last epoch the store holds \((\d+)\)',
        output,
        flags=re.M,
    )
    assert retried, output[-3000:]
    held = int(retried.group(1))
    resumed = re.search(
        rf'^\d\d:\d\d:\d\d {re.escape(name)} resumes after epoch (\d+) on node (\S+)',
        output,
        flags=re.M,
    )
    assert resumed and int(resumed.group(1)) == held and resumed.group(2) != SECOND_NODE_IP
    # Every epoch once, and after the death only the epochs the store did not hold.
    assert _histories(store_dir)[name] == list(range(1, epochs + 1))
    after = output[retried.end() :]
    assert (
        min(
            int(e)
            for e in re.findall(
                rf'^\d\d:\d\d:\d\d {re.escape(name)} epoch (\d+)/', after, flags=re.M
            )
        )
        == held + 1
    )
    store = ResultsStore(store_dir)
    assert all(store.status(t) == ('done', epochs) for t in store.trial_ids())


def test_without_retries_a_node_loss_is_stored_as_such_and_retry_failed_resumes(tmp_path, cluster):
    epochs = 20
    path = _sweep(tmp_path, cluster, epochs=epochs, max_failures=0)
    log = open(tmp_path / 'sweep.log', 'w')
    sweep = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / 'run_sweep.py'),
            '--config',
            str(path),
            '--address',
            cluster.address,
            '--no-report',
        ],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=cluster.env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            text = (tmp_path / 'sweep.log').read_text()
            there = re.search(
                rf'^\d\d:\d\d:\d\d (\S+) starts on node {re.escape(SECOND_NODE_IP)}',
                text,
                flags=re.M,
            )
            if there and re.search(
                rf'^\d\d:\d\d:\d\d {re.escape(there.group(1))} epoch 2/', text, flags=re.M
            ):
                break
            assert sweep.poll() is None, text[-3000:]
            time.sleep(0.2)
        else:
            pytest.fail((tmp_path / 'sweep.log').read_text()[-3000:])
        cluster.kill_second()
        assert sweep.wait(400) == 1, (tmp_path / 'sweep.log').read_text()[-3000:]
    finally:
        try:
            os.killpg(sweep.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
    name = there.group(1)
    store = ResultsStore(cluster.results / 'tiny')
    (trial_id,) = [t for t in store.trial_ids() if store.read_spec(t)['name'] == name]
    error = store.read_error(trial_id)
    held = store.checkpoint_epoch(trial_id)
    assert error.startswith(
        f'node {SECOND_NODE_IP} died while the trial trained there (epoch '
        f'{held} is in the store); run again with --retry-failed'
    ), error
    again = subprocess.run(
        [
            sys.executable,
            str(ROOT / 'run_sweep.py'),
            '--config',
            str(path),
            '--address',
            cluster.address,
            '--no-report',
            '--retry-failed',
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=cluster.env,
        timeout=400,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f'{name} resumes after epoch {held} on node' in again.stdout
    assert _histories(cluster.results / 'tiny')[name] == list(range(1, epochs + 1))
