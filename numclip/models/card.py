"""The model card: what a saved model file records about itself, typed.

It is everything needed to rebuild the model with no params file (method, backbone architecture,
words, concepts, preprocessing) plus the training run's record. It is stored as JSON in the
safetensors metadata under "numclip"; a card that does not parse is a clear error naming the file.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Optional, Union

from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from numclip.config.methods import MethodConfig, stored_method
from numclip.config.schema import ImageEncoder
from numclip.config.section import MAX_RANKS
from numclip.core.errors import NumclipError
from numclip.core.metadata import first_problem, json_object

FORMAT_VERSION = 1


class Record(BaseModel):
    """A record read back from a file: types are checked strictly (a `true` is not a 1)."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False)


class BackboneCard(Record):
    arch: str
    pretrained: Optional[str] = None
    image_encoder: Optional[ImageEncoder] = None  # a torchvision CNN in place of the arch's image tower


class PreprocessCard(BaseModel):
    """open_clip's image preprocessing (its PreprocessCfg), checked when read back from a model or a
    backbone file, so a damaged file cannot hand the transforms values they would crash on."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)  # open_clip's own keys, as its merge keeps

    size: Union[int, tuple[int], tuple[int, int]] = 224
    mode: Literal["RGB"] = "RGB"
    mean: tuple[float, float, float] = OPENAI_DATASET_MEAN
    std: tuple[float, float, float] = OPENAI_DATASET_STD
    interpolation: Literal["bicubic", "bilinear", "random"] = "bicubic"
    resize_mode: Literal["shortest", "longest", "squash"] = "shortest"
    fill_color: int = Field(0, ge=0, le=255)

    @field_validator("size")
    @classmethod
    def _sides(cls, value: Any) -> Any:
        if not all(1 <= side <= 4096 for side in (value if isinstance(value, tuple) else (value,))):
            raise ValueError("image sides must lie in [1, 4096]")
        return value

    @field_validator("std")
    @classmethod
    def _positive(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not all(x > 0 for x in value):
            raise ValueError("std must be positive")
        return value


class ConceptsCard(Record):
    """NumCLIP's bins: the fine labels each concept covers."""

    edges: list[int]
    names: list[str]
    label_shift: int = 0


class ModelCard(Record):
    model_config = ConfigDict(extra="allow")  # a newer version's extra records are kept

    format: int = Field(FORMAT_VERSION, ge=1, le=FORMAT_VERSION)
    numclip_version: str
    method: str
    method_config: MethodConfig
    model: BackboneCard
    preprocess: Optional[PreprocessCard] = None
    num_ranks: int = Field(ge=1, le=MAX_RANKS)
    rank_words: list[str]
    prompt_words: list[str] = Field(min_length=1)  # the text classes: rank words, or concept names for a concept head
    concepts: Optional[ConceptsCard] = None
    zeroshot_template: str
    best_epoch: Optional[int] = Field(None, ge=0)  # set by training: the epoch whose weights were kept
    run: Optional[dict[str, Any]] = None  # seed and versions of the run that trained it

    @field_validator("method_config", mode="before")
    @classmethod
    def _lenient_method(cls, value: Any) -> Any:
        return stored_method(value) if isinstance(value, dict) else value

    @field_validator("preprocess", mode="before")
    @classmethod
    def _lax_preprocess(cls, value: Any) -> Any:  # JSON has lists where open_clip has tuples
        return PreprocessCard.model_validate(value, strict=False) if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _consistent(self) -> "ModelCard":
        if len(self.rank_words) != self.num_ranks:
            raise ValueError(f"{len(self.rank_words)} rank_words for num_ranks {self.num_ranks}")
        if self.concepts is not None and len(self.concepts.names) != len(self.prompt_words):
            raise ValueError(f"{len(self.concepts.names)} concepts for {len(self.prompt_words)} prompt_words")
        if self.concepts is None and len(self.prompt_words) != self.num_ranks:
            raise ValueError(f"{len(self.prompt_words)} prompt_words for num_ranks {self.num_ranks}")
        return self

    def preprocess_cfg(self) -> Optional[dict[str, Any]]:
        """The preprocessing as the dict open_clip's transforms take."""
        return None if self.preprocess is None else self.preprocess.model_dump()

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"))

    @classmethod
    def from_json(cls, text: str, source: str) -> "ModelCard":
        try:
            return cls.model_validate(json_object(text, source, "model card ('numclip' metadata)"))
        except ValidationError as e:
            raise NumclipError(f"{source}: model card key {first_problem(e)} "
                               "(the file is damaged or not written by numclip; export it again)") from None

    def head_metadata(self) -> dict[str, Any]:
        """What an exported head (prototypes file) carries: enough to name its ranks and preprocess."""
        return self.model_dump(mode="json", include={"method", "model", "rank_words", "prompt_words", "preprocess"})
