"""Scrubbers on the three Galera nodes at once over one backlog of shared data (issue 19).

One scrubber process per node (tests/galera/recording_scrubber.py), released together, over
tests/galera/scrub_backlog.py's backlog: files reached by several spellings, some kept by an active
location, some pending for two tenants. On Galera a claim's FOR UPDATE SKIP LOCKED keeps apart only the
workers of one node: two nodes' claims of one row, and two nodes' locks of one data key (an UPDATE of its
slot row), meet at commit, where the later fails certification (1213) and its unit runs again. What must
hold: every scrubber finishes its pass, the store is asked to delete each unreferenced file exactly once
(the deletions log, not the scrubbers' own counts), no file an active location reaches is touched, every
pending location ends deleted, and the usage equals a recount.
"""

from collections import Counter

import pytest

from tests.functional.test_scrubber_processes_aliases import assert_all_scrubbed, usage_drift
from tests.galera.scrub_backlog import OWNERS, Backlog, scrubber_inis
from tests.galera.scrubber_processes import deletions_by_worker, run_scrubbers

pytestmark = pytest.mark.galera

FILES = 120


def test_scrubbers_on_three_nodes_delete_each_unreferenced_file_once_and_keep_shared_data(
    galera, galera_urls, galera_engine, store_root, tmp_path
):
    backlog = Backlog(galera_engine, store_root, FILES)
    galera.wait_until_applied()
    deletions = tmp_path / "deletions.log"
    before = galera.conflicts()

    runs = run_scrubbers(scrubber_inis(tmp_path, galera_urls, store_root), deletions, tmp_path)

    print(f"scrubbers: {[dict(run.outcomes) for run in runs]}; {galera.conflicts() - before} transactions lost")
    for run in runs:
        assert run.returncode == 0, run.stderr[-5000:]
        assert run.finished, run.stderr[-5000:]
        assert "claim lost" not in run.stderr, run.stderr[-5000:]
    total = sum((run.outcomes for run in runs), Counter())
    assert total["failed"] == total["expired"] == 0, runs
    # The nodes shared the backlog: at least two scrubbers recorded claims. Which of them deletes (rather than
    # releases shared data) depends on the claim order, so any recorded outcome counts.
    assert sum(1 for run in runs if sum(run.outcomes.values())) >= 2, runs
    backlog.assert_nothing_kept_was_touched()
    # What the store was asked: each unreferenced file's data once, by whichever spelling, and nothing else.
    asked = Counter(backlog.key_of(url) for _worker, url in deletions_by_worker(deletions))
    assert asked == Counter(backlog.gone_keys)
    assert total["deleted"] == len(backlog.gone)
    assert total["deleted"] + total["shared"] == len(backlog.pending)
    assert_all_scrubbed(galera_engine, backlog.pending)
    assert usage_drift(galera_engine, fix=False, owners=OWNERS) == []
