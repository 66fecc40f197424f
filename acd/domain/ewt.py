"""Estimated wait time of a queue, from live figures rather than from the last answered call.

Two views, and the estimate is the larger:
- position: with `staffed` agents each taking `handle` seconds per call (talk and wrap-up), a
  caller with `ahead` callers before it waits for `ahead + 1 - free` completions, and completions
  come every `handle / staffed` seconds;
- load (Erlang C): with callers arriving at `rate` per second, the offered load is
  `rate * handle` erlangs; while it is below `staffed` the mean wait of a new arrival is
  `C(staffed, load) * handle / (staffed - load)`. At or above `staffed` the queue only grows and
  the position view is the honest one.
Pure: every figure is a parameter.
"""

from __future__ import annotations

NO_AGENT_SECONDS = 24 * 3600.0  # nobody staffed: announce "a long time", branch as such


def erlang_c(agents: int, load: float) -> float:
    """Probability that an arrival has to wait (Erlang C), for `load` erlangs on `agents`.

    >>> round(erlang_c(2, 1.0), 4)
    0.3333
    """
    if agents <= 0:
        return 1.0
    if load <= 0:
        return 0.0
    if load >= agents:
        return 1.0
    # Erlang B by its stable recurrence, then C from B.
    b = 1.0
    for k in range(1, agents + 1):
        b = load * b / (k + load * b)
    return agents * b / (agents - load * (1 - b))


def estimated_wait(
    *, ahead: int, free: int, staffed: int, handle: float, rate: float = 0.0
) -> float:
    """Seconds a caller with `ahead` callers before it can expect to wait.

    >>> estimated_wait(ahead=0, free=1, staffed=3, handle=120)
    0.0
    >>> estimated_wait(ahead=5, free=0, staffed=3, handle=120)   # 6 completions, one each 40 s
    240.0
    """
    if staffed <= 0:
        return NO_AGENT_SECONDS
    by_position = max(0, ahead + 1 - free) * handle / staffed
    load = rate * handle
    if load < staffed:
        by_load = erlang_c(staffed, load) * handle / (staffed - load)
    else:
        by_load = by_position
    return max(by_position, by_load if ahead >= free else 0.0)


def escalated_wait(
    ewt: float, waited: float, steps: list[tuple[float, int | None]], best_free_level: int
) -> float:
    """The estimate of a queue whose callers accept lower levels as they wait (escalation
    steps: (after seconds, min_level or None)): when an agent who is free now will be accepted
    at a step, the caller waits at most until that step. `best_free_level`: the highest level
    among the skill's free agents (0: none free). An approximation: callers ahead may take that
    agent first.

    >>> escalated_wait(240.0, 0.0, [(20.0, 1), (60.0, None)], best_free_level=4)
    20.0
    >>> escalated_wait(240.0, 5.0, [(20.0, 5)], best_free_level=4)   # level 4 is never accepted
    240.0
    >>> escalated_wait(10.0, 0.0, [(20.0, 1)], best_free_level=4)
    10.0
    """
    for after, level in steps:
        if level is not None and best_free_level >= level:
            return min(ewt, max(0.0, after - waited))
    return ewt
