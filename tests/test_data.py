"""Data loaders on tiny IDX files written here, and the digits path."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from pipeline import data as data_module
from pipeline.config import DataConfig
from pipeline.data import (
    FASHION_MNIST_FILES,
    DatasetError,
    PreparedData,
    TensorBatches,
    TensorSplit,
    prepare_dataset,
    read_idx,
    split_indices,
    write_idx,
)


def write_fake_fashion_mnist(folder, n_train=120, n_test=40, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": np.arange(n_train, dtype=np.uint8) % 10,
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": np.arange(n_test, dtype=np.uint8) % 10,
    }
    suffix = ".gz" if gz else ""
    for key, stem in FASHION_MNIST_FILES.items():
        write_idx(folder / f"{stem}{suffix}", arrays[key])
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    images = np.random.default_rng(1).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    path = tmp_path / ("images.gz" if gz else "images")
    write_idx(path, images)
    np.testing.assert_array_equal(read_idx(path), images)


def test_idx_bad_magic_names_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x09\x99" + b"\x00" * 20)
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.*magic"):
        read_idx(path)


def test_idx_truncated_names_file(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    write_idx(path, np.arange(10, dtype=np.uint8))
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-3]))
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte.gz: header declares shape \(10,\) \(18 bytes\) but the file has 15 bytes"):
        read_idx(path)


def test_prepare_from_root_folder(tmp_path):
    arrays = write_fake_fashion_mnist(tmp_path / "fm")
    config = DataConfig(dataset="fashion_mnist", root=str(tmp_path / "fm"), train_size=50, val_size=30)
    summary = prepare_dataset(config, seed=3, out_dir=tmp_path / "out", download_dir=tmp_path / "raw")
    assert summary["sizes"] == {"train": 50, "val": 30, "full_train": 90, "test": 40}
    # Stratified: 30 validation images over 10 balanced classes is 3 per class.
    assert summary["class_counts"]["val"] == [3] * 10
    assert set(summary["sources"]) == {str(p) for p in (tmp_path / "fm").iterdir()}
    on_disk = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert on_disk == summary
    test = torch.load(tmp_path / "out" / "test.pt")
    np.testing.assert_array_equal(test["images"].numpy(), arrays["test_images"])
    # The search's train split is drawn from full_train and never overlaps validation.
    train = torch.load(tmp_path / "out" / "train.pt")["images"].reshape(50, -1)
    val = torch.load(tmp_path / "out" / "val.pt")["images"].reshape(30, -1)
    full = {bytes(row) for row in torch.load(tmp_path / "out" / "full_train.pt")["images"].reshape(90, -1).numpy()}
    assert {bytes(r) for r in train.numpy()} <= full
    assert not ({bytes(r) for r in val.numpy()} & full)


def test_prepare_reads_torchvision_layout(tmp_path):
    write_fake_fashion_mnist(tmp_path / "root" / "FashionMNIST" / "raw", gz=False)
    config = DataConfig(dataset="fashion_mnist", root=str(tmp_path / "root"), val_size=20)
    summary = prepare_dataset(config, seed=0, out_dir=tmp_path / "out", download_dir=tmp_path / "raw")
    assert summary["sizes"]["full_train"] == 100


def test_missing_root_file_is_named(tmp_path):
    write_fake_fashion_mnist(tmp_path / "fm")
    (tmp_path / "fm" / "t10k-images-idx3-ubyte.gz").unlink()
    config = DataConfig(dataset="fashion_mnist", root=str(tmp_path / "fm"), val_size=20)
    with pytest.raises(DatasetError, match="data.root=.*t10k-images-idx3-ubyte"):
        prepare_dataset(config, seed=0, out_dir=tmp_path / "out", download_dir=tmp_path / "raw")


def test_count_mismatch_is_named(tmp_path):
    write_fake_fashion_mnist(tmp_path / "fm")
    write_idx(tmp_path / "fm" / "train-labels-idx1-ubyte.gz", np.zeros(7, dtype=np.uint8))
    config = DataConfig(dataset="fashion_mnist", root=str(tmp_path / "fm"), val_size=20)
    with pytest.raises(DatasetError, match="120 images but .*train-labels.* 7 labels"):
        prepare_dataset(config, seed=0, out_dir=tmp_path / "out", download_dir=tmp_path / "raw")


def test_lookup_order_prefers_debian_then_download(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    write_fake_fashion_mnist(debian)
    monkeypatch.setattr(data_module, "DEBIAN_FASHION_MNIST", debian)
    files = data_module.locate_fashion_mnist(None, tmp_path / "raw")
    assert all(str(p).startswith(str(debian)) for p in files.values())

    monkeypatch.setattr(data_module, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    calls = []

    def fake_download(folder):
        calls.append(folder)
        raise DatasetError("offline")

    monkeypatch.setattr(data_module, "_download_with_torchvision", fake_download)
    with pytest.raises(DatasetError, match="offline"):
        data_module.locate_fashion_mnist(None, tmp_path / "raw")
    assert calls == [tmp_path / "raw"]


def test_offline_download_failure_says_what_to_do(tmp_path, monkeypatch):
    import torchvision.datasets

    class NoNetwork:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", NoNetwork)
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        data_module._download_with_torchvision(tmp_path)


def test_split_is_seeded_and_stratified():
    labels = np.repeat(np.arange(10), 30)
    first = split_indices(labels, train_size=100, val_size=50, seed=5)
    again = split_indices(labels, train_size=100, val_size=50, seed=5)
    other = split_indices(labels, train_size=100, val_size=50, seed=6)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["val"], other["val"])
    assert np.bincount(labels[first["val"]]).tolist() == [5] * 10
    assert np.bincount(labels[first["train"]]).tolist() == [10] * 10
    assert np.isin(first["train"], first["full_train"]).all()
    assert not np.isin(first["val"], first["full_train"]).any()


def test_split_rejects_impossible_sizes():
    labels = np.repeat(np.arange(10), 10)
    with pytest.raises(DatasetError, match="data.val_size"):
        split_indices(labels, None, 100, 0)
    with pytest.raises(DatasetError, match="data.train_size"):
        split_indices(labels, 95, 10, 0)


def test_digits_prepared_and_normalised(prepared_digits):
    train = prepared_digits.load("train")
    assert train.images.shape == (400, 1, 8, 8)
    assert train.images.dtype == torch.float32
    # Normalised with the train split's own statistics.
    assert abs(float(train.images.mean())) < 1e-4
    assert abs(float(train.images.std()) - 1) < 1e-2
    assert prepared_digits.summary["sizes"]["test"] == 360


def test_load_limit_is_seeded_subset(prepared_digits):
    a = prepared_digits.load("full_train", limit=100, seed=1)
    b = prepared_digits.load("full_train", limit=100, seed=1)
    assert len(a) == 100
    assert torch.equal(a.images, b.images)


def test_tensor_batches_cover_every_sample_once_per_epoch():
    split = TensorSplit(torch.arange(10, dtype=torch.float32).reshape(10, 1, 1, 1), torch.arange(10))
    batches = TensorBatches(split, batch_size=4, shuffle=True, seed=7)
    assert len(batches) == 3
    epoch1 = torch.cat([y for _, y in batches])
    epoch2 = torch.cat([y for _, y in batches])
    assert sorted(epoch1.tolist()) == list(range(10)) == sorted(epoch2.tolist())
    assert epoch1.tolist() != epoch2.tolist()  # reshuffled each epoch
    replay = TensorBatches(split, batch_size=4, shuffle=True, seed=7)
    assert torch.cat([y for _, y in replay]).tolist() == epoch1.tolist()  # same seed, same batches
    ordered = TensorBatches(split, batch_size=4, shuffle=False)
    assert torch.cat([y for _, y in ordered]).tolist() == list(range(10))


def test_prepared_data_missing_says_run_prepare(tmp_path):
    with pytest.raises(DatasetError, match="run the prepare stage"):
        PreparedData.open(tmp_path)


def _corrupt_magic(folder):
    path = folder / "train-images-idx3-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[2:4] = b"\x09\x99"
    path.write_bytes(gzip.compress(bytes(raw)))
    return "train-images-idx3-ubyte.gz: bad IDX magic number"


def _truncate(folder):
    path = folder / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
    return "t10k-images-idx3-ubyte.gz: header declares shape"


def _not_gzip(folder):
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(b"this is not gzip data at all")
    return "train-labels-idx1-ubyte.gz: cannot read"


def _delete(folder):
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    return "missing t10k-labels-idx1-ubyte"


def _wrong_count(folder):
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(3, dtype=np.uint8))
    return "t10k-images-idx3-ubyte.gz: 40 images but .*t10k-labels-idx1-ubyte.gz has 3 labels"


def _bad_label(folder):
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.full(120, 12, dtype=np.uint8))
    return "train-labels-idx1-ubyte.gz: label 12 is not a FashionMNIST class"


@pytest.mark.parametrize(
    "corrupt", [_corrupt_magic, _truncate, _not_gzip, _delete, _wrong_count, _bad_label],
    ids=["bad-magic", "truncated", "not-gzip", "missing-file", "count-mismatch", "label-out-of-range"],
)
def test_bad_dataset_file_is_named(tmp_path, corrupt):
    write_fake_fashion_mnist(tmp_path / "fm")
    expected = corrupt(tmp_path / "fm")
    config = DataConfig(dataset="fashion_mnist", root=str(tmp_path / "fm"), val_size=20)
    with pytest.raises(DatasetError, match=expected):
        prepare_dataset(config, seed=0, out_dir=tmp_path / "out", download_dir=tmp_path / "raw")


class EpochSeededSampler(torch.utils.data.Sampler):
    """The ordinary DataLoader path's shuffling, reseeded per epoch as TensorBatches documents."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        self.epoch += 1
        return iter(order.tolist())


def dataloader_path(split: TensorSplit, batch_size: int, seed: int) -> torch.utils.data.DataLoader:
    dataset = torch.utils.data.TensorDataset(split.images, split.labels)
    # Its own generator: a DataLoader draws a worker base seed per epoch, which would otherwise come
    # from the global stream and shift every dropout mask after it.
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=EpochSeededSampler(len(split), seed),
                                       generator=torch.Generator().manual_seed(seed))  # fmt: skip


@pytest.mark.parametrize(("n", "batch_size"), [(50, 8), (64, 64), (10, 32)])
def test_tensor_batches_equal_the_dataloader_path_epoch_by_epoch(n, batch_size):
    generator = torch.Generator().manual_seed(n)
    split = TensorSplit(torch.randn(n, 1, 4, 4, generator=generator), torch.randint(0, 10, (n,), generator=generator))
    ours, theirs = TensorBatches(split, batch_size, shuffle=True, seed=3), dataloader_path(split, batch_size, seed=3)
    assert len(ours) == len(theirs)
    for _ in range(3):  # every epoch reshuffles, identically
        pairs = list(zip(ours, theirs, strict=True))
        for (images, labels), (loader_images, loader_labels) in pairs:
            assert torch.equal(images, loader_images) and torch.equal(labels, loader_labels)


def test_split_moved_to_a_device_keeps_its_batches():
    split = TensorSplit(torch.arange(20.0).reshape(20, 1, 1, 1), torch.arange(20))
    moved = split.to("cpu")  # the GPU path is the same call with "cuda"
    assert torch.equal(moved.images, split.images) and moved.labels.device.type == "cpu"
    ours = [labels for _, labels in TensorBatches(moved, 6, shuffle=True, seed=1)]
    again = [labels for _, labels in TensorBatches(split, 6, shuffle=True, seed=1)]
    assert all(torch.equal(a, b) for a, b in zip(ours, again, strict=True))
