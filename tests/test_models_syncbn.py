"""Synchronised BN really averages batch statistics across Horovod ranks (2 gloo processes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

WORKER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import efficientdet  # noqa: F401
    import horovod.tensorflow as hvd
    import tensorflow as tf
    from efficientdet.models.layers import batch_norm

    hvd.init()
    rank = hvd.rank()
    data = np.random.default_rng(0).normal(0.0, 1.0, (2, 4, 3, 3, 5)).astype("float32")
    data[1] = data[1] * 3.0 + 5.0          # rank 1 sees a very different batch
    local = data[rank]
    synced = batch_norm("synced", sync_bn=True)
    plain = batch_norm("plain", sync_bn=False)
    y_sync = synced(local, training=True)
    y_plain = plain(local, training=True)
    y_graph = tf.function(lambda t: synced(t, training=True))(tf.constant(local))
    json.dump({"rank": rank, "size": hvd.size(),
               "y_sync": np.asarray(y_sync).tolist(), "y_plain": np.asarray(y_plain).tolist(),
               "y_graph": np.asarray(y_graph).tolist(),
               "moving_mean": np.asarray(synced.moving_mean).tolist(),
               "moving_var": np.asarray(synced.moving_variance).tolist()},
              open(sys.argv[1] + f"/rank{rank}.json", "w"))
    """
)


@pytest.mark.slow
@pytest.mark.horovod
def test_sync_bn_uses_global_batch_statistics(tmp_path):
    horovodrun = shutil.which("horovodrun", path=os.path.dirname(sys.executable))
    assert horovodrun, "horovodrun not found next to the Python interpreter"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.run(
        [horovodrun, "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, str(script),
         str(tmp_path)],
        capture_output=True, text=True, timeout=240, env=env, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["size"] for r in ranks] == [2, 2]

    data = np.random.default_rng(0).normal(0.0, 1.0, (2, 4, 3, 3, 5)).astype("float32")
    data[1] = data[1] * 3.0 + 5.0
    everything = data.reshape(-1, 5)
    mean, var = everything.mean(axis=0), everything.var(axis=0)
    for r in ranks:
        expected = (data[r["rank"]] - mean) / np.sqrt(var + 1e-3)
        np.testing.assert_allclose(r["y_sync"], expected, atol=1e-4)
        np.testing.assert_allclose(r["y_graph"], expected, atol=1e-4)
        # the plain layer normalises with the local batch only: different on each rank
        assert not np.allclose(r["y_plain"], expected, atol=1e-2)
        # two synchronized updates (eager + graph call), both with the global statistics
        np.testing.assert_allclose(r["moving_mean"], mean * (1 - 0.99**2), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ranks[0]["moving_var"], ranks[1]["moving_var"], rtol=1e-6)
