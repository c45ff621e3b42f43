"""The base of every params section: unknown keys are errors, assignments are validated too, and
types are strict (`true` is not an integer, `'3'` not a number), with no NaN or infinite values."""

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


MAX_RANKS = 100_000  # far above any ordinal task; a typo's 10**26 ranks would never finish
MAX_SEED = 2**32 - 1  # what NumPy's seeding takes


def seed_field() -> Any:
    """A random seed: a non-negative integer that NumPy, torch and Python all accept."""
    return Field(0, ge=0, le=MAX_SEED)


def output_path(default: str, stage: str, description: Optional[str] = None) -> Any:
    """A path the pipeline writes, and the stage that writes it: numclip.config.paths lists and
    rebases every such field, so each output path is written down only here."""
    return Field(default, description=description, json_schema_extra={"written_by": stage})
