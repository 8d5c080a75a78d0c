"""What the shared-study tests read back from a ledger."""

from __future__ import annotations

import optuna

from autoaccel.search.ledger import not_a_result


def evaluations(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Trials that really evaluated their candidate (not a reuse of another trial, not cut short)."""
    return [
        trial
        for trial in trials
        if trial.state.is_finished()
        and not not_a_result(trial.user_attrs.get("failure"))
        and "detail.duplicate_of" not in trial.user_attrs
    ]
