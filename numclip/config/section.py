"""The base of every params section: unknown keys are errors, and assignments are validated too."""

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


def output_path(default: str, stage: str, description: Optional[str] = None) -> Any:
    """A path the pipeline writes, and the stage that writes it: numclip.config.paths lists and
    rebases every such field, so each output path is written down only here."""
    return Field(default, description=description, json_schema_extra={"written_by": stage})
