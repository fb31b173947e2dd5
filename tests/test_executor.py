import os

import pytest

from refsav.runtime.executor import DaskExecutor, InlineExecutor, make_executor


def _square_or_fail(x: int) -> tuple[int, int]:
    if x == 3:
        raise ValueError("bad task 3")
    return x * x, os.getpid()


def _check(outcomes, tasks):
    got = {o.task: o for o in outcomes}
    assert set(got) == set(tasks)
    assert not got[3].ok and "bad task 3" in str(got[3].error)
    assert {t: o.result[0] for t, o in got.items() if o.ok} == {t: t * t for t in tasks if t != 3}
    return got


def test_inline_executor_returns_errors_as_outcomes():
    with InlineExecutor() as ex:
        got = _check(list(ex.map_unordered(_square_or_fail, list(range(6)))), list(range(6)))
    assert {o.result[1] for o in got.values() if o.ok} == {os.getpid()}


def test_make_executor_picks_inline_for_one_worker():
    assert isinstance(make_executor(workers=1), InlineExecutor)


@pytest.mark.timeout(120)
def test_dask_executor_on_an_external_scheduler_over_tcp():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=40) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        with make_executor(scheduler=cluster.scheduler_address) as ex:
            assert isinstance(ex, DaskExecutor) and ex.n_workers == 2
            got = _check(list(ex.map_unordered(_square_or_fail, list(range(8)))), list(range(8)))
    # the work ran in the cluster's worker processes, not here
    assert os.getpid() not in {o.result[1] for o in got.values() if o.ok}


@pytest.mark.timeout(120)
def test_local_dask_cluster_leaves_port_8787_alone(capfd):
    """The scheduler of a local cluster serves nothing on Dask's dashboard port (8787 is the
    default even with the dashboard off), so it never collides with another run's."""
    import psutil

    with make_executor(workers=2) as ex:
        assert isinstance(ex, DaskExecutor)
        got = {o.task: o.result[0] for o in ex.map_unordered(_square_or_fail, [1, 2])}
        listening = {c.laddr.port for c in psutil.Process().net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN}
    assert got == {1: 1, 2: 4}
    assert listening and 8787 not in listening  # the scheduler listens, elsewhere
    assert "8787" not in capfd.readouterr().err
