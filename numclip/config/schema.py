"""The params schema: one typed section per stage (loaded by numclip.config.loading).

Every section forbids unknown keys, so a typo fails with the key's dotted name instead of being
silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, ValidationInfo, field_validator, model_validator

from numclip.config.methods import MethodBase, MethodConfig, default_methods
from numclip.config.section import MAX_RANKS, Section, output_path, seed_field
from numclip.core.errors import NumclipError

NUMBER_WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
                "eighteen", "nineteen", "twenty"]


# --------------------------------------------------------------------------------------------- data
class SyntheticConfig(Section):
    """The embedded counting dataset: images of 1..num_ranks objects."""

    num_images: int = Field(3000, ge=1, le=1_000_000)
    image_size: int = Field(64, ge=16, le=1024)
    shapes: list[Literal["circle", "square", "triangle"]] = ["circle", "square", "triangle"]
    colours: list[Literal["red", "green", "blue", "yellow", "purple", "orange", "white"]] = [
        "red", "green", "blue", "yellow"]
    min_size_fraction: float = Field(0.07, gt=0, lt=1)
    max_size_fraction: float = Field(0.12, gt=0, lt=1)
    seed: int = seed_field()
    output_dir: str = output_path("data/synthetic", "ingest")

    @model_validator(mode="after")
    def _sizes_ordered(self) -> "SyntheticConfig":
        if self.min_size_fraction > self.max_size_fraction:
            raise ValueError("min_size_fraction must be <= max_size_fraction")
        return self


class SplitConfig(Section):
    """Fractions used when a source has no split (or no val: then val is carved from train)."""

    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)
    seed: int = seed_field()

    @model_validator(mode="after")
    def _sums_to_one(self) -> "SplitConfig":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1.0 (got {total:g})")
        return self


SYNTHETIC_ROOT = "numclip/data/synthetic.py"  # the synthetic source has no files: its generator stands in


class DataConfig(Section):
    source: Literal["synthetic", "table", "folder", "listfile"] = "synthetic"
    num_ranks: int = Field(10, ge=2, le=MAX_RANKS, description="K: labels are integer ranks 0..K-1")
    root: str = Field(
        SYNTHETIC_ROOT, description="what DVC watches for the source's files (the folder holding your "
        "tables, lists and images), so a changed file reruns the pipeline; numclip init sets it")
    path: Optional[str] = None
    split_paths: dict[Literal["train", "val", "test"], str] = {}
    images_root: Optional[str] = None
    manifest: str = output_path("data/manifest.parquet", "ingest")
    rejects: str = output_path("data/rejects.csv", "ingest")
    incoming: str = "incoming"  # data drops: one sub-folder per drop, added to the source's rows
    max_reject_fraction: float = Field(0.05, ge=0, le=1)
    verify_images: bool = True
    split: SplitConfig = SplitConfig()
    fold: Optional[int] = Field(
        None, description="with a fold column: rows of this fold are the test set (or, when they carry "
        "their own splits, the only rows used); null: the data's own split")
    synthetic: SyntheticConfig = SyntheticConfig()


# -------------------------------------------------------------------------------------------- model
ImageEncoder = Literal["vgg16", "resnet50"]  # torchvision CNNs that can replace the arch's image tower


class ModelConfig(Section):
    arch: str = Field("numclip-tiny", description="the open_clip architecture; with image_encoder, the one "
                      "whose text tower, tokenizer and logit scale are used")
    pretrained: Optional[str] = Field(
        None, description="an open_clip pretrained tag (e.g. 'openai') or a local .safetensors/.pt file")
    image_encoder: Optional[ImageEncoder] = Field(
        None, description="a torchvision CNN (vgg16: fc7, 4096-d; resnet50: pooled, 2048-d) with a new "
        "linear projection in place of the arch's image tower; null: the arch's own tower")
    image_weights: Optional[str] = Field(
        None, description="with image_encoder: its torchvision-layout state dict (.safetensors, or .pt/.pth "
        "loaded with weights_only), e.g. an ImageNet or IMDB-WIKI VGG-16; null: random init")
    device: str = "auto"

    @field_validator("image_weights")
    @classmethod
    def _weights_need_an_encoder(cls, value: Optional[str], info: ValidationInfo) -> Optional[str]:
        if value is not None and "image_encoder" in info.data and info.data["image_encoder"] is None:
            raise ValueError("only with model.image_encoder (the weights of a CNN image encoder: set "
                             "model.image_encoder to vgg16 or resnet50)")
        return value


class ConceptConfig(Section):
    """NumCLIP's coarse bins of the fine ranks, each named by a language concept."""

    preset: Optional[Literal["counting", "age", "levels"]] = None  # None: the task preset's
    edges: Optional[list[int]] = None  # lower edges of the bins (fine labels); overrides the preset
    names: Optional[list[str]] = None
    label_shift: int = Field(0, ge=0, description="bins are of y' = label - label_shift (released age: 1)")


@dataclass(frozen=True)
class TaskPreset:
    """What a kind of task means in words, and whether the count-aware pieces apply to it."""

    template: str  # the zero-shot prompt
    concepts: Literal["counting", "age", "levels"]  # NumCLIP's concept bins
    counts: bool  # the count-aware pretraining loss and the counting comparison apply
    first_word: int  # rank words are str(label + first_word) when not number words (counting)


TASK_PRESETS = {
    "counting": TaskPreset("a photo of {} objects.", "counting", True, 1),  # number words one..K
    "age": TaskPreset("a photo of a {} year old person.", "age", False, 0),  # label = age
    "grades": TaskPreset("a photo of grade {}.", "levels", False, 1),  # quality grades 1..K
    "generic": TaskPreset("a photo of rank {}.", "levels", False, 0),  # name your ranks: task.rank_words
}


class TaskConfig(Section):
    """What the ranks mean in words: zero-shot prompts, rank-word initialisation and NumCLIP's concepts.

    `preset` fills in every key left null, and decides whether the count-aware loss applies."""

    preset: Literal["counting", "age", "grades", "generic"] = "counting"
    rank_words: Optional[list[str]] = None  # default: the preset's (number words one..K for counting)
    rank_words_file: Optional[str] = None
    zeroshot_template: Optional[str] = None  # default: the preset's
    concepts: ConceptConfig = ConceptConfig()

    @model_validator(mode="after")
    def _one_source(self) -> "TaskConfig":
        if self.rank_words is not None and self.rank_words_file is not None:
            raise ValueError("give rank_words or rank_words_file, not both")
        if self.zeroshot_template is not None and "{}" not in self.zeroshot_template:
            raise ValueError("zeroshot_template must contain '{}' where the rank word goes")
        return self

    @property
    def counts(self) -> bool:
        return TASK_PRESETS[self.preset].counts

    @property
    def template(self) -> str:
        """The zero-shot prompt: zeroshot_template, or the preset's."""
        return self.zeroshot_template or TASK_PRESETS[self.preset].template

    @property
    def concept_preset(self) -> Optional[str]:
        return self.concepts.preset or TASK_PRESETS[self.preset].concepts


# -------------------------------------------------------------------------------------------- train
class LearningRates(Section):
    """Per parameter group; 0 freezes the group."""

    context: float = Field(1e-3, ge=0)
    rank: float = Field(1e-3, ge=0)
    image_encoder: float = Field(1e-4, ge=0)  # after the pretrain stage; ~1e-5 for real CLIP weights
    text_encoder: float = Field(0.0, ge=0)
    logit_scale: float = Field(0.0, ge=0)
    head: float = Field(1e-3, ge=0)  # NumCLIP's image adapter and fine regressor


class SubsetConfig(Section):
    """The protocols' training subsets (docs/protocols.md); val and test are never touched."""

    kind: Optional[Literal["few_shot", "distribution_shift"]] = None
    shots: int = Field(16, ge=1, description="few_shot: training images kept per label")
    top_k: int = Field(10, ge=1, description="distribution_shift: how many of the most frequent labels")
    keep_fraction: float = Field(0.2, gt=0, le=1, description="distribution_shift: share of their images kept")
    seed: int = seed_field()


class TrainConfig(Section):
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["adamw", "radam"] = "adamw"
    weight_decay: float = Field(0.0, ge=0)
    lr: LearningRates = LearningRates()
    schedule: Literal["cosine", "multistep", "constant"] = "cosine"
    milestones: list[int] = [60]
    gamma: float = Field(0.1, gt=0, le=1)
    select_metric: Literal["mae_argmax", "mae_expectation", "accuracy"] = "mae_argmax"
    select_split: Literal["val", "test"] = Field(
        "val", description="the split the checkpoint is chosen on; test only with allow_test_selection")
    allow_test_selection: bool = Field(
        False, description="the released MORPH code selects on its test file: allowed only on request")
    subset: SubsetConfig = SubsetConfig()
    class_balanced: bool = Field(False, description="sample training images with weight 1/count(label)")
    hflip: bool = True
    freeze_batchnorm: bool = Field(
        False, description="BatchNorm layers normalise with their running statistics and do not update "
        "them: for small per-process batches, and multi-process runs on CPU that match one process")
    seed: int = seed_field()
    num_workers: int = Field(0, ge=0, le=256)
    max_steps_per_epoch: Optional[int] = Field(None, ge=1)
    models_dir: str = output_path("models", "train")
    runs_dir: str = output_path("runs", "train")  # TensorBoard
    metrics_dir: str = output_path("metrics/train", "train")
    plots_dir: str = output_path("plots/training", "train")  # per-epoch validation curves, CSV for `dvc plots`
    checkpoints_dir: str = output_path("checkpoints", "train", "resumable training state, removed once a run ends")
    checkpoint_every_steps: Optional[int] = Field(
        100, ge=1, description="also save the training state every N steps (always at each epoch's end)")

    @model_validator(mode="after")
    def _test_selection_on_request(self) -> "TrainConfig":
        if self.select_split == "test" and not self.allow_test_selection:
            raise ValueError("select_split 'test' picks the checkpoint on the test set, which makes the "
                             "test score optimistic; set train.allow_test_selection: true to reproduce "
                             "code that did this")
        return self


class CountingLossConfig(Section):
    """'Teaching CLIP to Count to Ten': L = L_CLIP + weight * L_count over counterfactual captions."""

    weight: Optional[float] = Field(
        None, ge=0, description="lambda; 0 trains with the plain CLIP loss; null: 1 when the task counts, "
        "0 otherwise (the loss needs captions that name a count)")
    negatives: Literal["one", "all"] = Field(
        "one", description="one random counterfactual number (released) or all 8 others (L_count+)")
    fraction: Optional[float] = Field(
        None, ge=0, le=1, description="share of counting samples in each batch; null: the data's own mix")


class PretrainConfig(Section):
    """Contrastive CLIP training of the backbone on the captioned train split (random-init backbones),
    count-aware by default; a backbone with real pretrained weights is saved unchanged unless
    finetune_pretrained is set."""

    epochs: int = Field(10, ge=0)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    template_caption_prob: float = Field(
        0.5, ge=0, le=1, description="share of captions replaced by task.zeroshot_template for the rank")
    seed: int = seed_field()
    counting: CountingLossConfig = CountingLossConfig()
    finetune_pretrained: bool = Field(
        False, description="with model.pretrained: fine-tune those weights with this loss (lr ~1e-5)")
    output: str = output_path("models/backbone.safetensors", "pretrain")
    metrics: str = output_path("metrics/pretrain.json", "pretrain")


class PlainBackboneConfig(Section):
    """The baseline of the counting comparison: the same pretraining (data, steps, seed) with the
    plain CLIP loss (counting weight 0), and every method trained on it. Its pretrain and train
    outputs are the main ones placed under `root` (numclip.config.paths.plain_twin)."""

    root: str = "comparison/plain"  # outside models/ and metrics/, which evaluate and `dvc metrics` read


COMPARED_METHODS = ("zeroshot", "coop")  # the zero-shot prior and one prompt learner: what the twin trains


class ComparisonConfig(Section):
    """Which baseline backbones the counting comparison trains. dvc.yaml makes the comparison's stages
    from this list, so with [] none of them exists; params.yaml must spell it out for DVC."""

    backbones: Optional[list[Literal["plain"]]] = Field(
        None, description="[plain]: compare with the plain-CLIP-loss twin; []: no comparison; "
        "null (outside DVC): [plain] when the count-aware loss is on")
    methods: Optional[list[str]] = Field(
        None, description="the methods trained on the twin too (stages train_plain@...); null (outside "
        f"DVC): {', '.join(COMPARED_METHODS)} where methods defines them")


class CountingEvalConfig(Section):
    """CountBench-style counting: each image's caption with 'two'..'ten' substituted; argmax = count."""

    split: Literal["val", "test"] = "test"
    countbench_json: Optional[str] = Field(
        None, description="a copy of CountBench.json (fields image_url, text, number)")
    countbench_images: Optional[str] = Field(
        None, description="the folder of the CountBench images you downloaded")
    batch_size: int = Field(128, ge=1)
    metrics: str = output_path("metrics/counting.json", "counting")
    table: str = output_path("metrics/counting.md", "counting")  # the two backbones side by side
    output_dir: str = output_path("artifacts/counting", "counting")  # confusion PNGs, predictions, CountBench rejects


class PrototypesConfig(Section):
    output: str = output_path("artifacts/prototypes.safetensors", "prototypes")
    metrics: str = output_path("metrics/prototypes.json", "prototypes")


# The comparison table's columns: name -> (header, section of metrics/eval/<method>.json, key). `test_cs@k`
# (the share of test images off by at most k ranks) exists for every k of evaluate.cs_k.
COMPARISON_COLUMNS: dict[str, tuple[str, str, str]] = {
    "val_mae": ("val MAE", "val", "mae_argmax"),
    "test_mae": ("test MAE (argmax)", "test", "mae_argmax"),
    "test_mae_expectation": ("test MAE (expectation)", "test", "mae_expectation"),
    "test_mae_median": ("test MAE (median)", "test", "mae_median"),
    "test_accuracy": ("test accuracy", "test", "accuracy"),
    "test_off_by_one": ("test off-by-one", "test", "off_by_one"),
    "test_spearman": ("test Spearman", "test", "spearman"),
    "test_kendall": ("test Kendall tau", "test", "kendall_tau"),
    "test_balanced_accuracy": ("test balanced accuracy", "test", "balanced_accuracy"),
    "test_macro_f1": ("test macro-F1", "test", "macro_f1"),
    "test_ece": ("test ECE", "test", "ece"),
    "test_nll": ("test NLL", "test", "nll"),
    "test_rps": ("test RPS", "test", "rps"),
    "ordinality": ("prototype ordinality", "ordinality", "overall"),
    "coverage": ("test coverage", "conformal", "coverage"),
    "width": ("test interval width", "conformal", "mean_width"),
    "group_mae": ("test group MAE", "test_groups", "mae_argmax"),
}
DEFAULT_COLUMNS = ["val_mae", "test_mae", "test_mae_expectation", "test_accuracy", "test_off_by_one",
                   "test_spearman", "ordinality", "coverage", "width"]


class ConformalConfig(Section):
    """Split conformal prediction intervals, calibrated on the val split (docs/evaluation.md)."""

    alpha: float = Field(0.1, gt=0, lt=1)  # miscoverage: [lo, hi] holds the true rank with probability >= 1 - alpha
    curve_alphas: list[float] = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5]  # the coverage figure's nominal levels

    @field_validator("curve_alphas")
    @classmethod
    def _levels(cls, value: list[float]) -> list[float]:
        if not value or not all(0 < a < 1 for a in value):
            raise ValueError("curve_alphas must be a non-empty list of levels in (0, 1)")
        return value


class EvaluateConfig(Section):
    split: Literal["val", "test"] = "test"
    batch_size: int = Field(128, ge=1)
    conformal: ConformalConfig = ConformalConfig()
    cs_k: list[int] = [0, 1, 2]  # cumulative score CS@k: share of images off by at most k ranks
    group_aggregate: Literal["mean", "median", "majority"] = "mean"  # a manifest's groups (a person, a video)
    columns: list[str] = Field(default_factory=lambda: list(DEFAULT_COLUMNS))  # of COMPARISON_COLUMNS
    metrics_dir: str = output_path("metrics/eval", "evaluate")
    comparison: str = output_path("metrics/comparison.json", "evaluate")  # and the markdown table beside it (.md)
    summary_dir: str = output_path("metrics/summary", "evaluate")  # one JSON per method: `dvc metrics show`'s rows
    plots_dir: str = output_path("plots", "evaluate")  # CSV data for `dvc plots`
    figures_dir: str = output_path("figures", "evaluate")  # PNG for people
    heads_dir: str = output_path("artifacts/heads", "evaluate")

    @field_validator("cs_k")
    @classmethod
    def _cs_levels(cls, value: list[int]) -> list[int]:
        if not all(0 <= k <= MAX_RANKS for k in value) or len(set(value)) != len(value):
            raise ValueError(f"cs_k must hold distinct rank distances in [0, {MAX_RANKS}]")
        return value

    @model_validator(mode="after")
    def _known_columns(self) -> "EvaluateConfig":
        known = [*COMPARISON_COLUMNS, *(f"test_cs@{k}" for k in self.cs_k)]
        unknown = [c for c in self.columns if c not in known]
        if unknown or not self.columns:
            raise ValueError(f"columns: unknown {', '.join(unknown) or '(empty list)'}; choose from {', '.join(known)}")
        return self

    def column(self, name: str) -> tuple[str, str, str]:
        """(header, section, key) of a comparison column."""
        if name.startswith("test_cs@"):
            return f"test CS@{name.removeprefix('test_cs@')}", "test", name.removeprefix("test_")
        return COMPARISON_COLUMNS[name]


class PredictConfig(Section):
    batch_size: int = Field(64, ge=1)


class Params(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    task: TaskConfig = TaskConfig()
    methods: dict[str, MethodConfig] = Field(default_factory=default_methods)
    pretrain: PretrainConfig = PretrainConfig()
    prototypes: PrototypesConfig = PrototypesConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    plain_backbone: PlainBackboneConfig = PlainBackboneConfig()
    comparison: ComparisonConfig = ComparisonConfig()
    counting: CountingEvalConfig = CountingEvalConfig()
    predict: PredictConfig = PredictConfig()

    @field_validator("methods")
    @classmethod
    def _methods_named(cls, v: dict[str, MethodConfig]) -> dict[str, MethodConfig]:
        if not v:
            raise ValueError("at least one method is needed")
        return v

    @model_validator(mode="after")
    def _rank_words_fit(self) -> "Params":
        """A word file with the wrong line count fails when the params load, not after pretraining."""
        self.rank_words()
        return self

    @model_validator(mode="after")
    def _comparison_has_a_difference(self) -> "Params":
        """An unlisted comparison follows the task; a listed one needs a counting loss to compare."""
        unknown = [m for m in self.comparison.methods or [] if m not in self.methods]
        if unknown:
            raise ValueError(f"comparison.methods lists {unknown}, which methods does not define "
                             f"(known: {', '.join(self.methods)})")
        if self.comparison.methods is None:
            self.comparison.methods = [m for m in COMPARED_METHODS if m in self.methods]
        listed = self.comparison.backbones
        if listed is None:
            self.comparison.backbones = ["plain"] if self.count_loss_weight > 0 else []
        elif listed and self.count_loss_weight == 0:
            raise ValueError(
                f"comparison.backbones lists {listed} but pretraining has no counting loss to compare "
                f"against (task.preset '{self.task.preset}', pretrain.counting.weight "
                f"{self.pretrain.counting.weight}): set comparison.backbones: [] (or use task.preset counting)")
        return self

    @property
    def count_loss_weight(self) -> float:
        """lambda of the count-aware loss: pretrain.counting.weight, or 1 for counting tasks, 0 otherwise."""
        weight = self.pretrain.counting.weight
        return weight if weight is not None else float(self.task.counts)

    @property
    def compares_backbones(self) -> bool:
        """Whether the counting comparison (plain twin, its trained methods, the counting stage) runs."""
        return "plain" in (self.comparison.backbones or [])

    def method(self, name: str) -> MethodBase:
        if name not in self.methods:
            raise NumclipError(
                f"unknown method '{name}': params 'methods' has {', '.join(sorted(self.methods))}")
        return self.methods[name]

    def rank_words(self) -> list[str]:
        """K words naming the ranks, from the task section (by default the preset's: number words
        one..K for counting, the labels as numbers otherwise)."""
        k = self.data.num_ranks
        if self.task.rank_words_file is not None:
            words = read_word_file(self.task.rank_words_file)
            where = f"task.rank_words_file ({self.task.rank_words_file})"
        elif self.task.rank_words is not None:
            words, where = self.task.rank_words, "task.rank_words"
        else:
            preset = TASK_PRESETS[self.task.preset]
            if self.task.preset == "counting" and k <= len(NUMBER_WORDS):
                return NUMBER_WORDS[:k]
            return [str(i + preset.first_word) for i in range(k)]
        if len(words) != k:
            raise NumclipError(f"{where} has {len(words)} words but data.num_ranks is {k}")
        return words


def read_word_file(path: str | Path) -> list[str]:
    """One word (or short phrase) per non-empty line; `_` reads as a space, as in the released code
    (`young_adult` is the two words "young adult")."""
    p = Path(path)
    if not p.is_file():
        raise NumclipError(f"rank words file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise NumclipError(f"rank words file {p} is not UTF-8 text: {e}") from None
    return [as_prompt_text(line) for line in text.splitlines() if line.strip()]


def as_prompt_text(text: str) -> str:
    """How the released code reads words and context inits: `_` is a space."""
    return text.replace("_", " ").strip()


# --------------------------------------------------------------------------------- loading, overrides


