"""A sweep on a two-node Ray cluster (both nodes on this machine): trials run on both
nodes, results come back through Tune's reports, the store is complete."""
import pytest

from bench.store import ResultsStore
from bench.sweep.driver import run_sweep
from bench.sweep.plan import load_sweep_data, plan

from .sweep_helpers import loaded, write_sweep, write_tiny_data

pytestmark = pytest.mark.slow


@pytest.fixture
def two_node_cluster():
    import ray
    from ray.cluster_utils import Cluster
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={'num_cpus': 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_trials_run_on_both_nodes_and_the_store_is_complete(tmp_path, two_node_cluster):
    import ray
    assert sum(1 for node in ray.nodes() if node['Alive']) == 2
    data_root = write_tiny_data(tmp_path / 'cifar')
    sweep = loaded(write_sweep(tmp_path, data_root, epochs=2))
    data = load_sweep_data(sweep)
    lines = []
    outcome = run_sweep(sweep, data, plan(sweep, data.identity.to_dict()),
                        progress=lines.append)
    assert set(outcome.statuses.values()) == {'done'}
    store = ResultsStore(sweep.store_dir)
    nodes = set()
    for trial_id in store.trial_ids():
        final = store.read_final(trial_id)
        assert final['epochs'] == 2
        assert [row['epoch'] for row in store.read_history(trial_id)] == [1, 2]
        assert store.checkpoint_epoch(trial_id) == 2
        nodes.add(final['node_id'])
    assert len(nodes) == 2, f'all trials ran on {nodes}'
    assert '2 node(s)' in (sweep.store_dir / 'environment.json').read_text()
