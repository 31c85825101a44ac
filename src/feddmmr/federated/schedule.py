"""Which rounds validate (the seed's dynamic validation frequency), and early stopping.

Rounds are numbered from 1. Default: rounds before `warmup_rounds` validate every
`warmup_every` rounds, later rounds every `every` rounds, and the last round always. With 50
rounds that is 19 validations instead of 50; with 25 rounds, 7.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ValidationSchedule:
    num_rounds: int
    validate_every: int | None = None  # fixed period; None = the dynamic schedule
    warmup_rounds: int = 20
    warmup_every: int = 5
    every: int = 2

    def __post_init__(self) -> None:
        for name in ("warmup_every", "every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.validate_every is not None and self.validate_every < 1:
            raise ValueError(f"validate_every must be >= 1, got {self.validate_every}")

    def validates(self, round_number: int) -> bool:
        if round_number == self.num_rounds:
            return True
        if self.validate_every is not None:
            return round_number % self.validate_every == 0
        period = self.warmup_every if round_number < self.warmup_rounds else self.every
        return round_number % period == 0

    def next_validation(self, round_number: int) -> int:
        return next(r for r in range(round_number + 1, self.num_rounds + 1) if self.validates(r))

    def describe(self) -> str:
        if self.validate_every is not None:
            return f"every {self.validate_every} rounds and the last"
        return (
            f"every {self.warmup_every} rounds before round {self.warmup_rounds}, "
            f"then every {self.every}, and the last"
        )


@dataclass
class EarlyStopping:
    """Patience counted in validated rounds, on a metric where higher is better."""

    patience: int
    best_value: float = float("-inf")
    best_round: int = 0
    bad_validations: int = 0

    def update(self, round_number: int, value: float) -> bool:
        """Record a validation; True when it is the new best."""
        if value > self.best_value:
            self.best_value, self.best_round, self.bad_validations = value, round_number, 0
            return True
        self.bad_validations += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_validations >= self.patience
