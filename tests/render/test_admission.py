"""``Admission``: at most ``limit`` runs at once on an engine or a pool, one more refused at once (never queued),
``exclusive`` only while nothing runs; real threads."""

from __future__ import annotations

import threading
import time

import pytest

from lora_spectrum.errors import BusyError
from lora_spectrum.render.admission import Admission


def test_one_run_more_than_the_limit_is_refused_at_once_and_a_finished_run_frees_its_slot():
    gate = Admission(2)
    with gate.enter(), gate.enter():
        # Refused while both slots stay held: an enter that waited for a slot would never come back here.
        outcome = []

        def third():
            try:
                with gate.enter():
                    outcome.append("entered")
            except BusyError as exc:
                outcome.append(str(exc))

        late = threading.Thread(target=third, daemon=True)
        late.start()
        late.join(timeout=30)
        assert not late.is_alive() and len(outcome) == 1 and "busy" in outcome[0], outcome
    with gate.enter():  # both slots came back, also after the refusal
        pass
    assert Admission(0).limit == 1, "a limit below one still lets one run in"


def test_exclusive_waits_for_nothing_and_holds_every_slot():
    gate = Admission(2)
    with gate.enter(), pytest.raises(BusyError, match="switching"), gate.exclusive("switching the base"):
        pass
    with gate.exclusive("switching the base"):
        with pytest.raises(BusyError), gate.enter():
            pass
    with gate.enter(), gate.enter():  # every slot released again
        pass


def test_threads_never_have_more_runs_inside_than_the_limit():
    gate, inside, most, refused = Admission(3), [0], [0], [0]
    lock = threading.Lock()

    def run():
        for _ in range(20):
            try:
                with gate.enter():
                    with lock:
                        inside[0] += 1
                        most[0] = max(most[0], inside[0])
                    time.sleep(0.002)
                    with lock:
                        inside[0] -= 1
            except BusyError:
                with lock:
                    refused[0] += 1

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 3 and inside[0] == 0 and refused[0] > 0
