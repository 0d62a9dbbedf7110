"""The publisher runs one publication at a time off the training thread and hands its outcome back once."""

from __future__ import annotations

import threading

import pytest

from services.trainer.publisher import Publisher
from tests.waiting import wait_for


def test_a_background_publication_runs_while_the_caller_goes_on_and_is_collected_once():
    publisher = Publisher(background=True)
    release, started = threading.Event(), threading.Event()
    caller = threading.get_ident()
    ran_on = []

    def publish():
        ran_on.append(threading.get_ident())
        started.set()
        assert release.wait(60)
        return 7

    try:
        publisher.submit(publish)  # returns at once: the caller is not blocked
        assert started.wait(60)
        assert publisher.busy and publisher.collect() is None  # not done: nothing to apply yet
        with pytest.raises(RuntimeError, match="already in flight"):
            publisher.submit(lambda: 8)  # never two at once
        release.set()
        wait_for(lambda: publisher._future.done(), 60, "the publication to finish")
        future = publisher.collect()
        assert future.result() == 7 and ran_on != [caller]
        assert not publisher.busy and publisher.collect() is None  # handed back once
        publisher.submit(lambda: 9)  # the next one may start
        assert publisher.collect(wait=True).result() == 9
    finally:
        release.set()
        publisher.close()


def test_a_failed_publication_hands_back_its_error_instead_of_raising_in_the_caller():
    for background in (True, False):
        publisher = Publisher(background=background)

        def fail():
            raise ConnectionError("registry unreachable")

        publisher.submit(fail)
        future = publisher.collect(wait=True)
        assert isinstance(future.exception(), ConnectionError)
        publisher.close()


def test_without_background_the_publication_runs_on_the_callers_thread():
    publisher = Publisher(background=False)
    publisher.submit(threading.get_ident)
    assert publisher.busy
    assert publisher.collect().result() == threading.get_ident()
    publisher.close()


def test_close_waits_for_the_publication_in_flight():
    publisher = Publisher(background=True)
    done = []
    release = threading.Event()
    publisher.submit(lambda: (release.wait(60), done.append(1)))
    threading.Timer(0.2, release.set).start()
    publisher.close()
    assert done == [1] and not publisher.busy
