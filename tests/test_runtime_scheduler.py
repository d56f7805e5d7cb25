"""The inference scheduler on a real ONNX Runtime session: batching, order, drop-oldest, back-pressure, thread plan."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edgepilot.engines import open_session
from edgepilot.model import Format, Model
from edgepilot.runtime.item import Item
from edgepilot.runtime.scheduler import ItemQueue, Scheduler, SchedulerConfig, limit_library_threads, plan_threads
from edgepilot.runtime.stats import PipelineStats


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    from builders import build

    return Model.load(build(Format.ONNX, "cnn", tmp_path_factory.mktemp("cnn")).path)  # [N,3,32,32] -> [N,10]


def items(n: int, live: bool = False, source: str = "s") -> list[Item]:
    rng = np.random.default_rng(0)
    return [Item(source, i, time.time(), live=live, tensor=rng.standard_normal((3, 32, 32)).astype(np.float32))
            for i in range(n)]


def run_all(model, cfg: SchedulerConfig, work: list[Item], workers: int = 1) -> tuple[list[Item], PipelineStats]:
    stats = PipelineStats()
    out: list[Item] = []
    sched = Scheduler([open_session(model, "onnxruntime", threads=1) for _ in range(workers)], cfg, stats, out.append)
    sched.start()
    for it in work:
        sched.submit(it)
    sched.close(timeout=30)
    return out, stats


def test_batches_give_the_same_outputs_as_single_runs_and_keep_order(cnn):
    work = items(23)
    single, _ = run_all(cnn, SchedulerConfig(max_batch=1), [Item(i.source, i.seq, i.ts, tensor=i.tensor) for i in work])
    batched, stats = run_all(cnn, SchedulerConfig(max_batch=8, max_delay_ms=50, queue_size=32), work, workers=2)
    assert [it.seq for it in batched] == list(range(23))  # two workers, results still in queue order
    for a, b in zip(single, batched):
        np.testing.assert_allclose(a.outputs["output"], b.outputs["output"], rtol=1e-4, atol=1e-5)
    assert stats.counters["inferred"] == 23 and stats.counters["batches"] < 23  # items were batched
    assert stats.counters.get("dropped", 0) == 0


def test_outputs_that_do_not_follow_the_batch_are_each_item_s_whole_and_batching_stops(tmp_path):
    """NMS inside the graph ([K, 3] of the boxes kept): a batch of two has no rows to split by item, so each runs
    alone and keeps all of its own; the scheduler batches no more."""
    from servers import nms_onnx

    model = Model.load(nms_onnx(tmp_path / "nms.onnx", batch="batch"))
    boxes = np.array([[0, 0, 1, 1], [0, 0, 1, 1.05], [2, 2, 3, 3], [4, 4, 5, 5], [6, 6, 7, 7], [8, 8, 9, 9]],
                     np.float32)
    keep_two, keep_three = np.array([[0.9, 0.8, 0.7, 0, 0, 0]], np.float32), np.array([[0.9, 0, 0.7, 0, 0.6, 0]],
                                                                                         np.float32)
    work = [Item("s", i, time.time(), tensor={"boxes": boxes, "scores": sc}) for i, sc in enumerate((keep_two,
                                                                                                      keep_three))]
    stats = PipelineStats()
    out: list[Item] = []
    sched = Scheduler([open_session(model, "onnxruntime", threads=1)], SchedulerConfig(max_batch=2, max_delay_ms=2000),
                      stats, out.append)
    assert sched.offer(work)  # both in the queue before the worker takes: one batch of two
    sched.start()
    sched.close(timeout=30)
    assert [it.error for it in out] == [None, None]
    assert [it.outputs["selected"][:, 2].tolist() for it in out] == [[0, 2], [0, 2, 4]]
    assert all(it.whole_outputs for it in out) and sched.max_batch == 1


def test_file_items_wait_for_room_live_items_drop_the_oldest():
    stats = PipelineStats()
    q = ItemQueue(2, stats)
    a, b, c = items(3, live=True)
    for it in (a, b, c):
        q.put(it)  # the third displaces the first
    assert [it.seq for it in q.take(4, 0)] == [1, 2] and stats.counters["dropped"] == 1

    f1, f2, f3 = items(3, live=False, source="file")
    q.put(f1), q.put(f2)
    done = threading.Event()
    threading.Thread(target=lambda: (q.put(f3), done.set()), daemon=True).start()
    assert not done.wait(0.3)  # back-pressure: blocked while the queue is full
    assert [it.seq for it in q.take(1, 0)] == [0]
    assert done.wait(2) and [it.seq for it in q.take(4, 0)] == [1, 2]
    assert stats.counters["dropped"] == 1  # no file item was dropped


def test_a_failing_batch_marks_its_items_and_the_scheduler_goes_on(cnn):
    work = items(4)
    work[1].tensor = np.zeros((3, 31, 32), np.float32)  # wrong shape: the batch cannot stack
    work[2].error = "preprocess failed: test"
    out, stats = run_all(cnn, SchedulerConfig(max_batch=1), work)
    assert [it.seq for it in out] == [0, 1, 2, 3]
    assert out[0].outputs is not None and out[3].outputs is not None
    assert "inference failed" in out[1].error and out[2].error == "preprocess failed: test"
    assert stats.counters["errors"] == 1


def test_fixed_batch_model_is_padded(tmp_path):
    from edgepilot.model import TensorSpec

    class Fixed:  # only the input spec matters to the scheduler's batch planning
        inputs = [TensorSpec("x", "float32", (4, 2))]

        def run(self, feeds):
            x = feeds["x"]
            assert x.shape == (4, 2)
            return {"y": x * 2}

    out = []
    sched = Scheduler([Fixed()], SchedulerConfig(max_batch=8, max_delay_ms=20), PipelineStats(), out.append)
    sched.start()
    for i in range(3):
        sched.submit(Item("s", i, 0.0, tensor=np.full(2, i, np.float32)))
    sched.close(timeout=5)
    assert [o.outputs["y"].tolist() for o in out] == [[0, 0], [2, 2], [4, 4]]


def test_thread_plan_never_oversubscribes():
    p = plan_threads(SchedulerConfig(), decode_threads=1, cores=2)
    assert (p.workers, p.model_threads, p.ffmpeg_threads) == (1, 1, 1) and not p.notes
    p = plan_threads(SchedulerConfig(), decode_threads=2, cores=8)
    assert p.workers * p.model_threads + 2 <= 8 and p.model_threads == 6 and p.ffmpeg_threads == 1
    p = plan_threads(SchedulerConfig(model_threads=2), decode_threads=2, cores=8)  # 4 cores to spare: 2 each
    assert p.ffmpeg_threads == 3 and "2 decoder(s) x 3 FFmpeg thread(s)" in p.describe()
    p = plan_threads(SchedulerConfig(workers=4, model_threads=4), decode_threads=1, cores=4)
    assert p.workers * p.model_threads <= 3 and p.notes


def test_spin_wait_is_off_when_the_stages_fill_every_core_and_the_yaml_decides_otherwise(tmp_path):
    from builders.onnx import export_onnx
    from edgepilot.engines import open_session
    from edgepilot.model import Model

    assert plan_threads(SchedulerConfig(), decode_threads=1, cores=2).spin_wait is False
    assert plan_threads(SchedulerConfig(model_threads=2), decode_threads=1, cores=8).spin_wait is None  # to spare
    assert plan_threads(SchedulerConfig(spin_wait=True), decode_threads=1, cores=2).spin_wait is True
    assert "spin-wait off" in plan_threads(SchedulerConfig(), decode_threads=1, cores=2).describe()
    model = Model.load(export_onnx("mlp", tmp_path / "mlp.onnx"))
    for spin, entry in ((False, "0"), (True, "1")):
        session = open_session(model, "onnxruntime", threads=1, spin_wait=spin)
        options = session._sess.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == entry


def test_opencv_runs_single_threaded_only_when_the_stages_fill_every_core():
    cv2 = pytest.importorskip("cv2")
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(4)
        limit_library_threads(plan_threads(SchedulerConfig(model_threads=2), decode_threads=1, cores=8))  # to spare
        assert cv2.getNumThreads() == 4
        limit_library_threads(plan_threads(SchedulerConfig(), decode_threads=1, cores=2))
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)


def test_an_item_that_cannot_run_does_not_hold_back_its_batch(cnn):
    work = items(6)
    work[2].error = "preprocess failed: test"
    work[4].tensor = None
    out, stats = run_all(cnn, SchedulerConfig(max_batch=6, max_delay_ms=200, queue_size=8), work)
    assert [it.seq for it in out] == list(range(6))
    assert [it.outputs is not None for it in out] == [True, True, False, True, False, True]
    assert out[4].error == "not preprocessed" and stats.counters["inferred"] == 4


def test_a_swap_moves_the_batches_taken_after_it_to_the_new_sessions_and_closes_the_old_ones(tmp_path):
    from deploy_helpers import FEATURES, classifier

    old_model, new_model = (Model.load(classifier(tmp_path / f"{n}.onnx", seed=s)) for n, s in (("a", 1), ("b", 2)))
    stats, out = PipelineStats(), []
    sched = Scheduler([open_session(old_model, "onnxruntime", threads=1) for _ in range(2)],
                      SchedulerConfig(max_batch=4, queue_size=8), stats, out.append)
    sched.start()
    rng = np.random.default_rng(5)
    work = [Item("s", i, time.time(), tensor=rng.standard_normal(FEATURES).astype(np.float32)) for i in range(200)]
    for it in work[:100]:
        sched.submit(it)  # file items: they wait for room, so most of them are taken before the swap
    with pytest.raises(ValueError, match="1 session"):
        sched.swap([open_session(new_model, "onnxruntime", threads=1)])
    closed = sched.swap([open_session(new_model, "onnxruntime", threads=1) for _ in range(2)])
    for it in work[100:]:
        sched.submit(it)
    sched.close(timeout=30)
    assert closed.wait(30)  # the old sessions were closed once their last batch ended
    assert [it.seq for it in out] == list(range(200)) and stats.counters["inferred"] == 200

    def on(model):
        with open_session(model, "onnxruntime", threads=1) as s:
            return [s.run({"input": it.tensor[None]})["output"][0] for it in work]

    ref = {"old": on(old_model), "new": on(new_model)}
    ran = [next(k for k, r in ref.items() if np.allclose(it.outputs["output"], r[it.seq], atol=1e-5)) for it in out]
    assert ran == sorted(ran, key=["old", "new"].index)  # one switch, between batches, never back
    assert ran.count("old") >= 50 and set(ran[100:]) == {"new"}
    for s in sched.sessions:
        s.close()
