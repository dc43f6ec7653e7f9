"""Who is creating a study: so that a second worker waits for the first instead of repeating its setup.

The worker that creates a study stores its identity (``created_by``: machine, pid, start time, as
:mod:`planner.tune.storage.lifecycle` names workers) right after ``create_study``, then the settings and the
queued baselines, and ``ready`` last. A worker that opens the study before ``ready`` waits while the
creator may still be at work, and repairs what is missing only when the creator is gone (killed
between the two steps) or silent for :data:`CREATION_TIMEOUT`. Studies written before these
attributes existed have their settings and are taken as they are.
"""

from __future__ import annotations

import time

from planner.tune.storage.processes import ended_here, process_identity

CREATED_BY, READY = "created_by", "ready"
BARE_GRACE = 5.0  # a study with no attribute at all may be a create_study a few milliseconds old
CREATION_TIMEOUT = 120.0  # a creator on another machine (liveness unknown), or one that hangs
POLL = 0.2


def _creator_gone(creator: dict) -> bool:
    # this very process counts as gone: it was interrupted while it created the study
    return creator == process_identity() or ended_here(creator)


def wait_for_creation(study, *, timeout: float = CREATION_TIMEOUT, bare_grace: float = BARE_GRACE) -> bool:
    """Wait until the study's creator has finished setting it up. True: it has (nothing to repair);
    False: it never will (creator gone or silent), and the caller stores what is missing."""
    start = time.monotonic()
    while True:
        attrs = study.user_attrs  # read afresh from the storage each time
        if attrs.get(READY):
            return True
        creator = attrs.get(CREATED_BY)
        waited = time.monotonic() - start
        if creator is None:
            if attrs or waited >= bare_grace:  # an older planner's study, or a creator killed at once
                return False
        elif _creator_gone(creator) or waited >= timeout:
            return False
        time.sleep(POLL)
