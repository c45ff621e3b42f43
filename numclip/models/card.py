"""The model card: what a saved model file records about itself, typed.

It is everything needed to rebuild the model with no params file (method, backbone architecture,
words, concepts, preprocessing) plus the training run's record. It is stored as JSON in the
safetensors metadata under "numclip"; a card that does not parse is a clear error naming the file.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from numclip.config.methods import MethodConfig, stored_method
from numclip.core.errors import NumclipError

FORMAT_VERSION = 1


class BackboneCard(BaseModel):
    arch: str
    pretrained: Optional[str] = None


class ConceptsCard(BaseModel):
    """NumCLIP's bins: the fine labels each concept covers."""

    edges: list[int]
    names: list[str]
    label_shift: int = 0


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")  # a newer version's extra records are kept, not refused

    format: int = FORMAT_VERSION
    numclip_version: str
    method: str
    method_config: MethodConfig
    model: BackboneCard
    preprocess: Optional[dict[str, Any]] = None
    num_ranks: int = Field(ge=1)
    rank_words: list[str]
    prompt_words: list[str]  # the text classes: rank words, or concept names for a concept head
    concepts: Optional[ConceptsCard] = None
    zeroshot_template: str
    best_epoch: Optional[int] = None  # set by training: the epoch whose weights were kept
    run: Optional[dict[str, Any]] = None  # seed and versions of the run that trained it

    @field_validator("method_config", mode="before")
    @classmethod
    def _lenient_method(cls, value: Any) -> Any:
        return stored_method(value) if isinstance(value, dict) else value

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"))

    @classmethod
    def from_json(cls, text: str, source: str) -> "ModelCard":
        try:
            return cls.model_validate(json.loads(text))
        except json.JSONDecodeError as e:
            raise NumclipError(f"{source}: its model card is not JSON: {e}") from None
        except ValidationError as e:
            first = e.errors()[0]
            key = ".".join(str(p) for p in first["loc"]) or "(card)"
            raise NumclipError(f"{source}: model card key {key}: {first['msg']}") from None

    def head_metadata(self) -> dict[str, Any]:
        """What an exported head (prototypes file) carries: enough to name its ranks and preprocess."""
        return self.model_dump(mode="json", include={"method", "model", "rank_words", "prompt_words", "preprocess"})
