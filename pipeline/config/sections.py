"""The sections of ``params.yaml`` as typed, frozen pydantic models.

Every key is declared here with its type and range, so a wrong ``params.yaml`` fails before any
training, with the dotted path of the culprit (``ga.population_size: ...``). Checks that need the
search space or the operators live in ``pipeline.config.loading``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


# Upper bounds: generous for any study this pipeline runs, yet a typo (an extra 0 or three) is refused
# when params.yaml is read, not found after days of training or an out-of-memory network.
MAX_EVALUATIONS = 100_000  # trainings per method (budget.evaluations): a grid this size is still cheap to list
MAX_EPOCHS = 1000  # per individual (the epochs gene), for the champion, and bounds on epoch counts
MAX_BATCH = 65_536  # images per batch: the batch_size gene and train.eval_batch_size
MAX_IMAGES = 1_000_000  # split sizes: above every dataset here (FashionMNIST has 60,000 training images)
MAX_CHANNELS = 4096  # channels (filters) of one conv layer
MAX_UNITS = 16_384  # units of one fully connected layer
MAX_GEOMETRY = 32  # kernel_size, stride, padding, pool_size: beyond the 28x28 images studied here
MAX_LAYERS = 32  # conv or fc layers in a genome, and conv layers appended per phase
MAX_PHASES = 100  # growth phases; each needs a whole population's evaluations anyway
MAX_POPULATION = 10_000  # ga.population_size and ga.survival.immigrants
MAX_GENERATIONS = MAX_EVALUATIONS  # every generation trains at least one child
MAX_REPEATS = 1000  # repeats of the whole study (study.repeats): each is a full search per method
MAX_SEED = 2**32 - 1  # numpy's and scikit-learn's seeds are below 2**32: every seed a repeat uses too
MAX_NAME = 256  # characters of an MLflow experiment or registered model name (its store's column)
MAX_IMAGE_SIDE = 1024  # pixels: image_folder images are resized to data.image_size, held in memory
AUTO_MAX_CLASSES = 20  # data.task: auto takes an integer target with at most this many values for classes


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataConfig(_Section):
    # fashion_mnist, digits: classification (fitness: validation accuracy); diabetes: regression
    # (scikit-learn's bundled table; fitness: validation mean absolute error, lower is better).
    # csv: your table (data.path, data.target); image_folder: your images (torchvision's ImageFolder layout).
    dataset: Literal["fashion_mnist", "digits", "diabetes", "csv", "image_folder"] = "fashion_mnist"
    root: str | None = None
    # Your data (csv: a file; image_folder: a folder with train/ and optionally test/): a DVC dependency of
    # prepare (dvc.yaml interpolates ${data.path}), so replacing it reruns the study. Unused by the built-ins.
    path: Annotated[str, Field(min_length=1)] = "data/source"
    target: Annotated[str, Field(min_length=1)] | None = None  # csv: the column to predict
    # csv; None: all but the target
    features: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = None
    # csv: classification or regression; auto: classification for a text, true/false or integer target with
    # at most AUTO_MAX_CLASSES distinct values, else regression.
    task: Literal["auto", "classification", "regression"] = "auto"
    test_path: Annotated[str, Field(min_length=1)] | None = None  # csv: a fixed test table; None: split off test_size
    image_size: Annotated[list[Annotated[int, Field(gt=0, le=MAX_IMAGE_SIDE)]], Field(min_length=2, max_length=2)] = [
        28,
        28,
    ]  # image_folder: [height, width] every image is resized to
    channels: Literal[1, 3] = 1  # image_folder: grey (1) or RGB (3)
    train_size: Annotated[int, Field(gt=0, le=MAX_IMAGES)] | None = None
    val_size: Annotated[int, Field(gt=0, le=MAX_IMAGES)] = 10_000
    test_size: Annotated[float, Field(gt=0, lt=1)] = 0.2  # digits, diabetes, csv, image_folder without a test set

    @model_validator(mode="after")
    def _check_own_data(self) -> DataConfig:
        if self.dataset == "csv" and self.target is None:
            raise ValueError("dataset: csv needs target: the name of the column to predict")
        if self.dataset != "csv":
            given = [k for k in ("target", "features", "test_path") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: read only with dataset: csv (dataset is {self.dataset})")
        if self.features is not None and self.target in self.features:
            raise ValueError(f"features lists the target column {self.target!r}")
        return self


class FloatGene(_Section):
    type: Literal["float"]
    low: float  # the smallest value
    high: float  # the largest value (above low)
    log: bool = False  # sampled and mutated on a log scale (low > 0)

    @model_validator(mode="after")
    def _check_range(self) -> FloatGene:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scaled gene needs low > 0, got {self.low}")
        return self


class IntGene(_Section):
    type: Literal["int"]
    low: int  # the smallest value
    high: int  # the largest value (not below low)
    log: bool = False  # sampled and mutated on a log scale (low > 0)

    @model_validator(mode="after")
    def _check_range(self) -> IntGene:
        if not self.low <= self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scaled gene needs low > 0, got {self.low}")
        return self


class ChoiceGene(_Section):
    type: Literal["choice"]
    values: Annotated[list[Union[bool, int, float, str]], Field(min_length=1)]  # the values it may take, distinct

    @model_validator(mode="after")
    def _check_unique(self) -> ChoiceGene:
        if len(set(map(repr, self.values))) != len(self.values):
            raise ValueError(f"values must be distinct, got {self.values}")
        return self


GeneConfig = Annotated[Union[FloatGene, IntGene, ChoiceGene], Field(discriminator="type")]


ACTIVATIONS = ("relu", "leaky_relu", "swish", "sigmoid")


class LengthRange(_Section):
    """How many layers of a kind a genome has, from min to max."""

    min: Annotated[int, Field(ge=0)]  # fewest layers
    max: Annotated[int, Field(ge=0, le=MAX_LAYERS)]  # most layers

    @model_validator(mode="after")
    def _check_order(self) -> LengthRange:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class ConvChoices(_Section):
    """The values each convolutional gene may take (the studies' blueprint by default)."""

    filters: Annotated[list[Annotated[int, Field(gt=0, le=MAX_CHANNELS)]], Field(min_length=1)] = [
        8,
        16,
        32,
        64,
    ]  # output channels a conv layer may have
    kernel_size: Annotated[list[Annotated[int, Field(gt=0, le=MAX_GEOMETRY)]], Field(min_length=1)] = [
        3,
        5,
        7,
    ]  # kernel sizes
    stride: Annotated[list[Annotated[int, Field(gt=0, le=MAX_GEOMETRY)]], Field(min_length=1)] = [1, 2]  # strides
    padding: Annotated[list[Annotated[int, Field(ge=0, le=MAX_GEOMETRY)]], Field(min_length=1)] = [0, 1]  # paddings
    pool_size: Annotated[list[Annotated[int, Field(ge=2, le=MAX_GEOMETRY)] | None], Field(min_length=1)] = [
        None,
        2,
        3,
    ]  # pooling after the layer: null (none) or its window
    pool_type: Annotated[list[Literal["max", "avg"]], Field(min_length=1)] = ["max", "avg"]  # max or average pooling
    activation: Annotated[list[Literal[ACTIVATIONS]], Field(min_length=1)] = list(ACTIVATIONS)  # type: ignore[valid-type]  # activations
    batch_norm: Annotated[list[bool], Field(min_length=1)] = [False, True]  # with or without BatchNorm
    skip: Annotated[list[bool], Field(min_length=1)] = [
        False,
        True,
    ]  # with or without a residual connection (where shapes allow)


class FcChoices(_Section):
    """The values each fully connected gene may take."""

    units: Annotated[list[Annotated[int, Field(gt=0, le=MAX_UNITS)]], Field(min_length=1)] = [
        8, 16, 32, 64, 128, 256, 512,
    ]  # fmt: skip  # units a layer may have
    activation: Annotated[list[Literal[ACTIVATIONS]], Field(min_length=1)] = list(ACTIVATIONS)  # type: ignore[valid-type]  # activations
    dropout: Annotated[list[Annotated[float, Field(ge=0, lt=1)]], Field(min_length=1)] = [
        0.1,
        0.2,
        0.25,
    ]  # dropout rates after the layer


class PhasesConfig(_Section):
    """Phased growth: after each phase the best genome's conv genes are kept, new ones appended."""

    count: Annotated[int, Field(ge=1, le=MAX_PHASES)] = 1  # phases; 1: no growth
    new_conv_layers: Annotated[int, Field(ge=1, le=MAX_LAYERS)] = 1  # at most this many conv genes appended per phase
    freeze_transferred: bool = True  # with ga.weights inherit/merge: train only the new layers


class ArchitectureConfig(_Section):
    """The network as genes (space.kind architecture): layers, their settings and phased growth."""

    conv_layers: LengthRange = LengthRange(min=1, max=4)  # conv layers per genome
    fc_layers: LengthRange = LengthRange(min=1, max=2)  # fully connected layers per genome
    conv: ConvChoices = ConvChoices()  # what each conv layer may be
    fc: FcChoices = FcChoices()  # what each fully connected layer may be
    phases: PhasesConfig = PhasesConfig()  # phased growth


class SpaceConfig(_Section):
    # the optimiser's genes only, or the network too
    kind: Literal["hyperparameters", "architecture"] = "hyperparameters"
    genes: dict[str, GeneConfig]  # the optimiser genes (both kinds); the network itself only for architecture
    architecture: ArchitectureConfig | None = None  # architecture: the layers' genes (null: the defaults below)

    @model_validator(mode="after")
    def _check_kind(self) -> SpaceConfig:
        if self.kind == "hyperparameters" and self.architecture is not None:
            raise ValueError("architecture is only read with kind: architecture; remove it or set kind")
        return self

    @property
    def layers(self) -> ArchitectureConfig:
        """The architecture section, its defaults when not written."""
        return self.architecture or ArchitectureConfig()


class BudgetConfig(_Section):
    evaluations: Annotated[int, Field(gt=0, le=MAX_EVALUATIONS)]  # trainings per method and repeat
    # Training epochs of all individuals summed (with fidelity, only the epochs actually trained): compute,
    # equal for methods with and without early stopping of bad individuals. None: evaluations only.
    epochs: Annotated[int, Field(gt=0, le=MAX_EVALUATIONS * MAX_EPOCHS)] | None = None


class FidelityConfig(_Section):
    """Multi-fidelity over each batch (a GA generation, TPE's batch, the grid's or random search's
    list): every candidate trains to the first rung, the top 1/eta go on to the next from their saved
    training state, up to their full epochs; the others stop with their rung's score. Scheduled over
    whichever evaluator ``execution`` asks for (this process, a population, workers, Ray)."""

    # Whole numbers: epochs (e.g. [1, 3, 9]); else fractions of each genome's epochs (e.g. [0.25, 0.5]).
    # Each genome's last rung is its full epochs. None: every candidate trains all its epochs.
    rungs: list[Annotated[float, Field(gt=0, le=MAX_EPOCHS)]] | None = None
    eta: Annotated[int, Field(ge=2, le=100)] = 3  # the top 1/eta of a rung are promoted
    # rung: a member stopped at a lower rung ranks below every member that went further; score: by score alone.
    ranking: Literal["rung", "score"] = "rung"
    # synchronous: successive halving (a rung trains whole, then is ranked; the same records on any
    # evaluator); asynchronous: ASHA (a free worker promotes at once; not reproducible with workers).
    mode: Literal["synchronous", "asynchronous"] = "synchronous"

    @field_validator("rungs")
    @classmethod
    def _rungs_increase(cls, rungs: list[float] | None) -> list[float] | None:
        if rungs is None:
            return None
        if not rungs:
            raise ValueError("give at least one rung, or null for no multi-fidelity")
        if any(b <= a for a, b in zip(rungs, rungs[1:])):
            raise ValueError(f"rungs must increase strictly, got {rungs}")
        if not all(float(r).is_integer() for r in rungs) and max(rungs) > 1:
            raise ValueError(f"rungs are whole epochs (e.g. [1, 3, 9]) or fractions of a genome's epochs up to 1 "
                             f"(e.g. [0.25, 0.5]), not a mix: got {rungs}")  # fmt: skip
        return rungs

    @property
    def enabled(self) -> bool:
        return self.rungs is not None


class ModelConfig(_Section):
    # The studies' CNN (space.kind hyperparameters): filters of its two conv layers.
    conv_channels: Annotated[list[Annotated[int, Field(gt=0, le=MAX_CHANNELS)]], Field(min_length=2, max_length=2)] = [
        32,
        64,
    ]
    hidden_units: Annotated[int, Field(gt=0, le=MAX_UNITS)] = 128  # the studies' CNN: units of its hidden layer
    # Who builds each genome's network: null, the built-in of space.kind (hyperparameters: the studies' CNN
    # above; architecture: the genome's own layers); or your function, "path/to/file.py:function" or
    # "package.module:function", called as function(genome, input_shape, outputs) -> torch.nn.Module.
    builder: Annotated[str, Field(pattern=r"^[^:\s]+:[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    # What DVC tracks of the builder (dvc.yaml interpolates ${model.source}): its file or package folder,
    # so editing it reruns the searches and the champion.
    source: Annotated[str, Field(min_length=1)] = "pipeline/training/models.py"

    @property
    def custom(self) -> bool:
        """A user's builder, not one of the built-ins."""
        return self.builder is not None and self.builder not in BUILTIN_BUILDERS.values()


# The built-in builders by space.kind, named as a user's are (pipeline/training/models.py).
BUILTIN_BUILDERS = {
    "hyperparameters": "pipeline.training.models:study_cnn",
    "architecture": "pipeline.training.models:architecture_network",
}


OPTIMIZERS = ("sgd", "adam", "adamw")


class EarlyStoppingConfig(_Section):
    patience: Annotated[int, Field(ge=1, le=MAX_EPOCHS)] = 1  # epochs without val_acc improvement before stopping
    min_delta: Annotated[float, Field(ge=0)] = 0.0  # the least change that counts as an improvement


class TrainConfig(_Section):
    lr_step_size: Annotated[int, Field(gt=0, le=MAX_EPOCHS)] = 1  # StepLR: epochs between learning-rate cuts
    lr_gamma: Annotated[float, Field(gt=0, le=1)] = 0.7  # StepLR: the factor of each cut
    eval_batch_size: Annotated[int, Field(gt=0, le=MAX_BATCH)] = 1000  # images per validation and test batch
    # Std of Gaussian noise added to training images (data augmentation); a gene `noise_level` overrides.
    noise_level: Annotated[float, Field(ge=0)] = 0.0
    early_stopping: EarlyStoppingConfig | None = None  # None: every individual trains all its epochs
    # Conv networks in the channels_last memory layout: other convolution kernels, faster on some CPUs
    # (benchmarks/RESULTS.md). Same seed, other scores than the default layout (other rounding, and dropout
    # masks of conv outputs drawn in another memory order), as deterministic.
    channels_last: bool = False
    # The optimiser and learning-rate schedule of every fit (a gene named `optimizer` overrides the
    # optimiser). The studies': SGD with StepLR(lr_step_size, lr_gamma). cosine: annealed to 0 over each
    # genome's epochs. momentum and weight_decay: used when the space has no gene of that name.
    optimizer: Literal[OPTIMIZERS] = "sgd"  # type: ignore[valid-type]
    lr_schedule: Literal["step", "cosine", "none"] = "step"
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0  # SGD only; Adam and AdamW keep their default betas
    weight_decay: Annotated[float, Field(ge=0)] = 0.0  # L2 penalty (AdamW: decoupled) where no gene sets it


class OperatorConfig(_Section):
    """``{name: ..., <settings>}``; the settings are checked against the named operator."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)
    name: str

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SurvivalConfig(_Section):
    """Who lives on besides the elites: a random share of the rest, and fresh random immigrants."""

    fraction: Annotated[float, Field(ge=0, le=1)] = 0.0  # of the non-elites, carried unchanged
    immigrants: Annotated[int, Field(ge=0, le=MAX_POPULATION)] = 0  # new random genomes per generation


class TerminationConfig(_Section):
    """Extra stopping rules; the evaluation budget (budget.evaluations) always applies."""

    # Generations in all, the initial one included.
    generations: Annotated[int, Field(ge=1, le=MAX_GENERATIONS)] | None = None
    wall_clock_seconds: Annotated[float, Field(gt=0)] | None = None  # stop after this long on the search's clock
    # Stop once reached, in the task's metric: an accuracy to reach, or an error (MAE) to get down to.
    target_fitness: Annotated[float, Field(gt=0)] | None = None
    stagnation: Annotated[int, Field(ge=1, le=MAX_GENERATIONS)] | None = None  # generations without a better best


class GAConfig(_Section):
    population_size: Annotated[int, Field(ge=2, le=MAX_POPULATION)]  # genomes per generation
    elites: Annotated[int, Field(ge=0)] = 1  # the best, carried unchanged into the next generation
    survival: SurvivalConfig = SurvivalConfig()
    selection: OperatorConfig = OperatorConfig(name="truncation", fraction=0.5)
    crossover: OperatorConfig = OperatorConfig(name="uniform", swap_prob=0.5)
    mutation: OperatorConfig = OperatorConfig(name="resample", rate=0.2)
    weights: Literal["none", "inherit", "merge"] = "none"
    termination: TerminationConfig = TerminationConfig()

    @property
    def survivors(self) -> int:
        """Non-elites carried into each next generation at random."""
        return round(self.survival.fraction * (self.population_size - self.elites))

    @property
    def children(self) -> int:
        return self.population_size - self.elites - self.survivors - self.survival.immigrants

    @model_validator(mode="after")
    def _check_sizes(self) -> GAConfig:
        if self.population_size < self.elites + 2:
            raise ValueError(
                f"population_size ({self.population_size}) must be at least elites ({self.elites}) + 2:"
                " two parents are needed beside the elites to breed a child"
            )
        if self.children < 1:
            raise ValueError(
                f"elites ({self.elites}) + random survivors ({self.survivors}, survival.fraction) + "
                f"survival.immigrants ({self.survival.immigrants}) leave no room for a child in a "
                f"population of {self.population_size}"
            )
        return self


class RepeatsConfig(_Section):
    """How often every method searches, each time with its own seed (``study`` in params.yaml)."""

    repeats: Annotated[int, Field(ge=1, le=MAX_REPEATS)] = 1
    # One seed per repeat; None: ``seed``, ``seed + 1``, ... (repeat 0 is the single-run study).
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] | None = None
    # The search methods this study runs, by registered name (`python -m pipeline methods` lists them);
    # None: every one. A method left out keeps its stage, which records it as skipped and trains nothing.
    methods: list[str] | None = None

    @model_validator(mode="after")
    def _check_seeds(self) -> RepeatsConfig:
        if self.seeds is not None:
            if len(self.seeds) != self.repeats:
                raise ValueError(
                    f"seeds lists {len(self.seeds)} seed(s) but repeats is {self.repeats}: give one per repeat"
                )
            if len(set(self.seeds)) != len(self.seeds):
                raise ValueError(f"seeds {self.seeds} repeat a seed: every repeat needs its own")
        return self

    @field_validator("methods")
    @classmethod
    def _check_methods(cls, methods: list[str] | None) -> list[str] | None:
        if methods is not None and not methods:
            raise ValueError("empty: name at least one search method, or null for every one")
        if methods is not None and len(set(methods)) != len(methods):
            raise ValueError(f"lists a method twice: {methods}")
        return methods


class SensitivityConfig(_Section):
    """The GA's own settings varied one at a time around ``ga`` (the ``ga_sensitivity`` stage), as the
    studies ran them; each value is searched ``repeats`` times (seeds ``seed``, ``seed + 1``, ...)."""

    enabled: bool = False
    repeats: Annotated[int, Field(ge=1, le=MAX_REPEATS)] = 3
    # At the study's budget (budget.evaluations): fewer generations for a larger population.
    population_size: list[Annotated[int, Field(ge=2, le=MAX_POPULATION)]] = []
    # Generations in all (ga.termination.generations); the budget grows to population x generations.
    generations: list[Annotated[int, Field(ge=1, le=MAX_GENERATIONS)]] = []
    mutation_rate: list[Annotated[float, Field(ge=0, le=1)]] = []  # ga.mutation.rate
    noise_level: list[Annotated[float, Field(ge=0, le=10)]] = []  # train.noise_level: Gaussian input noise

    @model_validator(mode="after")
    def _check_values(self) -> SensitivityConfig:
        for name in SENSITIVITY_SETTINGS:
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name} lists a value twice: {values}")
        if self.enabled and not any(getattr(self, name) for name in SENSITIVITY_SETTINGS):
            raise ValueError(f"enabled, but no values to try: list some under {', '.join(SENSITIVITY_SETTINGS)}")
        return self


SENSITIVITY_SETTINGS = ("population_size", "generations", "mutation_rate", "noise_level")


class TPEConfig(_Section):
    """Optuna's TPE sampler (the Bayesian-optimisation baseline)."""

    startup_trials: Annotated[int, Field(ge=1, le=MAX_EVALUATIONS)] = 5  # random trials before TPE models the results
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 1  # trials asked at once (constant liar when > 1)


# The genes PBT's explore step may change mid-training: the optimiser's and the input noise. The
# others fix the network, its batches or its length (architecture, batch_size, epochs, optimizer): a
# member takes them from the member it copies, as it takes its weights.
PBT_GENES = ("learning_rate", "momentum", "weight_decay", "noise_level")


class PBTConfig(_Section):
    """Population Based Training (Jaderberg et al. 2017) with Ray Tune's defaults: members train in
    intervals; after each, the bottom quantile copies a top member (exploit) and perturbs its genes
    (explore)."""

    population_size: Annotated[int, Field(ge=2, le=1024)] = 4  # members training side by side
    perturbation_interval: Annotated[int, Field(ge=1, le=MAX_EPOCHS)] = 1  # epochs between exploit/explore steps
    quantile_fraction: Annotated[float, Field(gt=0, le=0.5)] = 0.25  # the bottom share copies one of the top share
    # explore redraws a gene from its range, else perturbs it
    resample_probability: Annotated[float, Field(ge=0, le=1)] = 0.25
    perturbation_factors: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1, max_length=16)] = [
        1.2,
        0.8,
    ]  # a perturbed number is scaled by one of these


class ChampionConfig(_Section):
    epochs: Annotated[int, Field(gt=0, le=MAX_EPOCHS)]
    train_size: Annotated[int, Field(gt=0, le=MAX_IMAGES)] | None = None  # None: every training image not in validation
    registered_model: Annotated[str, Field(max_length=MAX_NAME)] = "evohpo-champion"  # the MLflow registered model

    @field_validator("registered_model")
    @classmethod
    def _registrable(cls, name: str) -> str:
        # Refused here, not by the registry after every retraining has run.
        if not name.strip():
            raise ValueError("must name the registered model, not be empty")
        if "/" in name or ":" in name:
            raise ValueError(
                f"must not contain '/' or ':' (a models:/<name>@champion URI splits on them), got {name!r}"
            )
        return name


class ReportConfig(_Section):
    """How the report compares the methods and where its links point."""

    # Region of practical equivalence of the report's Bayesian signed-rank verdicts, in the task's
    # metric (0.005: half a point of accuracy; for MAE, in the target's units).
    rope: Annotated[float, Field(gt=0)] = 0.005
    # Where the report's run links point: the MLflow UI that `make ui` starts, by default.
    mlflow_ui: Annotated[str, Field(pattern=r"^https?://[^\s/]+$")] = "http://127.0.0.1:5000"


class MlflowConfig(_Section):
    experiment: Annotated[str, Field(min_length=1, max_length=MAX_NAME)]  # the experiment's name in the store


class RayConfig(_Section):
    """Where the Ray backend runs and what one evaluation asks of it."""

    address: str | None = None  # None: a local Ray instance; "auto", "host:port" or "ray://host:port": a cluster
    num_cpus: Annotated[float, Field(gt=0, le=1024)] = 1.0  # CPUs one evaluation holds (its torch threads)
    num_gpus: Annotated[float, Field(ge=0, le=64)] = 0.0  # fractional: several small fits share a GPU
    max_retries: Annotated[int, Field(ge=0, le=100)] = 2  # of an evaluation whose worker died


class ExecutionConfig(_Section):
    """How evaluations run. The backend and the workers never change results: the same seed gives the
    same study whatever runs it, as long as each evaluation gets the same number of threads
    (``threads_per_evaluation``). The population evaluator gives the same results within float
    tolerance for networks without dropout, and other dropout masks otherwise."""

    backend: Literal["local", "ray"] = "local"
    workers: Annotated[int, Field(ge=1, le=1024)] = 1  # local: evaluations at once, in worker processes when > 1
    # sequential: one network after another; population: the members of a batch that share an
    # architecture and a batch size trained together (vmap); auto: population on a GPU, else sequential.
    evaluator: Literal["auto", "sequential", "population"] = "auto"
    max_group_size: Annotated[int, Field(ge=2, le=1024)] = 16  # members of one population fit at most
    # torch threads of one evaluation; None: torch's default in one process, the cores split between workers
    threads_per_evaluation: Annotated[int, Field(ge=1, le=1024)] | None = None
    ray: RayConfig = RayConfig()


def largest_epochs(space: SpaceConfig) -> int | None:
    """The most epochs the space's ``epochs`` gene allows (None without a numeric one)."""
    gene = space.genes.get("epochs")
    if isinstance(gene, IntGene):
        return gene.high
    if isinstance(gene, ChoiceGene) and all(isinstance(v, int) and not isinstance(v, bool) for v in gene.values):
        return max(gene.values)
    return None


class StudyConfig(_Section):
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)]  # the study's seed: data split, searches, initial weights (repeat 0)
    data: DataConfig  # the dataset and its splits
    model: ModelConfig = ModelConfig()  # the network every genome trains (or the user's builder)
    space: SpaceConfig  # the search space: the genes every method searches
    budget: BudgetConfig  # what every method may spend per repeat: the same for all of them
    train: TrainConfig = TrainConfig()  # training settings of every fit that no gene sets
    ga: GAConfig  # the genetic algorithm's settings
    tpe: TPEConfig = TPEConfig()  # Optuna's TPE sampler's settings
    pbt: PBTConfig = PBTConfig()  # Population Based Training's settings
    champion: ChampionConfig  # each method's best retrained at full fidelity and tested
    mlflow: MlflowConfig  # the MLflow experiment every run is logged in
    study: RepeatsConfig = RepeatsConfig()  # repeats of the whole study, each with its own seed
    execution: ExecutionConfig = ExecutionConfig()  # where evaluations run; never changes results at equal threads
    sensitivity: SensitivityConfig = SensitivityConfig()  # the GA's own settings varied one at a time
    fidelity: FidelityConfig = FidelityConfig()  # multi-fidelity: rungs over each batch, for every method
    report: ReportConfig = ReportConfig()  # the report's statistics and links

    def repeat_seeds(self) -> list[int]:
        """The seed of each repeat, in order."""
        if self.study.seeds is not None:
            return list(self.study.seeds)
        return [self.seed + k for k in range(self.study.repeats)]

    @property
    def builder(self) -> str:
        """The model builder every fit calls: ``model.builder``, or the built-in of ``space.kind``."""
        return self.model.builder or BUILTIN_BUILDERS[self.space.kind]

    def with_prepared_task(self, summary: dict[str, Any]) -> StudyConfig:
        """A CSV study's ``data.task: auto`` as ``prepare`` resolved it (in the prepared data's summary),
        so each method knows which way its fitness points before training."""
        if self.data.dataset != "csv" or self.data.task != "auto":
            return self
        task = "regression" if summary.get("task") == "regression" else "classification"
        return self.model_copy(update={"data": self.data.model_copy(update={"task": task})})

    def for_repeat(self, repeat_seed: int) -> StudyConfig:
        """This config with ``seed`` set to one repeat's seed (the search's and the trainings' seed)."""
        return self.model_copy(update={"seed": repeat_seed})

    @model_validator(mode="after")
    def _check_cross_section(self) -> StudyConfig:
        if self.ga.population_size > self.budget.evaluations:
            raise ValueError(
                f"ga.population_size ({self.ga.population_size}) exceeds budget.evaluations "
                f"({self.budget.evaluations}): the first generation alone would overrun the budget"
            )
        longest = largest_epochs(self.space)
        if longest is not None and self.pbt.perturbation_interval > longest:
            raise ValueError(
                f"pbt.perturbation_interval ({self.pbt.perturbation_interval}) is longer than the largest epochs gene "
                f"(space.genes.epochs: {longest}): PBT's members would never reach an exploit step"
            )
        phases = self.space.layers.phases.count
        if self.space.kind == "architecture" and phases * self.ga.population_size > self.budget.evaluations:
            raise ValueError(
                f"space.architecture.phases.count ({phases}) x ga.population_size ({self.ga.population_size}) "
                f"exceeds budget.evaluations ({self.budget.evaluations}): phases share the budget equally "
                "and each starts with a whole population"
            )
        return self
