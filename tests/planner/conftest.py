"""The planner runs on a fake process group of its own and refuses a process that already has one.
In-process trainer tests (tests/trainer/) leave their one-process group to the pytest worker that ran
them: leave it before each planner test, as a user's `fgrpo plan` process would start without one."""

import pytest

from fgrpo.distributed.process_group import shutdown


@pytest.fixture(autouse=True)
def _no_process_group():
    shutdown()
