"""Every path the pipeline writes: listed from the schema (the fields made with `output_path`), rebased
for the counting comparison's plain twin and for protocol runs, and each method's own files.

A path is written down once, as the default of its params field; dvc.yaml refers to the same keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from numclip.config.schema import Params
from numclip.config.section import Section

# the stages whose outputs the plain twin has of its own (it shares the data and the prototypes)
TWIN_STAGES = ("pretrain", "train")


def output_keys(stages: Iterable[str] | None = None, model: type[BaseModel] = Params,
                prefix: str = "") -> list[str]:
    """Dotted keys of the output paths (of `stages`, or all), in the schema's order."""
    wanted = None if stages is None else set(stages)
    keys = []
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if "written_by" in extra:
            if wanted is None or extra["written_by"] in wanted:
                keys.append(prefix + name)
        elif isinstance(field.annotation, type) and issubclass(field.annotation, Section):
            keys += output_keys(stages, field.annotation, f"{prefix}{name}.")
    return keys


def get_key(params: BaseModel, dotted: str) -> Any:
    node: Any = params
    for key in dotted.split("."):
        node = getattr(node, key)
    return node


def output_paths(params: Params) -> list[str]:
    """Every file or folder the stages write (the comparison's markdown and the plain twin's too):
    what `numclip init` clears so that a new dataset's results never mix with the old ones."""
    paths = [str(get_key(params, k)) for k in output_keys()]
    paths.append(str(Path(params.evaluate.comparison).with_suffix(".md")))
    return [*paths, params.plain_backbone.root]


def under(folder: str | Path, path: str) -> Path:
    """`path` placed under `folder`; an absolute path keeps its parts below the root, so it too lands
    inside `folder` and never overwrites the pipeline's own file."""
    p = Path(path)
    return Path(folder) / (p.relative_to(p.anchor) if p.is_absolute() else p)


def rebased(params: Params, folder: str | Path, stages: Iterable[str]) -> Params:
    """A copy of `params` whose outputs of `stages` lie under `folder` (their layout kept)."""
    out = params.model_copy(deep=True)
    for key in output_keys(stages):
        *parents, last = key.split(".")
        node = get_key(out, ".".join(parents)) if parents else out
        setattr(node, last, str(under(folder, get_key(params, key))))
    return out


def plain_twin(params: Params) -> Params:
    """These params for the counting comparison's baseline: the plain CLIP loss in pretraining, and
    the backbone, models and training records under plain_backbone.root."""
    plain = rebased(params, params.plain_backbone.root, TWIN_STAGES)
    plain.pretrain.counting.weight = 0.0
    plain.comparison.backbones = []  # the twin has no twin of its own
    return plain


def model_path(params: Params, method: str) -> Path:
    return Path(params.train.models_dir) / f"{method}.safetensors"


def head_path(params: Params, method: str) -> Path:
    return Path(params.evaluate.heads_dir) / f"{method}.safetensors"


def metrics_path(params: Params, method: str) -> Path:
    return Path(params.evaluate.metrics_dir) / f"{method}.json"
