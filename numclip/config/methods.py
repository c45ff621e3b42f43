"""Methods as typed variants: one params class per prompt learner, chosen by its `learner` key.

Each learner owns its fields (a key that another learner uses is an unknown key here), and every
combination that cannot train or means nothing is refused when the params load, naming the method
and the keys. The classes that build a learner live in numclip.models.prompts (`LEARNERS`), under the
same names; adding a learner is one class here and one there (docs/architecture.md).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Optional, Union, get_args

from pydantic import Field, TypeAdapter, model_validator

from numclip.config.section import MAX_RANKS, Section

HeadName = Literal["ranks", "concepts"]  # concepts: NumCLIP's coarse-to-fine head
HEADS = get_args(HeadName)  # numclip.models.ordinal.HEADS builds them
CONCEPT_HEAD_KEYS = ("adapter_alpha", "regressor_anchor", "regressor_shift")

# The loss terms' weights, in the order the objective sums them (numclip.training.objective.TERMS).
TERM_WEIGHTS = ("ce", "kl", "ranking_ce", "ranking_kl", "regression", "pairwise", "soft_ce", "dldl")


class LossWeights(Section):
    """Weights of the loss terms; 0 switches a term off."""

    ce: float = Field(1.0, ge=0)  # cross-entropy over the head's classes
    kl: float = Field(1.0, ge=0)  # OrdinalCLIP's text->image KL
    ranking_ce: float = Field(0.0, ge=0)  # NumCLIP's ranking-weighted cross-entropy
    ranking_kl: float = Field(0.0, ge=0)  # NumCLIP's text->image ranking-weighted KL
    regression: float = Field(0.0, ge=0)  # L1 on the fine regressor (concept head only)
    pairwise: float = Field(0.0, ge=0)  # L2RCLIP's cross-modal ordinal pairwise loss
    soft_ce: float = Field(0.0, ge=0)  # cross-entropy against Gaussian soft labels around the head's class
    dldl: float = Field(0.0, ge=0)  # DLDL-v2: KL to the Gaussian soft labels + dldl_expectation * |E[k] - y|
    # The terms' settings
    ranking_mode: Literal["faithful", "fixed"] = "faithful"
    soft_sigma: float = Field(1.0, gt=0)  # soft_ce and dldl: the soft labels' sigma, in the head's classes
    dldl_expectation: float = Field(1.0, ge=0)  # dldl: the weight of its expectation term
    class_weights: Literal["none", "inverse", "inverse_sqrt"] = "none"  # ce and soft_ce: 1/n_k or 1/sqrt(n_k)

    @model_validator(mode="after")
    def _something_to_minimise(self) -> "LossWeights":
        if all(getattr(self, t) == 0 for t in TERM_WEIGHTS):
            raise ValueError(f"every loss weight ({', '.join(TERM_WEIGHTS)}) is 0: nothing would be trained")
        return self

    @model_validator(mode="after")
    def _settings_apply(self) -> "LossWeights":
        """A setting changed for terms that are all off would silently do nothing."""
        used_by = {"soft_sigma": ("soft_ce", "dldl"), "dldl_expectation": ("dldl",), "class_weights": ("ce", "soft_ce")}
        for key, terms in used_by.items():
            if getattr(self, key) != type(self).model_fields[key].default and not any(getattr(self, t) for t in terms):
                raise ValueError(f"{key} only applies to {' and '.join(terms)}, whose weights are 0")
        return self


class MethodBase(Section):
    """What every method has: the head that turns prototypes into ranks, and the loss."""

    trains: ClassVar[bool] = True  # False: nothing to learn, the model is saved as built
    head: HeadName = "ranks"
    adapter_alpha: float = Field(0.8, ge=0, le=1)
    regressor_anchor: Literal["lower_edge", "centre"] = "lower_edge"
    regressor_shift: bool = True  # False: plain expectation over the bin anchors
    loss: LossWeights = LossWeights()

    @model_validator(mode="after")
    def _head_keys_fit(self) -> "MethodBase":
        if self.head == "ranks":
            fields = type(self).model_fields
            stray = [k for k in CONCEPT_HEAD_KEYS if getattr(self, k) != fields[k].default]
            if stray:
                raise ValueError(f"{', '.join(stray)} only apply to head: concepts (this method has head: ranks)")
            if self.loss.regression > 0:
                raise ValueError("loss.regression needs head: concepts (the fine regressor)")
        return self

    def summary(self) -> dict[str, Any]:
        """The method's own settings, flat, for TensorBoard's hparams."""
        return {k: v if isinstance(v, (int, float, bool)) else str(v)
                for k, v in self.model_dump(exclude={"loss"}).items()}


class FixedMethod(MethodBase):
    """Zero-shot CLIP: the task's template with each rank word, encoded as text. Nothing is trained."""

    trains: ClassVar[bool] = False
    learner: Literal["fixed"]

    @model_validator(mode="after")
    def _nothing_to_train(self) -> "FixedMethod":
        if self.head != "ranks":
            raise ValueError("learner: fixed trains nothing, but head: concepts needs a trained adapter and "
                             "regressor: use learner: plain")
        if self.loss != LossWeights():
            raise ValueError("learner: fixed trains nothing, so loss has no effect: remove it")
        return self


class ContextMethod(MethodBase):
    """Learned prompts: context vectors and rank embeddings (CoOp's layout)."""

    context_init: Optional[str] = "a photo of"  # None: random N(0, 0.02^2) context of n_ctx tokens
    n_ctx: int = Field(4, ge=1, le=64)
    rank_specific_context: bool = False
    rank_position: Literal["tail", "front", "middle"] = "tail"
    rank_init: Literal["words", "random"] = "words"
    rank_words_file: Optional[str] = Field(
        None, description="one word per line: K lines (plain) or num_base_ranks lines (interpolated)")
    tokens_per_rank: Optional[int] = Field(1, ge=1, le=16)  # None: each rank word's own token count


class PlainMethod(ContextMethod):
    """CoOp: one independent learnable embedding per rank."""

    learner: Literal["plain"]

    @model_validator(mode="after")
    def _own_lengths_fit(self) -> "PlainMethod":
        if self.tokens_per_rank is None and (self.rank_init != "words" or self.rank_position != "tail"):
            raise ValueError("tokens_per_rank: null (each word's own length) needs rank_init: words and "
                             "rank_position: tail")
        return self


class InterpolatedMethod(ContextMethod):
    """OrdinalCLIP: K rank embeddings blended from num_base_ranks learned ones."""

    learner: Literal["interpolated"]
    num_base_ranks: int = Field(3, ge=1, le=MAX_RANKS)
    interpolation: Literal["linear", "inv_prop", "piecewise", "gaussian"] = "linear"
    gaussian_bandwidth: Optional[float] = Field(None, gt=0)

    @model_validator(mode="after")
    def _fits(self) -> "InterpolatedMethod":
        if self.head == "concepts":
            raise ValueError("head: concepts learns one embedding per concept: use learner: plain")
        if self.tokens_per_rank is None:
            raise ValueError("tokens_per_rank: null (each word's own length) needs learner: plain")
        return self


class ProbeMethod(MethodBase):
    """The language-free baseline every published table reports: the image encoder with a trained head
    over the K ranks, its weights initialised at random (no text encoder is ever run)."""

    learner: Literal["probe"]
    probe: Literal["linear", "cosine"] = "linear"  # linear: W f + b; cosine: s cos(f, w_k), as the other heads

    @model_validator(mode="after")
    def _rank_head(self) -> "ProbeMethod":
        if self.head != "ranks":
            raise ValueError("learner: probe has one weight vector per rank: use head: ranks")
        return self


MethodConfig = Annotated[Union[FixedMethod, PlainMethod, InterpolatedMethod, ProbeMethod],
                         Field(discriminator="learner")]
METHOD_VARIANTS = {"fixed": FixedMethod, "plain": PlainMethod, "interpolated": InterpolatedMethod,
                   "probe": ProbeMethod}
_ADAPTER: TypeAdapter = TypeAdapter(MethodConfig)


def method_config(**fields: Any) -> MethodBase:
    """A method's params from keyword arguments (the variant is chosen by `learner`)."""
    return _ADAPTER.validate_python(fields)


def stored_method(fields: dict[str, Any]) -> MethodBase:
    """A method read back from a model file: keys its variant does not have (written by an older
    version, which kept every learner's keys) are dropped rather than refused."""
    learner = fields.get("learner")
    variant = METHOD_VARIANTS.get(learner) if isinstance(learner, str) else None
    if variant is None:
        return method_config(**fields)  # the union's own error names the learner
    return variant.model_validate({k: v for k, v in fields.items() if k in variant.model_fields})


NUMCLIP_LOSS = dict(ce=0.0, kl=0.0, ranking_ce=1.0, ranking_kl=1.0, regression=1.0)  # released: all 1.0


def default_methods() -> dict[str, MethodBase]:
    numclip = dict(learner="plain", head="concepts", tokens_per_rank=None)
    return {
        "zeroshot": method_config(learner="fixed"),
        "coop": method_config(learner="plain"),
        "ordinalclip": method_config(learner="interpolated", num_base_ranks=3, interpolation="linear"),
        "ordinalclip_l2r": method_config(learner="interpolated", num_base_ranks=3, interpolation="linear",
                                         loss=LossWeights(pairwise=1.0)),
        "numclip_faithful": method_config(**numclip, loss=LossWeights(**NUMCLIP_LOSS, ranking_mode="faithful")),
        "numclip_fixed": method_config(**numclip, loss=LossWeights(**NUMCLIP_LOSS, ranking_mode="fixed")),
        "linear_probe": method_config(learner="probe", loss=LossWeights(kl=0.0)),
    }
