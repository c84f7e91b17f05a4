"""Input checks shared by nodes: errors that name the node, the input and what is accepted."""

from __future__ import annotations


def check_percent_window(node: str, start_percent: float, end_percent: float) -> None:
    if start_percent > end_percent:
        raise ValueError(f"{node}: start_percent ({start_percent}) must not exceed end_percent ({end_percent}); "
                         "both lie in 0.0–1.0")
