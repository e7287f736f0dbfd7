"""Weight reuse between generations: exact crop/pad/inherit/merge cases, real modules, and the on-disk store."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from pipeline.training.weights import (
    WeightStore,
    crop_or_pad,
    inherit_weights,
    merge_weights,
    transferable_fraction,
)

HYPOTHESIS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHAPES = st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=3)


def clones(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: tensor.clone() for key, tensor in state.items()}


def assert_same_state(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(actual) == list(expected)
    for key in expected:
        assert actual[key].dtype == expected[key].dtype, key
        assert torch.equal(actual[key], expected[key]), key


# ----------------------------------------------------------------------------------------------------------------------
# crop_or_pad


def test_crop_keeps_top_left_block():
    tensor = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert torch.equal(crop_or_pad(tensor, (2, 2)), torch.tensor([[0.0, 1.0], [4.0, 5.0]]))


def test_pad_puts_zeros_in_last_row_and_column():
    tensor = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    expected = torch.tensor([[1.0, 2.0, 0.0], [3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.equal(crop_or_pad(tensor, (3, 3)), expected)


def test_crop_one_dimension_while_padding_the_other():
    tensor = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    assert torch.equal(crop_or_pad(tensor, (2, 3)), torch.tensor([[1.0, 2.0, 0.0], [3.0, 4.0, 0.0]]))


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((2,), [1.0, 2.0]), ((3,), [1.0, 2.0, 3.0]), ((5,), [1.0, 2.0, 3.0, 0.0, 0.0])],
    ids=["crop", "same", "pad"],
)
def test_bias_vector(shape, expected):
    assert torch.equal(crop_or_pad(torch.tensor([1.0, 2.0, 3.0]), shape), torch.tensor(expected))


def test_keeps_dtype_and_returns_new_storage():
    tensor = torch.tensor([[1, 2], [3, 4]], dtype=torch.float64)
    same = crop_or_pad(tensor, (2, 2))
    assert same.dtype == torch.float64 and torch.equal(same, tensor)
    same[0, 0] = 99
    assert tensor[0, 0] == 1


def test_mismatched_number_of_dims_raises_naming_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(6,\)"):
        crop_or_pad(torch.zeros(2, 3), (6,))


@HYPOTHESIS
@given(have=SHAPES, data=st.data())
def test_crop_or_pad_property(have, data):
    """The shared block is copied, everything outside it is zero."""
    want = data.draw(st.lists(st.integers(min_value=0, max_value=5), min_size=len(have), max_size=len(have)))
    tensor = torch.arange(1, 1 + torch.Size(have).numel(), dtype=torch.float32).reshape(have)
    result = crop_or_pad(tensor, tuple(want))
    assert tuple(result.shape) == tuple(want)
    overlap = tuple(slice(0, min(h, w)) for h, w in zip(have, want))
    assert torch.equal(result[overlap], tensor[overlap])
    outside = torch.ones_like(result, dtype=torch.bool)
    outside[overlap] = False
    assert torch.all(result[outside] == 0)


# ----------------------------------------------------------------------------------------------------------------------
# inherit_weights


def _inherit_case():
    child = {
        "match": torch.zeros(2, 3),
        "other_shape": torch.zeros(4),
        "other_dtype": torch.zeros(2),
        "missing": torch.full((2,), 7.0),
        "count": torch.tensor(0, dtype=torch.long),
    }
    parent = {
        "match": torch.ones(2, 3),
        "other_shape": torch.ones(5),
        "other_dtype": torch.ones(2, dtype=torch.float64),
        "count": torch.tensor(12, dtype=torch.long),
        "parent_only": torch.ones(3),
    }
    return child, parent


def test_inherit_takes_only_exact_matches():
    child, parent = _inherit_case()
    result, taken = inherit_weights(child, parent)
    assert taken == ["match", "count"]
    assert list(result) == list(child)  # parent-only keys never leak into the child
    assert torch.equal(result["match"], torch.ones(2, 3))
    assert torch.equal(result["count"], torch.tensor(12))
    assert torch.equal(result["other_shape"], torch.zeros(4))
    assert result["other_dtype"].dtype == torch.float32 and torch.equal(result["other_dtype"], torch.zeros(2))
    assert torch.equal(result["missing"], torch.full((2,), 7.0))


def test_inherit_leaves_inputs_alone_and_shares_no_storage():
    child, parent = _inherit_case()
    child_before, parent_before = clones(child), clones(parent)
    result, _ = inherit_weights(child, parent)
    assert_same_state(child, child_before)
    assert_same_state(parent, parent_before)
    for tensor in result.values():
        tensor.add_(100)
    assert_same_state(child, child_before)
    assert_same_state(parent, parent_before)


# ----------------------------------------------------------------------------------------------------------------------
# merge_weights


def test_merge_equal_shapes_is_the_mean():
    child = {"w": torch.zeros(2, 2)}
    first = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]])}
    second = {"w": torch.tensor([[3.0, 6.0], [-3.0, 0.0]])}
    result, merged = merge_weights(child, [first, second])
    assert merged == ["w"]
    assert torch.equal(result["w"], torch.tensor([[2.0, 4.0], [0.0, 2.0]]))


def test_merge_crops_the_larger_pads_the_smaller_then_averages():
    child = {"w": torch.full((3, 3), -1.0)}
    larger = {"w": torch.arange(16, dtype=torch.float32).reshape(4, 4)}  # cropped to rows/cols 0..2
    smaller = {"w": torch.tensor([[10.0, 20.0], [30.0, 40.0]])}  # zero-padded to 3x3
    # ([[0,1,2],[4,5,6],[8,9,10]] + [[10,20,0],[30,40,0],[0,0,0]]) / 2
    expected = torch.tensor([[5.0, 10.5, 1.0], [17.0, 22.5, 3.0], [4.0, 4.5, 5.0]])
    result, merged = merge_weights(child, [larger, smaller])
    assert merged == ["w"]
    assert torch.equal(result["w"], expected)


def test_merge_key_in_one_parent_only_is_that_parent_cropped_or_padded():
    child = {"w": torch.full((2, 3), -1.0), "b": torch.full((3,), -1.0)}
    first = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    second: dict[str, torch.Tensor] = {}
    result, merged = merge_weights(child, [first, second])
    assert merged == ["w", "b"]
    assert torch.equal(result["w"], torch.tensor([[1.0, 2.0, 0.0], [3.0, 4.0, 0.0]]))
    assert torch.equal(result["b"], torch.tensor([1.0, 2.0, 3.0]))


def test_merge_keeps_the_childs_where_no_parent_contributes():
    child = {
        "nobody": torch.full((2,), 7.0),
        "other_ndim": torch.full((2, 2), 7.0),
        "num_batches_tracked": torch.tensor(3, dtype=torch.long),
    }
    parents = [
        {"other_ndim": torch.ones(4), "num_batches_tracked": torch.tensor(50, dtype=torch.long)},
        {"other_ndim": torch.ones(1, 2, 2), "num_batches_tracked": torch.tensor(90, dtype=torch.long)},
    ]
    result, merged = merge_weights(child, parents)
    assert merged == []
    assert_same_state(result, child)


def test_merge_skips_parents_of_another_ndim_but_averages_the_rest():
    child = {"w": torch.zeros(2)}
    result, merged = merge_weights(child, [{"w": torch.ones(2, 2)}, {"w": torch.tensor([4.0, 6.0])}])
    assert merged == ["w"]
    assert torch.equal(result["w"], torch.tensor([4.0, 6.0]))  # mean over the one usable parent


def test_merge_ignores_a_parents_integer_tensor_at_a_floating_key():
    child = {"w": torch.full((2,), 7.0)}
    result, merged = merge_weights(child, [{"w": torch.tensor([1, 3])}])
    assert merged == []
    assert torch.equal(result["w"], torch.full((2,), 7.0))


def test_merge_casts_to_the_childs_dtype():
    child = {"w": torch.zeros(2, dtype=torch.float32)}
    result, _ = merge_weights(child, [{"w": torch.tensor([1.0, 3.0], dtype=torch.float64)}])
    assert result["w"].dtype == torch.float32
    assert torch.equal(result["w"], torch.tensor([1.0, 3.0]))


def test_merge_leaves_inputs_alone_and_shares_no_storage():
    child = {"w": torch.zeros(2, 2), "n": torch.tensor(1)}
    parents = [{"w": torch.ones(2, 2), "n": torch.tensor(5)}, {"w": torch.ones(3, 1)}]
    child_before, parents_before = clones(child), [clones(p) for p in parents]
    result, _ = merge_weights(child, parents)
    for tensor in result.values():
        tensor.add_(100)
    assert_same_state(child, child_before)
    for parent, before in zip(parents, parents_before):
        assert_same_state(parent, before)


@HYPOTHESIS
@given(have=SHAPES, data=st.data())
def test_merge_of_one_parent_twice_is_that_parent_cropped_or_padded(have, data):
    want = tuple(data.draw(st.lists(st.integers(min_value=0, max_value=5), min_size=len(have), max_size=len(have))))
    parent = {"w": torch.randn(have, generator=torch.Generator().manual_seed(len(have)))}
    result, _ = merge_weights({"w": torch.zeros(want)}, [parent, parent])
    assert torch.allclose(result["w"], crop_or_pad(parent["w"], want))


# ----------------------------------------------------------------------------------------------------------------------
# Real modules


def mlp(hidden: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def test_merge_real_modules_of_three_widths_loads_strictly():
    wide, narrow, child = mlp(8, seed=1), mlp(6, seed=2), mlp(7, seed=3)
    state, merged = merge_weights(child.state_dict(), [wide.state_dict(), narrow.state_dict()])
    child.load_state_dict(state, strict=True)
    assert merged == ["0.weight", "0.bias", "2.weight", "2.bias"]

    # First layer (7, 4): rows 0..5 average both parents; row 6 only the wide one, halved by the narrow one's zero row.
    expected = wide[0].weight.detach()[:7].clone()
    expected[:6] += narrow[0].weight.detach()
    expected /= 2
    assert torch.allclose(child[0].weight, expected)
    assert torch.allclose(child[0].weight[6], wide[0].weight[6] / 2)
    # Second layer (3, 7): columns cropped from the wide parent, padded from the narrow one.
    expected_out = wide[2].weight.detach()[:, :7].clone()
    expected_out[:, :6] += narrow[2].weight.detach()
    expected_out /= 2
    assert torch.allclose(child[2].weight, expected_out)
    assert child(torch.zeros(5, 4)).shape == (5, 3)


def test_inherit_real_modules_takes_only_the_matching_output_bias():
    parent, child = mlp(8, seed=1), mlp(6, seed=2)
    state, taken = inherit_weights(child.state_dict(), parent.state_dict())
    child.load_state_dict(state, strict=True)
    assert taken == ["2.bias"]  # 3 outputs in both; every other tensor depends on the width
    assert torch.equal(child[2].bias, parent[2].bias)
    assert not torch.equal(child[0].weight, parent[0].weight[:6])


def test_batchnorm_counter_keeps_the_childs_in_merge():
    child, parent = nn.BatchNorm1d(4), nn.BatchNorm1d(6)
    parent.num_batches_tracked.fill_(40)
    parent.running_mean.copy_(torch.arange(6.0))
    state, merged = merge_weights(child.state_dict(), [parent.state_dict()])
    child.load_state_dict(state, strict=True)
    assert "num_batches_tracked" not in merged
    assert child.num_batches_tracked.item() == 0
    assert torch.equal(child.running_mean, torch.arange(4.0))


def test_transferable_fraction_counts_floating_elements_only():
    child = {"w": torch.zeros(3, 2), "b": torch.zeros(2), "n": torch.tensor(5)}
    assert transferable_fraction(child, ["w"]) == pytest.approx(6 / 8)
    assert transferable_fraction(child, ["w", "b", "n"]) == 1.0
    assert transferable_fraction(child, ["n"]) == 0.0
    assert transferable_fraction(child, []) == 0.0
    assert transferable_fraction({}, []) == 0.0


# ----------------------------------------------------------------------------------------------------------------------
# WeightStore


def test_store_round_trip(tmp_path):
    store = WeightStore(tmp_path / "weights")  # not created yet: save must make it
    state = mlp(5, seed=4).state_dict()
    assert "abc123" not in store
    assert store.load("abc123") is None
    store.save("abc123", state)
    assert "abc123" in store
    assert store.path("abc123") == tmp_path / "weights" / "abc123.pt"
    loaded = store.load("abc123")
    assert loaded is not None
    assert_same_state(loaded, dict(state))
    assert all(tensor.device.type == "cpu" for tensor in loaded.values())
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["abc123.pt"]  # no temp files left


def test_store_overwrite_replaces_and_a_failed_save_leaves_the_old_file(tmp_path, monkeypatch):
    store = WeightStore(tmp_path)
    store.save("h", {"w": torch.ones(2)})
    store.save("h", {"w": torch.full((2,), 2.0)})
    assert torch.equal(store.load("h")["w"], torch.full((2,), 2.0))

    def killed(*args, **kwargs):
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(RuntimeError, match="killed"):
        store.save("h", {"w": torch.full((2,), 3.0)})
    assert torch.equal(store.load("h")["w"], torch.full((2,), 2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.pt"]


def test_store_saves_a_view_alone(tmp_path):
    """A view is saved without the large storage behind it, so files stay the size of the weights."""
    store = WeightStore(tmp_path)
    big = torch.zeros(100_000)
    store.save("view", {"w": big[:4]})
    assert store.path("view").stat().st_size < 100_000
    assert torch.equal(store.load("view")["w"], torch.zeros(4))


@pytest.mark.parametrize("bad", ["", "../escape", "a/b", ".."])
def test_store_rejects_hashes_that_are_not_file_names(tmp_path, bad):
    store = WeightStore(tmp_path)
    with pytest.raises(ValueError):
        store.path(bad)
    assert bad not in store
