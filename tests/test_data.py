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
    with pytest.raises(
        DatasetError,
        match=r"t10k-labels-idx1-ubyte.gz: header declares shape \(10,\) \(18 bytes\) but the file has 15 bytes",
    ):
        read_idx(path)


def test_idx_corrupt_deflate_names_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(path, np.zeros((4, 28, 28), dtype=np.uint8))
    _damage_deflate(path)
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte.gz: cannot read \(Error -3"):
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


def _summary_without(key):
    def change(summary):
        del summary[key]
        return json.dumps(summary)

    return change


def _summary_with(key, value):
    def change(summary):
        return json.dumps({**summary, key: value})

    return change


# (id, dataset.json text from a good summary, what the message must say)
BAD_SUMMARIES = [
    ("truncated", lambda summary: json.dumps(summary, indent=2)[:150], "not valid JSON"),
    ("empty", lambda summary: "", "not valid JSON"),
    ("not-json", lambda summary: "dataset: digits\n", "not valid JSON"),
    ("not-utf8", lambda summary: b"\xff\xfe{}", "not valid JSON"),
    ("a-list", lambda summary: json.dumps([summary]), "expected a JSON object, got list"),
    ("missing-keys", lambda summary: json.dumps({"dataset": "digits"}), "missing image_shape, classes, mean, std"),
    ("missing-mean", _summary_without("mean"), "missing mean"),
    ("classes-not-a-list", _summary_with("classes", 10), "classes has the wrong type"),
    ("image-shape-short", _summary_with("image_shape", [8, 8]), "image_shape must be three positive integers"),
    ("std-zero", _summary_with("std", 0.0), "std > 0"),
    ("std-nan", lambda summary: json.dumps({**summary, "std": float("nan")}), "must be finite"),
    ("sizes-without-test", _summary_with("sizes", {"train": 1, "val": 1, "full_train": 2}), "sizes lacks test"),
]


@pytest.mark.parametrize(("write", "fragment"), [v[1:] for v in BAD_SUMMARIES], ids=[v[0] for v in BAD_SUMMARIES])
def test_bad_prepared_summary_names_file_and_says_rebuild(tmp_path, prepared_digits, write, fragment):
    text = write(json.loads(json.dumps(prepared_digits.summary)))
    path = tmp_path / "dataset.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(DatasetError) as info:
        PreparedData.open(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and fragment in message, message
    assert message.endswith("run `dvc repro -f prepare` to rebuild it") and "\n" not in message


def test_prepared_summary_written_by_prepare_opens(prepared_digits):
    again = PreparedData.open(prepared_digits.folder)
    assert again.summary == prepared_digits.summary and again.image_shape == (1, 8, 8)


def _damage_deflate(path):
    packed = bytearray(gzip.compress(gzip.decompress(path.read_bytes())))  # no file name: deflate data at byte 10
    packed[10] |= 0b110  # the first block's type 3 is reserved: zlib.error, not a gzip header error
    path.write_bytes(bytes(packed))


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


def _bad_deflate(folder):
    _damage_deflate(folder / "t10k-images-idx3-ubyte.gz")
    return r"t10k-images-idx3-ubyte.gz: cannot read \(Error -3 while decompressing"


def _labels_for_images(folder):
    # Same count as the labels, so only the kind of file can tell.
    write_idx(folder / "train-images-idx3-ubyte.gz", np.arange(120, dtype=np.uint8) % 10)
    return (r"train-images-idx3-ubyte.gz: an IDX labels file \(1-D, magic 0x00000801\), but the train images must "
            r"be an IDX images file \(3-D, magic 0x00000803\)")  # fmt: skip


def _images_for_labels(folder):
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros((40, 28, 28), dtype=np.uint8))
    return r"t10k-labels-idx1-ubyte.gz: an IDX images file .*, but the test labels must be an IDX labels file"


def _swapped_test_files(folder):
    images, labels = folder / "t10k-images-idx3-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz"
    images_bytes = images.read_bytes()
    images.write_bytes(labels.read_bytes())
    labels.write_bytes(images_bytes)
    return "t10k-images-idx3-ubyte.gz: an IDX labels file .* the test images must be an IDX images file"


def _test_images_other_size(folder):
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((40, 32, 32), dtype=np.uint8))
    return "t10k-images-idx3-ubyte.gz: 32x32 images, but .*train-images-idx3-ubyte.gz has 28x28 images"


def _empty_test_set(folder):
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((0, 28, 28), dtype=np.uint8))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(0, dtype=np.uint8))
    return "t10k-images-idx3-ubyte.gz: no images; the test set must not be empty"


def _empty_training_set(folder):
    write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((0, 28, 28), dtype=np.uint8))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(0, dtype=np.uint8))
    return "train-images-idx3-ubyte.gz: no images; the training set must not be empty"


BAD_DATASETS = [
    ("bad-magic", _corrupt_magic), ("truncated", _truncate), ("not-gzip", _not_gzip), ("missing-file", _delete),
    ("count-mismatch", _wrong_count), ("label-out-of-range", _bad_label), ("bad-deflate-data", _bad_deflate),
    ("labels-for-images", _labels_for_images), ("images-for-labels", _images_for_labels),
    ("test-files-swapped", _swapped_test_files), ("test-images-other-size", _test_images_other_size),
    ("empty-test-set", _empty_test_set), ("empty-training-set", _empty_training_set),
]  # fmt: skip


@pytest.mark.parametrize("corrupt", [c for _, c in BAD_DATASETS], ids=[name for name, _ in BAD_DATASETS])
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
