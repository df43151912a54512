"""The reward side's user error (standard library only).

:class:`RewardError` subclasses ``ValueError``, which the ``align`` command line reports as one
line on stderr with exit status 2 (``ALIGN_DEBUG=1`` shows the traceback instead): a reward
function that raised, returned something other than one number per sample, or was configured
wrongly, and a reward server that stayed unreachable (:class:`rm.remote.RemoteRewardError`).
"""

from __future__ import annotations


class RewardError(ValueError):
    """A reward source failed or broke its contract; the message names the source (its name and
    its ``rewards[k]`` spec) and what was expected."""
