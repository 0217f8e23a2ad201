"""The publisher with a journal that goes wrong: a corrupt round, a full disk.

Real parts: a Tiled server in a child process, real files, a real (small) tmpfs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tiled_keys import API_KEY

from smartlab_plugins.hookspecs import Results
from smartlab_plugins.publish import Publisher, journal
from smartlab_plugins.results import find_analyses, read_events
from smartlab_plugins.server import EmbeddedServer


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    with EmbeddedServer(tmp_path / "tiled", api_key=API_KEY) as server:
        yield server


def publish(publisher: Publisher, run_uid: str, batches: list[range]) -> str:
    key = publisher.open_analysis({"run_uid": run_uid, "plugin": "journal-test"})
    for seq_nums in batches:
        seq = np.array(list(seq_nums))
        results = Results(scalars={"x": seq * 2.0})
        publisher.append(key, "primary", seq, seq * 1.0, results)
        publisher.flush(timeout=0.5)  # a round each (Tiled may be away: then it waits on disk)
    publisher.close_analysis(key, {"status": "complete"})
    return key


def test_a_corrupt_round_is_quarantined_and_the_rest_still_published(
    own_server: EmbeddedServer, tmp_path: Path, caplog
):
    spool = tmp_path / "spool"
    own_server.stop()
    first = Publisher(own_server.client, journal_dir=spool, tiled_uri=own_server.uri)
    publish(first, "run-c", [range(1, 4), range(4, 7), range(7, 10)])
    assert not first.close(timeout=1.0)  # Tiled away: the rounds are handed on
    (folder,) = [p for p in spool.iterdir() if p.is_dir()]
    rounds = journal.rounds_in(folder)
    assert len(rounds) >= 3
    # the round holding events 4-6: cut short, as a crash or a full disk may leave it
    damaged = next(p for p in rounds if b"journal-test" not in p.read_bytes() and p != rounds[0])
    damaged.write_bytes(damaged.read_bytes()[:-40])

    own_server.start()
    with caplog.at_level(logging.ERROR):
        second = Publisher(own_server.client, journal_dir=spool, tiled_uri=own_server.uri)
        assert second.flush(timeout=60)
        published = publish(second, "run-d", [range(1, 3)])  # and it goes on publishing
        assert second.close(timeout=60)
    assert second.stats()["failed"] == 1

    client = own_server.client()
    (kept,) = find_analyses(client, run_uid="run-c")
    assert kept.metadata["status"] == "complete"
    seq_nums = read_events(kept)["seq_num"].tolist()
    assert len(seq_nums) == 6 and set(seq_nums) < set(range(1, 10))  # one round of 3 lost
    (later,) = find_analyses(client, run_uid="run-d")
    assert later.metadata["analysis_uid"] == published
    assert read_events(later)["seq_num"].tolist() == [1, 2]
    (quarantined,) = (spool / journal.QUARANTINE_DIR).iterdir()
    assert quarantined.name.endswith(damaged.name)
    assert damaged.name in caplog.text and "quarantine" in caplog.text


def test_a_full_disk_keeps_rounds_in_memory_and_says_so(
    tiled_server: EmbeddedServer, small_disk: Path, caplog
):
    spool = small_disk / "spool"
    publisher = Publisher(tiled_server.client, journal_dir=spool, tiled_uri=tiled_server.uri)
    filler = small_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    with caplog.at_level(logging.ERROR):
        publish(publisher, "run-full", [range(1, 5), range(5, 9)])
        assert publisher.flush(timeout=60)
    assert publisher.stats()["journal_failures"] >= 2
    assert "cannot keep results in the journal on local disk" in caplog.text
    (analysis,) = find_analyses(tiled_server.client(), run_uid="run-full")
    assert read_events(analysis)["seq_num"].tolist() == list(range(1, 9))

    filler.unlink()  # space again: rounds go to the journal, and the recovery is said
    with caplog.at_level(logging.WARNING):
        publish(publisher, "run-after", [range(1, 3)])
        assert publisher.close(timeout=60)
    assert "takes rounds again" in caplog.text
