"""Where batches go (``place``): epoch-major, routed batches whole, balanced by images, plan order kept; and the
read ahead set for each worker's own order (``with_ahead``). Plain data: no engine needed."""

from __future__ import annotations

from lora_spectrum.execution import Batch, files_ahead, place, with_ahead
from lora_spectrum.render.engine import RenderRequest


def batch(index: int, *routes, seeds=(1, 2)) -> Batch:
    """A batch of the given files (None: the base) at strength 1; several files make it routed."""
    calls = (tuple((f, 1.0, seeds) for f in routes),)
    return Batch(index, RenderRequest("p", seeds if len(routes) == 1 else ()), calls, len(routes) > 1, "x")


def test_each_file_goes_to_one_worker_and_each_queue_keeps_the_plan_order():
    # Two prompts per epoch: batches 0-1 are e1, 2-3 e2, 4-5 e3, 6-7 e4.
    batches = [batch(i, f"e{i // 2 + 1}.safetensors") for i in range(8)]
    queues = place(batches, 2)
    assert sorted(b.index for q in queues for b in q) == list(range(8)), "every batch placed once"
    owners = {}
    for w, q in enumerate(queues):
        assert [b.index for b in q] == sorted(b.index for b in q)
        for b in q:
            assert owners.setdefault(b.files[0], w) == w, f"{b.files[0]} split over workers"
    assert [len(q) for q in queues] == [4, 4], "two epochs each"


def test_a_routed_batch_stays_whole_and_joins_its_files():
    # e1+e2 routed for one prompt, then e2 alone for another: e1 and e2 must share a worker.
    batches = [batch(0, "e1", "e2"), batch(1, "e3"), batch(2, "e2"), batch(3, "e4")]
    queues = place(batches, 3)
    home = {f: w for w, q in enumerate(queues) for b in q for f in b.files}
    assert home["e1"] == home["e2"]
    assert len({home["e1"], home["e3"], home["e4"]}) == 3


def test_groups_are_balanced_by_images_and_base_batches_spread():
    big = [batch(i, "big", seeds=(1, 2, 3, 4)) for i in range(3)]  # 12 images
    small = [batch(3, "s1"), batch(4, "s2"), batch(5, "s3")]  # 2 images each
    base = [batch(6, None), batch(7, None)]
    queues = place(big + small + base, 2)
    loads = sorted(sum(b.images for b in q) for q in queues)
    assert loads == [10, 12], loads  # the big epoch alone; the three small ones and both base batches together
    assert sum(1 for q in queues if any(b.files == ["big"] for b in q)) == 1


def test_more_workers_than_groups_leaves_some_idle():
    queues = place([batch(0, "e1"), batch(1, "e1")], 4)
    assert sorted(len(q) for q in queues) == [0, 0, 0, 2]


def test_read_ahead_follows_each_queue():
    assert files_ahead([["a"], ["a"], ["b"], ["a", "c"], []]) == ["b", "b", "a", None, None]
    q = with_ahead([batch(0, "e1"), batch(1, "e1"), batch(4, "e3")])
    assert [b.ahead for b in q] == ["e3", "e3", None]


def test_a_batch_holds_named_routes_its_cells_and_gives_its_request_its_label():
    """Routes given as plain tuples become ``Route``s (read by name), the request reports the batch's label with
    each step, and the cell ids travel with the batch, route by route, through ``place`` and ``with_ahead``."""
    b = Batch(3, RenderRequest("p", ()), (((None, 0.0, (1, 2)), ("e1", 0.5, (1, 2))),), True, "base + epoch 1",
              cells=((0, 1), (4, 5)))
    assert [r.path for r in b.routes] == [None, "e1"] and b.routes[1].strength == 0.5
    assert [r.seeds for r in b.routes] == [(1, 2), (1, 2)] and not b.routes[0].adapter and b.routes[1].adapter
    assert b.request.label == "base + epoch 1" and b.images == 4 and b.files == ["e1"]
    [[placed]] = place([b], 1)
    assert with_ahead([placed])[0].cells == ((0, 1), (4, 5))
