"""Datasets: find, read and split them once (``prepare``), then feed them from memory.

Prepared splits are stored as ``uint8`` images ``[N, H, W]`` and ``int64`` labels; they are
normalised once when loaded, and batches are formed by indexing those tensors (no per-sample
Python work, no PIL). A regression table (scikit-learn's diabetes data) is stored as ``float32``
features ``[N, 1, F]`` (a one-row "image") and ``float32`` targets; features and targets are
standardised on loading with the search-time training split's statistics.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import shutil
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

from pipeline.config.sections import AUTO_MAX_CLASSES
from pipeline.errors import DatasetError, first_line

if TYPE_CHECKING:
    from pipeline.config.sections import DataConfig

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_INSTALL_COMMAND = "sudo apt-get install dataset-fashion-mnist"
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
SPLITS = ("train", "val", "full_train", "test")
_IDX_MAGIC = {0x0801: 1, 0x0803: 3}  # unsigned-byte IDX files: labels (1-D), images (3-D)
_IDX_KINDS = {1: "labels file (1-D, magic 0x00000801)", 3: "images file (3-D, magic 0x00000803)"}


# ---------------------------------------------------------------------------------------------
# Reading IDX files


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX file (``.gz`` or plain) as a ``uint8`` array of its declared shape."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            data = handle.read()
    # A damaged .gz raises BadGzipFile (its header), EOFError (cut short) or zlib.error (bad deflate data).
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DatasetError(f"{path}: cannot read ({exc}); delete it and run prepare again") from None
    if len(data) < 4:
        raise DatasetError(f"{path}: truncated IDX file ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if magic not in _IDX_MAGIC:
        raise DatasetError(f"{path}: bad IDX magic number 0x{magic:08x}; expected 0x00000801 or 0x00000803")
    ndim = _IDX_MAGIC[magic]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape)
    if len(data) != expected:
        raise DatasetError(
            f"{path}: header declares shape {shape} ({expected} bytes) but the file has {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a ``uint8`` array (1-D labels or 3-D images) as an IDX file, gzipped if ``.gz``."""
    magic = {1: 0x0801, 3: 0x0803}[array.ndim]
    payload = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    payload += np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as handle:
        handle.write(payload)


def _find_idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem, folder / "FashionMNIST" / "raw" / stem):
        if candidate.is_file():
            return candidate
    return None


def _idx_folder_files(folder: Path) -> dict[str, Path] | None:
    found = {key: _find_idx_file(folder, stem) for key, stem in FASHION_MNIST_FILES.items()}
    return found if all(found.values()) else None  # type: ignore[return-value]


def locate_fashion_mnist(root: str | None, download_dir: Path) -> dict[str, Path]:
    """The four FashionMNIST IDX files: ``data.root`` if set, else Debian's package, else torchvision."""
    if root is not None:
        files = _idx_folder_files(Path(root))
        if files is None:
            missing = [s for s in FASHION_MNIST_FILES.values() if _find_idx_file(Path(root), s) is None]
            raise DatasetError(f"data.root={root}: missing {', '.join(missing)} (plain or .gz IDX files)")
        return files
    files = _idx_folder_files(DEBIAN_FASHION_MNIST)
    if files is not None:
        return files
    files = _idx_folder_files(download_dir)
    if files is None:
        files = _download_with_torchvision(download_dir)
    return files


def _download_with_torchvision(download_dir: Path) -> dict[str, Path]:
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(str(download_dir), train=True, download=True)
        FashionMNIST(str(download_dir), train=False, download=True)
    except Exception as exc:  # noqa: BLE001 - any download failure means: no dataset here
        raise DatasetError(
            f"FashionMNIST not found in {DEBIAN_FASHION_MNIST} and torchvision could not download it "
            f"({type(exc).__name__}). Install it with `{DEBIAN_INSTALL_COMMAND}`, or set data.root "
            "to a folder holding the IDX files"
        ) from None
    files = _idx_folder_files(download_dir)
    if files is None:
        raise DatasetError(f"{download_dir}: torchvision's download left no IDX files")
    return files


def ensure_debian_dataset() -> str:
    """Install Debian's FashionMNIST package when it is missing and we may; says what happened."""
    if _idx_folder_files(DEBIAN_FASHION_MNIST) is not None:
        return f"FashionMNIST found in {DEBIAN_FASHION_MNIST}"
    if shutil.which("apt-get") is None:
        return "no Debian package manager: torchvision will download FashionMNIST"
    import os

    if os.geteuid() != 0:
        return (
            f"FashionMNIST is not in {DEBIAN_FASHION_MNIST}; torchvision will try to download it. "
            f"Offline, run `{DEBIAN_INSTALL_COMMAND}` first"
        )
    install = ["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"]
    if subprocess.run(install, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], check=False)
        subprocess.run(install, check=False)
    return "installed Debian's dataset-fashion-mnist"


# ---------------------------------------------------------------------------------------------
# Preparing splits


@dataclass(frozen=True)
class RawDataset:
    name: str
    train_images: np.ndarray  # uint8 [N, H, W]
    train_labels: np.ndarray  # int64 [N]
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]  # empty for a regression task
    sources: dict[str, str]  # file name -> sha256
    task: str = "classification"  # or "regression": numeric targets


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_kind(role: str, path: Path, array: np.ndarray) -> None:
    """A labels file where the images belong (or the reverse) reads fine, and every training then fails."""
    wanted = 3 if role.endswith("_images") else 1
    if array.ndim != wanted:
        raise DatasetError(
            f"{path}: an IDX {_IDX_KINDS[array.ndim]}, but the {role.replace('_', ' ')} must be an IDX "
            f"{_IDX_KINDS[wanted]}; are the files swapped?"
        )


def _check_image_shapes(files: dict[str, Path], arrays: dict[str, np.ndarray]) -> None:
    """Test images of another size than the training images would only fail the champion, after training."""
    train, test = arrays["train_images"].shape[1:], arrays["test_images"].shape[1:]
    if train != test:
        raise DatasetError(
            f"{files['test_images']}: {'x'.join(map(str, test))} images, but {files['train_images']} has "
            f"{'x'.join(map(str, train))} images; the test images must have the training images' size"
        )


def load_fashion_mnist(root: str | None, download_dir: Path) -> RawDataset:
    files = locate_fashion_mnist(root, download_dir)
    arrays = {key: read_idx(path) for key, path in files.items()}
    for key, path in files.items():
        _check_kind(key, path, arrays[key])
    for split, name in (("train", "training"), ("test", "test")):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) == 0:
            raise DatasetError(f"{files[f'{split}_images']}: no images; the {name} set must not be empty")
        if len(images) != len(labels):
            raise DatasetError(
                f"{files[f'{split}_images']}: {len(images)} images but {files[f'{split}_labels']} "
                f"has {len(labels)} labels"
            )
        if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
            raise DatasetError(f"{files[f'{split}_labels']}: label {labels.max()} is not a FashionMNIST class")
    _check_image_shapes(files, arrays)
    return RawDataset(
        name="fashion_mnist",
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"].astype(np.int64),
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"].astype(np.int64),
        classes=FASHION_MNIST_CLASSES,
        sources={str(path): _sha256(path) for path in files.values()},
    )


def load_digits_dataset(test_size: float, seed: int) -> RawDataset:
    """scikit-learn's bundled 8x8 digits, split into train and a held-out test set (seeded)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(np.rint(digits.images * (255 / 16)), 0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_size, stratify=labels, random_state=seed
    )
    return RawDataset(
        name="digits",
        train_images=images[train_idx],
        train_labels=labels[train_idx],
        test_images=images[test_idx],
        test_labels=labels[test_idx],
        classes=[str(d) for d in range(10)],
        sources={"sklearn.datasets.load_digits": hashlib.sha256(images.tobytes()).hexdigest()},
    )


def load_diabetes_dataset(test_size: float, seed: int) -> RawDataset:
    """scikit-learn's bundled diabetes data (442 patients, 10 features, disease progression after a
    year as the target), split into train and a held-out test set (seeded)."""
    from sklearn.datasets import load_diabetes

    diabetes = load_diabetes()
    features = diabetes.data.astype(np.float32)[:, None, :]  # [N, 1, F]: a one-row image
    targets = diabetes.target.astype(np.float32)
    train_idx, test_idx = train_test_split(np.arange(len(targets)), test_size=test_size, random_state=seed)
    return RawDataset(
        name="diabetes",
        train_images=features[train_idx],
        train_labels=targets[train_idx],
        test_images=features[test_idx],
        test_labels=targets[test_idx],
        classes=[],
        sources={"sklearn.datasets.load_diabetes": hashlib.sha256(features.tobytes() + targets.tobytes()).hexdigest()},
        task="regression",
    )


def split_indices(
    labels: np.ndarray, train_size: int | None, val_size: int, seed: int, stratify: bool = True
) -> dict[str, np.ndarray]:
    """Seeded split of the official training set, stratified by class (not for numeric targets).

    ``val``: ``val_size`` images (fitness). ``full_train``: every other image (the champion's
    data). ``train``: a stratified subset of ``full_train`` of ``train_size`` images (search-time
    training), or all of it when ``train_size`` is None.
    """
    if val_size >= len(labels):
        raise DatasetError(f"data.val_size={val_size} leaves no training images (the set has {len(labels)})")
    everything = np.arange(len(labels))
    strata = labels if stratify else None
    full_train, val = train_test_split(everything, test_size=val_size, stratify=strata, random_state=seed)
    if train_size is None or train_size >= len(full_train):
        if train_size is not None and train_size > len(full_train):
            raise DatasetError(
                f"data.train_size={train_size} exceeds the {len(full_train)} images left after validation"
            )
        train = full_train
    else:
        train, _ = train_test_split(full_train, train_size=train_size,
                                    stratify=labels[full_train] if stratify else None, random_state=seed)  # fmt: skip
    return {"train": np.sort(train), "val": np.sort(val), "full_train": np.sort(full_train)}


def load_raw(config: DataConfig, seed: int, download_dir: Path) -> RawDataset:
    if config.dataset == "digits":
        return load_digits_dataset(config.test_size, seed)
    if config.dataset == "diabetes":
        return load_diabetes_dataset(config.test_size, seed)
    if config.dataset == "image_folder":
        return load_image_folder(config, seed)
    return load_fashion_mnist(config.root, download_dir)


def prepare_dataset(config: DataConfig, seed: int, out_dir: Path, download_dir: Path) -> dict:
    """Write ``{train,val,full_train,test}.pt`` and ``dataset.json`` to ``out_dir``; return the JSON."""
    if config.dataset == "csv":
        return _write_prepared(prepare_table(config, seed), out_dir)
    raw = load_raw(config, seed, download_dir)
    indices = split_indices(raw.train_labels, config.train_size, config.val_size, seed,
                            stratify=raw.task == "classification")  # fmt: skip
    splits = {name: (raw.train_images[idx], raw.train_labels[idx]) for name, idx in indices.items()}
    splits["test"] = (raw.test_images, raw.test_labels)
    if raw.task == "regression":
        summary = {"dataset": raw.name, "seed": seed, **_regression_statistics(*splits["train"])}
    else:
        summary = _image_statistics(raw, splits, seed)
    return _write_prepared(PreparedSplits(splits, summary | {"sources": raw.sources}), out_dir)


@dataclass(frozen=True)
class PreparedSplits:
    splits: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (inputs, labels or targets)
    summary: dict  # dataset.json without sizes and file checksums


def _write_prepared(prepared: PreparedSplits, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    checksums = {}
    for name, (images, labels) in prepared.splits.items():
        path = out_dir / f"{name}.pt"
        torch.save({"images": torch.from_numpy(images), "labels": torch.from_numpy(labels)}, path)
        checksums[path.name] = _sha256(path)
    summary = {key: value for key, value in prepared.summary.items() if key != "sources"} | {
        "sizes": {name: int(len(labels)) for name, (_, labels) in prepared.splits.items()},
        "sources": prepared.summary["sources"],
        "files": checksums,  # checked on every load: a corrupt split fails loudly, not silently
    }
    (out_dir / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ---------------------------------------------------------------------------------------------
# Your data: a CSV table (data.dataset: csv), a folder of images (image_folder)


def _read_csv(path: str, key: str) -> pd.DataFrame:
    """A CSV table, or a ``DatasetError`` naming ``key`` and the file."""
    file = Path(path)
    if not file.is_file():
        raise DatasetError(f"{key}: {path} does not exist (or is not a file); point {key} at your CSV table")
    try:
        frame = pd.read_csv(file, skipinitialspace=True)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DatasetError(f"{key}: {path} is not a readable CSV table ({first_line(exc)})") from None
    if frame.empty:
        raise DatasetError(f"{key}: {path} has no rows")
    return frame


def _is_number_text(value: object) -> bool:
    try:
        float(str(value))
    except ValueError:
        return False
    return True


def table_task(target: pd.Series, declared: str) -> str:
    """``data.task`` resolved: auto is classification for a text or true/false target, or an
    integer one with at most ``AUTO_MAX_CLASSES`` distinct values; else regression."""
    if declared != "auto":
        return declared
    if not pd.api.types.is_numeric_dtype(target) or pd.api.types.is_bool_dtype(target):
        return "classification"
    whole = pd.api.types.is_integer_dtype(target) or bool((target.dropna() % 1 == 0).all())
    return "classification" if whole and target.nunique() <= AUTO_MAX_CLASSES else "regression"


def _table_columns(frame: pd.DataFrame, config: DataConfig, path: str) -> list[str]:
    columns = [str(c) for c in frame.columns]
    if config.target not in columns:
        raise DatasetError(f"data.target: column {config.target!r} is not in {path} (its columns: "
                           f"{', '.join(columns[:20])}{' ...' if len(columns) > 20 else ''})")  # fmt: skip
    features = config.features or [c for c in columns if c != config.target]
    missing = [c for c in features if c not in columns]
    if missing:
        raise DatasetError(f"data.features: {', '.join(map(repr, missing))} not in {path}")
    if not features:
        raise DatasetError(f"data.features: {path} has no column besides the target {config.target!r}")
    return features


def _column_kinds(frame: pd.DataFrame, features: list[str], path: str) -> dict[str, str]:
    """Each feature: numeric (standardised) or categorical (one-hot); refuses a numeric column with
    a non-numeric value and empty cells, naming the column and the row."""
    kinds = {}
    for column in features:
        values = frame[column]
        empty = values.isna()
        if empty.any():
            row = int(np.flatnonzero(empty.to_numpy())[0]) + 2  # the file's line: a header, then 1-based rows
            raise DatasetError(f"data.features: column {column!r} of {path} has {int(empty.sum())} empty value(s) "
                               f"(first on line {row}); fill or drop them")  # fmt: skip
        if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
            numeric = values.map(_is_number_text)
            if numeric.mean() >= 0.5:  # mostly numbers: the rest are typos, not categories
                row = int(np.flatnonzero(~numeric.to_numpy())[0])
                raise DatasetError(f"data.features: column {column!r} of {path} is numeric but line {row + 2} holds "
                                   f"{str(values.iloc[row])[:50]!r}")  # fmt: skip
            kinds[column] = "categorical"
        else:
            kinds[column] = "numeric"
    return kinds


def _table_targets(frame: pd.DataFrame, config: DataConfig, task: str, path: str,
                   classes: list[str] | None = None) -> tuple[np.ndarray, list[str]]:  # fmt: skip
    target = frame[config.target]
    if target.isna().any():
        raise DatasetError(f"data.target: column {config.target!r} of {path} has {int(target.isna().sum())} empty "
                           "value(s); drop those rows")  # fmt: skip
    if task == "regression":
        if not pd.api.types.is_numeric_dtype(target) or pd.api.types.is_bool_dtype(target):
            bad = next(v for v in target if not _is_number_text(v))
            raise DatasetError(f"data.target: column {config.target!r} of {path} holds {str(bad)[:50]!r}, but a "
                               "regression target must be numbers (or set data.task: classification)")  # fmt: skip
        return target.to_numpy(dtype=np.float32).copy(), []  # writable: pandas hands out read-only views
    labels = target.astype(str)
    if classes is None:
        classes = sorted(labels.unique())
        if len(classes) < 2:
            raise DatasetError(f"data.target: column {config.target!r} of {path} has one class ({classes[0]!r}); "
                               "classification needs two or more")  # fmt: skip
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise DatasetError(f"data.test_path: {path} has class(es) {unknown[:5]} that the training table lacks")
    index = {name: code for code, name in enumerate(classes)}
    return labels.map(index).to_numpy(dtype=np.int64).copy(), classes


def _encode(frame: pd.DataFrame, kinds: dict[str, str], categories: dict[str, list[str]]) -> np.ndarray:
    """Features as float32 ``[N, 1, F]`` (a one-row image): numeric columns as they are (standardised
    on loading), each categorical one as one-hot columns of the training split's categories (an
    unseen category: all zeros)."""
    parts = []
    for column, kind in kinds.items():
        if kind == "numeric":
            parts.append(frame[column].to_numpy(dtype=np.float64)[:, None])
        else:
            values = frame[column].astype(str).to_numpy()
            parts.append((values[:, None] == np.array(categories[column])[None, :]).astype(np.float64))
    return np.concatenate(parts, axis=1).astype(np.float32)[:, None, :]


def prepare_table(config: DataConfig, seed: int) -> PreparedSplits:
    """A user's CSV table as prepared splits: a seeded (stratified, for classes) split into search
    training, validation and test (``data.test_path``'s table, when given), numeric features
    standardised and categorical ones one-hot encoded, both fitted on the search-time training split only."""
    frame = _read_csv(config.path, "data.path")
    if len(frame) < 4:
        raise DatasetError(f"data.path: {config.path} has {len(frame)} row(s); too few to split into training, "
                           "validation and test")  # fmt: skip
    features = _table_columns(frame, config, config.path)
    kinds = _column_kinds(frame, features, config.path)
    task = table_task(frame[config.target], config.task)
    targets, classes = _table_targets(frame, config, task, config.path)
    sources = {config.path: _sha256(Path(config.path))}
    stratify = targets if task == "classification" else None
    if config.test_path is not None:
        test_frame = _read_csv(config.test_path, "data.test_path")
        _table_columns(test_frame, config, config.test_path)
        test_targets, _ = _table_targets(test_frame, config, task, config.test_path, classes or None)
        pool = np.arange(len(frame))
        sources[config.test_path] = _sha256(Path(config.test_path))
    else:
        try:
            pool, test_rows = train_test_split(np.arange(len(frame)), test_size=config.test_size, stratify=stratify,
                                               random_state=seed)  # fmt: skip
        except ValueError as exc:  # a class with one row cannot be stratified
            raise DatasetError(f"data.path: {config.path}: cannot split off a stratified test set ({exc})") from None
        test_frame, test_targets = frame.iloc[np.sort(test_rows)], targets[np.sort(test_rows)]
        pool = np.sort(pool)
    try:
        indices = {name: pool[idx] for name, idx in split_indices(targets[pool], config.train_size, config.val_size,
                                                                   seed, stratify=task == "classification").items()}  # fmt: skip
    except ValueError as exc:
        raise DatasetError(f"data.val_size: cannot split {config.path} ({exc})") from None
    train = frame.iloc[indices["train"]]
    categories = {c: sorted(train[c].astype(str).unique()) for c, kind in kinds.items() if kind == "categorical"}
    splits = {name: (_encode(frame.iloc[rows], kinds, categories), targets[rows]) for name, rows in indices.items()}
    splits["test"] = (_encode(test_frame, kinds, categories), test_targets)
    numeric = np.array([kind == "numeric" for kind, column in _expanded(kinds, categories)])
    flat = splits["train"][0][:, 0, :].astype(np.float64)
    std = flat.std(axis=0)
    summary = {
        "dataset": "csv",
        "seed": seed,
        "task": task,
        "image_shape": [1, 1, int(flat.shape[1])],
        "classes": classes,
        "mean": 0.0,  # the images' statistics, unused: features are standardised one by one
        "std": 1.0,
        # Numeric columns standardised with the search-time training split's statistics; one-hot columns as they are.
        "feature_mean": np.where(numeric, flat.mean(axis=0), 0.0).tolist(),
        "feature_std": np.where(numeric & (std > 0), std, 1.0).tolist(),
        "feature_names": [column for _, column in _expanded(kinds, categories)],
        "sources": sources,
    }
    if task == "regression":
        train_targets = splits["train"][1].astype(np.float64)
        summary |= {"target_mean": float(train_targets.mean()),
                    "target_std": float(train_targets.std()) if train_targets.std() > 0 else 1.0}  # fmt: skip
    else:
        summary["class_counts"] = {name: np.bincount(labels, minlength=len(classes)).tolist()
                                   for name, (_, labels) in splits.items()}  # fmt: skip
    return PreparedSplits(splits, summary)


def _expanded(kinds: dict[str, str], categories: dict[str, list[str]]) -> list[tuple[str, str]]:
    """(kind, name) of each encoded column: ``column`` or ``column=category``."""
    return [(kind, column) if kind == "numeric" else (kind, f"{column}={value}")
            for column, kind in kinds.items() for value in ([None] if kind == "numeric" else categories[column])]  # fmt: skip


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _image_folder_samples(folder: Path, classes: list[str] | None = None) -> tuple[list[tuple[str, int]], list[str]]:
    """torchvision's ``ImageFolder`` listing of ``folder``: (file, class index) pairs and the classes."""
    from torchvision.datasets.folder import find_classes, make_dataset

    try:
        found, _ = find_classes(str(folder))
        if classes is not None:
            unknown = sorted(set(found) - set(classes))
            if unknown:
                raise DatasetError(f"data.path: {folder} has class folder(s) {unknown[:5]} that train/ lacks")
            found = classes
        index = {name: code for code, name in enumerate(found)}
        samples = make_dataset(str(folder), index, extensions=IMAGE_EXTENSIONS, allow_empty=classes is not None)
    except FileNotFoundError as exc:
        raise DatasetError(f"data.path: {folder}: {first_line(exc)} (one folder per class, holding "
                           f"{', '.join(IMAGE_EXTENSIONS[:3])}... images)") from None  # fmt: skip
    return samples, found


def _decode_images(samples: list[tuple[str, int]], config: DataConfig) -> np.ndarray:
    """Every image decoded once, converted to grey or RGB and resized to ``data.image_size``:
    ``uint8 [N, H, W]`` (grey) or ``[N, 3, H, W]``."""
    from PIL import Image, UnidentifiedImageError

    height, width = config.image_size
    mode = "L" if config.channels == 1 else "RGB"
    decoded = []
    for file, _ in samples:
        try:
            with Image.open(file) as image:
                pixels = np.asarray(image.convert(mode).resize((width, height), Image.Resampling.BILINEAR))
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DatasetError(f"data.path: {file} is not a readable image ({first_line(exc)})") from None
        decoded.append(pixels if mode == "L" else pixels.transpose(2, 0, 1))
    return np.stack(decoded).astype(np.uint8)


def _folder_digest(samples: list[tuple[str, int]], root: Path) -> str:
    digest = hashlib.sha256()
    for file, label in samples:
        digest.update(f"{Path(file).relative_to(root)}:{label}".encode())
        digest.update(Path(file).read_bytes())
    return digest.hexdigest()


def load_image_folder(config: DataConfig, seed: int) -> RawDataset:
    """A user's images in torchvision's ``ImageFolder`` layout under ``data.path``: ``train/<class>/``
    and optionally ``test/<class>/`` (else a seeded, stratified ``data.test_size`` of train/)."""
    root = Path(config.path)
    if not (root / "train").is_dir():
        what = "does not exist" if not root.exists() else "has no train/ folder"
        raise DatasetError(f"data.path: {config.path} {what}; an image folder holds train/<class>/<image> "
                           "(and optionally test/<class>/<image>), one folder per class")  # fmt: skip
    train_samples, classes = _image_folder_samples(root / "train")
    if len(classes) < 2:
        raise DatasetError(f"data.path: {root / 'train'} has one class folder ({classes[0]!r}); classification "
                           "needs two or more")  # fmt: skip
    images = _decode_images(train_samples, config)
    labels = np.array([label for _, label in train_samples], dtype=np.int64)
    sources = {f"{config.path}/train": _folder_digest(train_samples, root)}
    if (root / "test").is_dir():
        test_samples, _ = _image_folder_samples(root / "test", classes)
        if not test_samples:
            raise DatasetError(f"data.path: {root / 'test'} holds no images; fill it or remove it")
        test_images, test_labels = _decode_images(test_samples, config), np.array([label for _, label in test_samples])
        sources[f"{config.path}/test"] = _folder_digest(test_samples, root)
        train_images, train_labels = images, labels
    else:
        try:
            train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=config.test_size, stratify=labels,
                                                   random_state=seed)  # fmt: skip
        except ValueError as exc:
            raise DatasetError(f"data.path: {root / 'train'}: cannot split off a stratified test set ({exc})") from None
        train_images, train_labels = images[np.sort(train_idx)], labels[np.sort(train_idx)]
        test_images, test_labels = images[np.sort(test_idx)], labels[np.sort(test_idx)]
    return RawDataset(
        name="image_folder", train_images=train_images, train_labels=train_labels, test_images=test_images,
        test_labels=test_labels.astype(np.int64), classes=classes, sources=sources,
    )  # fmt: skip


def _regression_statistics(features: np.ndarray, targets: np.ndarray) -> dict:
    """Standardisation of features and targets, from the search-time training split only."""
    flat = features.reshape(len(features), -1).astype(np.float64)
    feature_std = flat.std(axis=0)
    return {
        "task": "regression",
        "image_shape": [1, *features.shape[1:]],
        "classes": [],
        "mean": 0.0,  # the images' statistics, unused: features are standardised one by one
        "std": 1.0,
        "feature_mean": flat.mean(axis=0).tolist(),
        "feature_std": np.where(feature_std > 0, feature_std, 1.0).tolist(),  # a constant feature stays 0
        "target_mean": float(targets.mean()),
        "target_std": float(targets.std()) if targets.std() > 0 else 1.0,
    }


def _image_statistics(raw: RawDataset, splits: dict, seed: int) -> dict:
    train_pixels = splits["train"][0].astype(np.float64) / 255.0
    return {
        "dataset": raw.name,
        "seed": seed,
        # Grey images are stored [N, H, W], colour ones [N, C, H, W].
        "image_shape": list(raw.train_images.shape[1:])
        if raw.train_images.ndim == 4
        else [1, *raw.train_images.shape[1:]],
        "classes": raw.classes,
        # Normalisation statistics from the search-time training split only (no leak from val/test).
        "mean": float(train_pixels.mean()),
        "std": float(train_pixels.std()),
        "class_counts": {
            name: np.bincount(labels, minlength=len(raw.classes)).tolist() for name, (_, labels) in splits.items()
        },
    }


# ---------------------------------------------------------------------------------------------
# Feeding prepared data


@dataclass(frozen=True)
class TensorSplit:
    images: torch.Tensor  # float32 [N, 1, H, W], normalised (regression: [N, 1, 1, F] features)
    labels: torch.Tensor  # int64 [N] (regression: float32 standardised targets)

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> TensorSplit:
        """The split on ``device``: moved once, so every batch is cut where it is trained."""
        return TensorSplit(self.images.to(device), self.labels.to(device))


# What the stages read from dataset.json, and the JSON type each must have ("files" is optional).
_SUMMARY_TYPES: dict[str, type] = {
    "dataset": str, "image_shape": list, "classes": list, "mean": float, "std": float, "sizes": dict,
}  # fmt: skip


def summary_problem(summary: object) -> str | None:
    """Why ``summary`` is not a dataset.json that ``prepare`` wrote, or None when it is."""
    if not isinstance(summary, dict):
        return f"expected a JSON object, got {type(summary).__name__}"
    missing = [key for key in _SUMMARY_TYPES if key not in summary]
    if missing:
        return f"missing {', '.join(missing)}"
    for key, kind in _SUMMARY_TYPES.items():
        if not isinstance(summary[key], kind):
            return f"{key} has the wrong type ({type(summary[key]).__name__})"
    shape = summary["image_shape"]
    if len(shape) != 3 or not all(type(n) is int and n > 0 for n in shape):
        return "image_shape must be three positive integers"
    if not summary["classes"] and summary.get("task") != "regression":
        return "classes is empty"
    if summary.get("task") == "regression" or "feature_mean" in summary:
        width = shape[2]
        for key in ("feature_mean", "feature_std"):
            values = summary.get(key)
            if not (isinstance(values, list) and len(values) == width and all(isinstance(v, float) for v in values)):
                return f"{key} must be {width} numbers"
        if not all(v > 0 for v in summary["feature_std"]):
            return "feature_std must be > 0"
    if summary.get("task") == "regression":
        if not all(isinstance(summary.get(key), float) for key in ("target_mean", "target_std")):
            return "target_mean and target_std must be numbers"
        if not summary["target_std"] > 0:
            return "target_std must be > 0"
    if not (math.isfinite(summary["mean"]) and math.isfinite(summary["std"]) and summary["std"] > 0):
        return "mean and std must be finite, std > 0"  # the images are divided by std
    absent = [split for split in SPLITS if type(summary["sizes"].get(split)) is not int]
    if absent:
        return f"sizes lacks {', '.join(absent)}"
    if not isinstance(summary.get("files", {}), dict):
        return "files has the wrong type"
    return None


@dataclass(frozen=True)
class PreparedData:
    folder: Path
    summary: dict

    @classmethod
    def open(cls, folder: str | Path) -> PreparedData:
        folder = Path(folder)
        path = folder / "dataset.json"
        if not path.is_file():
            raise DatasetError(f"{path}: missing; run the prepare stage first (dvc repro prepare)")
        rebuild = "run `dvc repro -f prepare` to rebuild it"
        try:
            summary = json.loads(path.read_bytes())
        except OSError as exc:
            raise DatasetError(f"{path}: cannot read ({exc.strerror})") from None
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise DatasetError(f"{path}: not valid JSON ({str(exc)[:200]}); {rebuild}") from None
        problem = summary_problem(summary)
        if problem is not None:
            raise DatasetError(f"{path}: not a prepared dataset's summary: {problem}; {rebuild}")
        return cls(folder, summary)

    @property
    def num_classes(self) -> int:
        return len(self.summary["classes"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.summary["image_shape"])  # type: ignore[return-value]

    def load(self, split: str, limit: int | None = None, seed: int = 0) -> TensorSplit:
        """A split as normalised tensors; ``limit`` takes a seeded random subset of that size."""
        path = self.folder / f"{split}.pt"
        expected = self.summary.get("files", {}).get(path.name)
        if expected is not None and path.is_file() and _sha256(path) != expected:
            raise DatasetError(
                f"{path}: checksum mismatch with {self.folder / 'dataset.json'} (corrupt or replaced); "
                "run `dvc repro -f prepare` to rebuild it"
            )
        try:
            stored = torch.load(path, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds on a bad file
            raise DatasetError(f"{path}: cannot load ({type(exc).__name__}); run `dvc repro -f prepare`") from None
        images, labels = stored["images"], stored["labels"]
        regression = self.summary.get("task") == "regression"
        table = "feature_mean" in self.summary  # rows of features (diabetes, a CSV table), not pixels
        if limit is not None and limit < len(labels):
            keep, _ = train_test_split(np.arange(len(labels)), train_size=limit,
                                       stratify=None if regression else labels.numpy(), random_state=seed)  # fmt: skip
            keep = torch.from_numpy(np.sort(keep))
            images, labels = images[keep], labels[keep]
        if table:
            features = (images.float() - torch.tensor(self.summary["feature_mean"])) / torch.tensor(
                self.summary["feature_std"]
            )
            targets = (
                (labels.float() - self.summary["target_mean"]) / self.summary["target_std"] if regression else labels
            )
            return TensorSplit(features.float().unsqueeze(1), targets)
        normalised = (images.float().div_(255.0).sub_(self.summary["mean"])).div_(self.summary["std"])
        return TensorSplit(normalised.unsqueeze(1) if normalised.ndim == 3 else normalised, labels)


class TensorBatches:
    """Mini-batches of an in-memory split, formed by indexing; reshuffled (seeded) every epoch.

    The same batches, in the same order, as a ``DataLoader`` over the split's ``TensorDataset``
    whose sampler draws ``torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))``,
    without the per-sample indexing and collation.

    Lightning accepts any iterable with ``__len__`` as a dataloader; ``__iter__`` is called once
    per epoch, and epoch ``e`` uses the permutation of ``torch.Generator(seed + e)``; ``first_epoch``:
    the epoch of the first ``__iter__`` (a resumed fit's).
    """

    def __init__(
        self, split: TensorSplit, batch_size: int, *, shuffle: bool, seed: int = 0, first_epoch: int = 0
    ) -> None:
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self._epoch = first_epoch

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.split)
        if self.shuffle:
            # Drawn on the CPU, so the order is the same whatever device the split is on.
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self._epoch))
            order = order.to(self.split.images.device)
            self._epoch += 1
            for start in range(0, n, self.batch_size):
                index = order[start : start + self.batch_size]
                yield self.split.images[index], self.split.labels[index]
        else:
            for start in range(0, n, self.batch_size):
                yield (
                    self.split.images[start : start + self.batch_size],
                    self.split.labels[start : start + self.batch_size],
                )
