"""The schema of params.yaml: typed, validated settings for every stage.

Each stage calls :func:`load_params` before it does any work. The whole file is
validated, so a misspelled key anywhere is caught on the first stage that runs,
and the error message names the key path, the value, the rule and the fix.

The file is parsed with ``yaml.safe_load``, which rejects tags that construct
Python objects (``!!python/object`` and friends).
"""

from __future__ import annotations

import difflib
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from stepbystep.errors import ParamsError

DEFAULT_PARAMS_FILE = "params.yaml"

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Seed = Annotated[int, Field(ge=0, lt=2**32)]
Fraction = Annotated[float, Field(gt=0, lt=1)]
Probability = Annotated[float, Field(ge=0, le=1)]

# Names become folder names, MLflow run names and DVC stage names.
Name = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$", max_length=64)]


class Section(BaseModel):
    """A params section: strict types and no unknown keys."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --- shared settings ---------------------------------------------------------


class SeedsParams(Section):
    """Seeds shared by the training stages."""

    training: Seed = Field(description="seeds torch, NumPy, random and sampler generators before the epoch loop")


class TrackingParams(Section):
    """MLflow settings."""

    experiment_name: Annotated[str, Field(min_length=1, max_length=200)]
    tensorboard: bool = Field(description="write TensorBoard logs under runs/<model>")


# --- generate_data -----------------------------------------------------------


class RegressionDataParams(Section):
    """Synthetic linear regression data: ``y = true_b + true_w * x + noise * N(0, 1)``."""

    n_samples: Annotated[int, Field(ge=2)]
    true_w: float
    true_b: float
    noise: Annotated[float, Field(ge=0)]
    seed: Seed


class MoonsDataParams(Section):
    """scikit-learn's two interleaving half circles."""

    n_samples: Annotated[int, Field(ge=4)]
    noise: Annotated[float, Field(ge=0)]
    seed: Seed


class GenerateDataParams(Section):
    regression: RegressionDataParams
    moons: MoonsDataParams


# --- build_images ------------------------------------------------------------


class BuildImagesParams(Section):
    """Synthetic images of one straight or diagonal line each."""

    n_images: Annotated[int, Field(ge=2)]
    img_size: Annotated[int, Field(ge=2, le=1024)]
    seed: Seed


# --- import_data -------------------------------------------------------------

# Dataset names the pipeline's own stages write under data/.
RESERVED_DATASET_NAMES = ("regression", "moons", "images", "splits")


class ImportDataParams(Section):
    """User data to import as a dataset: a CSV table or an image folder with one subfolder per class."""

    kind: Literal["table", "images"]
    path: Annotated[str, Field(min_length=1)] = Field(description="file or folder, relative to the project root")
    task: Literal["regression", "binary"]
    positive_class: str | None = Field(
        default=None, description="binary tasks: the target value or class folder labelled 1; all others are 0"
    )
    features: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, description="tables: input columns")
    target: Annotated[str, Field(min_length=1)] | None = Field(default=None, description="tables: target column")
    classes: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None, description="images: class folders to import; null imports every subfolder"
    )
    image_size: list[PositiveInt] | None = Field(
        default=None, description="images: [height, width] to resize to; null requires equal sizes"
    )
    channels: Literal[1, 3] | None = Field(default=None, description="images: 1 for grayscale, 3 for RGB")

    @field_validator("positive_class", mode="before")
    @classmethod
    def _integer_to_text(cls, value: Any) -> Any:
        # A CSV cell or a folder name is text, but YAML reads `positive_class: 1` as an integer.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("classes", mode="before")
    @classmethod
    def _integers_to_text(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [str(item) if isinstance(item, int) and not isinstance(item, bool) else item for item in value]
        return value

    @model_validator(mode="after")
    def _check(self) -> ImportDataParams:
        path = Path(self.path)
        if path.is_absolute() or ".." in path.parts:
            raise ValueError(
                f"path {self.path!r} must be relative to the project root and stay inside it, so that "
                "DVC tracks it and experiments find it. Fix: copy or link the data into the project "
                "and give its relative path"
            )
        if self.kind == "table":
            self._check_table()
        else:
            self._check_images()
        if self.task == "binary" and self.positive_class is None:
            raise ValueError(
                "task: binary needs positive_class, the class labelled 1. "
                "Fix: add positive_class with a value of the target column or a class folder name"
            )
        if self.task == "regression" and self.positive_class is not None:
            raise ValueError(
                "positive_class applies only to task: binary. Fix: remove positive_class or set task to binary"
            )
        return self

    def _check_table(self) -> None:
        unused = [key for key in ("classes", "image_size", "channels") if getattr(self, key) is not None]
        if unused:
            raise ValueError(
                f"{', '.join(unused)} apply only to kind: images. Fix: remove {', '.join(unused)}"
            )
        if not self.features or self.target is None:
            raise ValueError(
                "kind: table needs features (a list of column names) and target (one column name). "
                "Fix: add features and target"
            )
        duplicates = sorted({name for name in self.features if self.features.count(name) > 1})
        if duplicates:
            raise ValueError(f"features lists {duplicates[0]!r} twice. Fix: list every column once")
        if self.target in self.features:
            raise ValueError(
                f"target column {self.target!r} is also listed in features, which would leak the "
                "target into the inputs. Fix: remove it from features"
            )

    def _check_images(self) -> None:
        unused = [key for key in ("features", "target") if getattr(self, key) is not None]
        if unused:
            raise ValueError(f"{', '.join(unused)} apply only to kind: table. Fix: remove {', '.join(unused)}")
        if self.task != "binary":
            raise ValueError("kind: images supports task: binary only. Fix: set task to binary")
        if self.channels is None:
            raise ValueError("kind: images needs channels: 1 (grayscale) or 3 (RGB). Fix: add channels")
        if self.image_size is not None and len(self.image_size) != 2:
            raise ValueError(
                f"image_size must be [height, width], got {len(self.image_size)} values. "
                "Fix: set image_size to two numbers such as [28, 28], or to null"
            )
        if self.classes is not None:
            if len(set(self.classes)) != len(self.classes):
                raise ValueError("classes lists a folder twice. Fix: list every class folder once")
            if len(self.classes) < 2:
                raise ValueError(
                    "classes must name at least 2 class folders for a binary task. "
                    "Fix: add a class folder, or set classes to null to import every subfolder"
                )
            if self.positive_class is not None and self.positive_class not in self.classes:
                raise ValueError(
                    f"positive_class {self.positive_class!r} is not one of classes {self.classes}. "
                    "Fix: add it to classes or choose one of them"
                )


# --- split -------------------------------------------------------------------


class SplitParams(Section):
    """The split of one dataset into training and validation indices."""

    method: Literal["random_split", "train_test_split"]
    train_fraction: Fraction
    val_fraction: Fraction
    seed: Seed
    stratify: bool

    @model_validator(mode="after")
    def _check(self) -> SplitParams:
        total = self.train_fraction + self.val_fraction
        if not math.isclose(total, 1.0, abs_tol=1e-9):
            raise ValueError(
                f"train_fraction + val_fraction must equal 1, got "
                f"{self.train_fraction} + {self.val_fraction} = {total:g}. "
                f"Fix: set val_fraction to {1 - self.train_fraction:g}"
            )
        if self.stratify and self.method != "train_test_split":
            raise ValueError(
                "stratify: true needs method: train_test_split, because random_split "
                "cannot stratify. Fix: set method to train_test_split or stratify to false"
            )
        return self


# --- train_regression --------------------------------------------------------


class TrainingParams(Section):
    """Optimization settings shared by every trained model."""

    model_seed: Seed = Field(description="seeds torch right before the model is created")
    epochs: PositiveInt
    lr: PositiveFloat
    batch_size: PositiveInt | None = Field(description="null trains on the full batch")
    checkpoint_every: PositiveInt = Field(description="epochs between checkpoints")
    clip_grad_norm: PositiveFloat | None = None
    early_stopping_patience: PositiveInt | None = None
    nproc_per_node: PositiveInt = Field(
        default=1,
        description="processes that train with DistributedDataParallel under torchrun; 1 trains in the stage's process",
    )

    @model_validator(mode="after")
    def _check_processes(self) -> TrainingParams:
        if self.batch_size is not None and self.batch_size < self.nproc_per_node:
            raise ValueError(
                f"batch_size {self.batch_size} is smaller than nproc_per_node {self.nproc_per_node}, so some "
                "processes would train on no sample. Fix: set batch_size to at least nproc_per_node"
            )
        return self


class NormalizationParams(Section):
    """Feature scaling: fixed statistics, or statistics of the training split only."""

    method: Literal["none", "fixed", "standardize"]
    mean: float | None = None
    std: PositiveFloat | None = None

    @model_validator(mode="after")
    def _check(self) -> NormalizationParams:
        fixed_values = self.mean is not None or self.std is not None
        if self.method == "fixed" and (self.mean is None or self.std is None):
            raise ValueError(
                "method: fixed needs both mean and std. Fix: add mean and std, "
                "for example mean: 0.5 and std: 0.5"
            )
        if self.method != "fixed" and fixed_values:
            raise ValueError(
                f"mean and std apply only to method: fixed, not to method: {self.method}. "
                "Fix: remove mean and std, or set method to fixed"
            )
        return self


class TrainRegressionParams(TrainingParams):
    dataset: Name
    normalization: NormalizationParams = Field(
        default=NormalizationParams(method="none"),
        description="feature scaling; standardize uses statistics of the training split only",
    )


# --- train_classifier --------------------------------------------------------


class ClassifierParams(TrainingParams):
    """One binary classifier: its data, architecture, preprocessing and optimization."""

    dataset: Name
    hidden_sizes: list[PositiveInt]
    activation: Literal["none", "relu", "sigmoid", "tanh", "leaky_relu", "prelu"]
    bias: bool
    output: Literal["sigmoid", "logits"] = Field(
        description="sigmoid trains with BCELoss, logits with BCEWithLogitsLoss"
    )
    normalization: NormalizationParams
    polynomial_degree: Annotated[int, Field(ge=1, le=10)]
    horizontal_flip: Probability
    sampler: Literal["shuffle", "balanced"]

    @model_validator(mode="after")
    def _check(self) -> ClassifierParams:
        if not self.hidden_sizes and self.activation != "none":
            raise ValueError(
                f"activation {self.activation!r} needs hidden layers, but hidden_sizes is empty. "
                "Fix: set activation to none, or add hidden_sizes such as [5, 3]"
            )
        return self


# --- evaluate ----------------------------------------------------------------


class EvaluateParams(Section):
    threshold: Probability
    thresholds: Annotated[list[Probability], Field(min_length=1)]
    best_threshold_criterion: Literal["f1", "youden"]


# --- the whole file ----------------------------------------------------------


class Params(Section):
    """Every section of params.yaml."""

    seeds: SeedsParams
    tracking: TrackingParams
    generate_data: GenerateDataParams
    build_images: BuildImagesParams
    import_data: dict[Name, ImportDataParams]
    split: dict[Name, SplitParams]
    train_regression: TrainRegressionParams
    train_classifier: dict[Name, ClassifierParams]
    evaluate: EvaluateParams

    @field_validator("train_classifier")
    @classmethod
    def _at_least_one(cls, value: dict[str, ClassifierParams]) -> dict[str, ClassifierParams]:
        if not value:
            raise ValueError("declares no classifier. Fix: declare at least one model")
        return value

    @field_validator("import_data")
    @classmethod
    def _not_reserved(cls, value: dict[str, ImportDataParams]) -> dict[str, ImportDataParams]:
        for name in value:
            if name in RESERVED_DATASET_NAMES:
                raise ValueError(
                    f"declares a dataset named {name!r}, a name the pipeline's own stages write. "
                    f"Fix: rename import_data.{name} (reserved: {', '.join(RESERVED_DATASET_NAMES)})"
                )
        return value

    @model_validator(mode="after")
    def _imports_are_split(self) -> Params:
        for name in self.import_data:
            if name not in self.split:
                raise ValueError(
                    f"import_data.{name} has no entry under split, so it cannot be trained on. "
                    f"Fix: add split.{name}, for example a copy of split.moons"
                )
        return self

    @model_validator(mode="after")
    def _datasets_are_split(self) -> Params:
        users = [("train_regression", self.train_regression.dataset)]
        users += [(f"train_classifier.{name}", model.dataset) for name, model in self.train_classifier.items()]
        for key, dataset in users:
            if dataset not in self.split:
                known = ", ".join(sorted(self.split))
                raise ValueError(
                    f"{key}.dataset is {dataset!r}, which has no entry under split "
                    f"(split has: {known}). Fix: use one of those datasets or add split.{dataset}"
                )
        return self


# --- loading and error messages ----------------------------------------------


def _format_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _schema_model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """Return the schema model that contains the keys at ``loc``, skipping user-named dict keys."""
    model: Any = Params
    skip_next = False
    for part in loc:
        if skip_next:
            skip_next = False
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        if getattr(annotation, "__origin__", None) is dict:
            annotation = annotation.__args__[1]
            skip_next = True
        model = annotation
    if isinstance(model, type) and issubclass(model, BaseModel) and not skip_next:
        return model
    return None


def _rule_and_fix(error: dict[str, Any], key: str) -> tuple[str, str]:
    kind = error["type"]
    message = error["msg"].removeprefix("Value error, ")
    context = error.get("ctx") or {}
    if kind == "extra_forbidden":
        parent = _schema_model_at(error["loc"][:-1])
        known = sorted(parent.model_fields) if parent else []
        guess = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        hint = f"did you mean {guess[0]!r}? " if guess else ""
        allowed = f" (allowed keys: {', '.join(known)})" if known else ""
        return "unknown key", f"{hint}Remove the key or correct its spelling{allowed}"
    if kind == "missing":
        return "required key is missing", f"add {key} to params.yaml"
    if kind in ("int_type", "int_from_float"):
        return "must be a whole number", f"set {key} to an integer such as 1"
    if kind in ("float_type",):
        return "must be a number", f"set {key} to a number"
    if kind == "bool_type":
        return "must be true or false", f"set {key} to true or false"
    if kind in ("string_type",):
        return "must be a string", f"set {key} to a string"
    if kind in ("list_type",):
        return "must be a list", f"set {key} to a list such as [5, 3]"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "must be a mapping of keys to values", f"set {key} to a mapping, as in the default params.yaml"
    if kind == "literal_error":
        expected = context.get("expected", "")
        return f"must be one of {expected}", f"set {key} to one of {expected}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = message.removeprefix("Input should be ")
        return f"must be {bound}", f"set {key} to a value {bound}"
    if kind == "too_short":
        return "must not be empty", f"add at least one value to {key}"
    if kind == "string_pattern_mismatch":
        return (
            "must start with a letter and contain only letters, digits and underscores",
            f"rename {key}",
        )
    if kind == "string_too_long":
        return message.replace("String should have", "must have"), f"shorten {key}"
    if kind == "value_error" and ". Fix: " in message:
        rule, fix = message.split(". Fix: ", 1)
        return rule, fix
    return message, f"correct {key} in params.yaml"


def _format_errors(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        rule, fix = _rule_and_fix(item, key)
        if item["type"] in ("missing",):
            lines.append(f"{key}: {rule}. Fix: {fix}.")
        else:
            value = _format_value(item.get("input"))
            lines.append(f"{key} = {value}: {rule}. Fix: {fix}.")
    count = len(lines)
    heading = f"invalid params in {source} ({count} problem{'s' if count > 1 else ''}):"
    return heading + "\n  " + "\n  ".join(lines)


def _find_params_file(path: str | os.PathLike[str] | None) -> Path:
    if path is not None:
        return Path(path)
    return Path(os.environ.get("STEPBYSTEP_PARAMS", DEFAULT_PARAMS_FILE))


def read_params_file(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Parse params.yaml safely and return its raw mapping."""
    params_path = _find_params_file(path)
    try:
        text = params_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(
            f"params file not found: {params_path}. Fix: run the stage from the project root, "
            "where params.yaml is"
        ) from None
    except OSError as error:
        raise ParamsError(f"cannot read params file {params_path}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as error:
        mark = error.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ParamsError(
            f"rejected {params_path}{where}: {error.problem}. YAML tags that construct Python "
            "objects are not allowed. Fix: write plain values (numbers, strings, lists, mappings)"
        ) from None
    except yaml.YAMLError as error:
        raise ParamsError(f"{params_path} is not valid YAML: {error}. Fix: correct the syntax") from None
    if not isinstance(data, dict):
        raise ParamsError(
            f"{params_path} must contain a mapping of sections, got {type(data).__name__}. "
            "Fix: restore the layout of the default params.yaml"
        )
    return data


def validate_params(data: dict[str, Any], source: str) -> Params:
    """Validate a parsed params mapping; raise :class:`ParamsError` naming ``source`` on any invalid value."""
    try:
        return Params.model_validate(data)
    except ValidationError as error:
        raise ParamsError(_format_errors(error, source)) from None


def load_params(path: str | os.PathLike[str] | None = None) -> Params:
    """Read and validate the whole params file; raise :class:`ParamsError` on any invalid value."""
    params_path = _find_params_file(path)
    return validate_params(read_params_file(params_path), str(params_path))
