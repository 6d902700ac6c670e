"""The products' backend (models/fast/choice.py): measured once per machine and cached beside the
compiled step; a private op that is missing, fails or computes something else is never chosen."""

import json

import pytest
import torch

from lyricist.models.cells import make_cell
from lyricist.models.fast import choice, matmul
from lyricist.models.fast.head import linear_cross_entropy


@pytest.fixture
def cache(monkeypatch, tmp_path):
    """A fresh cache folder, small measurements (the choice itself is not asserted: it is the machine's)."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.delenv("LYRICIST_PRODUCTS", raising=False)
    monkeypatch.setattr(choice, "LOOP_SHAPES", [(8, 16, 24), (8, 24, 16)])
    monkeypatch.setattr(choice, "DENSE_SHAPES", [(40, 16, 24), (40, 24, 16)])
    monkeypatch.setattr(choice, "REPEATS", {"loop": 2, "dense": 2})
    monkeypatch.setattr(choice, "load_per_cpu", lambda: 0.5)  # a quiet machine, whatever this one's load
    return tmp_path / "lyricist"


def test_the_choice_is_measured_once_and_read_back_from_beside_the_compiled_step(cache, monkeypatch):
    chosen = choice.choose()
    path = choice.cache_file()
    assert path.parent == cache and path.name.startswith(choice.kernels.extension_name())
    saved = json.loads(path.read_text())
    assert (saved["dense"], saved["loop"]) == chosen and saved["threads"] == torch.get_num_threads()
    assert saved["load_per_cpu"] == 0.5  # kept with the choice, to measure again once the machine is quiet
    assert saved["relative_time"]["loop"]["torch"] == 2.0  # torch against itself, over 2 shapes
    monkeypatch.setattr(choice, "measure", lambda: pytest.fail("measured a second time"))
    assert choice.choose() == chosen


def test_a_choice_measured_on_a_busy_machine_is_measured_again_once_it_is_quiet(cache, monkeypatch):
    path = choice.cache_file()
    path.parent.mkdir(parents=True)
    busy = {"dense": "onednn", "loop": "onednn", "load_per_cpu": 6.5, "loop_by_shape": {"8x16x24": "onednn"}}
    path.write_text(json.dumps(busy))
    monkeypatch.setattr(choice, "load_per_cpu", lambda: 3.0)  # still busy: the old measurement stands
    assert choice.choose() == ("onednn", "onednn")
    monkeypatch.setattr(choice, "load_per_cpu", lambda: 0.4)  # quiet now: measured again, all of it
    monkeypatch.setattr(choice, "measure", lambda: {"dense": "torch", "loop": "mkl", "load_per_cpu": 0.4})
    assert choice.choose() == ("torch", "mkl")
    assert json.loads(path.read_text()) == {"dense": "torch", "loop": "mkl", "load_per_cpu": 0.4}
    monkeypatch.setattr(choice, "measure", lambda: pytest.fail("measured a third time"))
    assert choice.choose() == ("torch", "mkl")
    path.write_text(json.dumps({"dense": "onednn", "loop": "mkl"}))  # a file from before the load was kept
    monkeypatch.setattr(choice, "measure", lambda: {"dense": "torch", "loop": "torch", "load_per_cpu": 0.4})
    assert choice.choose() == ("torch", "torch")
    path.write_text(json.dumps({"dense": "onednn", "loop": "mkl", "load_per_cpu": "high"}))  # a damaged file
    assert choice.choose() == ("torch", "torch")


def test_the_loop_backend_is_measured_once_per_shape_and_kept_in_the_same_file(cache, monkeypatch):
    monkeypatch.setattr(choice, "_by_shape", {})
    chosen = choice.loop_for(8, 24, 16)  # rows, out, in
    assert chosen in ("torch", "mkl", "onednn")
    saved = json.loads(choice.cache_file().read_text())
    assert saved["loop_by_shape"] == {"8x16x24": chosen} and "dense" in saved  # beside the machine-wide choice
    monkeypatch.setattr(choice, "_by_shape", {})  # a new process: read from the file, not measured
    monkeypatch.setattr(choice, "_relative_times", lambda *a: pytest.fail("measured a second time"))
    assert choice.loop_for(8, 24, 16) == chosen
    # and pack() asks for its own shape when no backend is forced
    weight = torch.randn(24, 16)
    packed = matmul.pack(weight, rows=8, uses=matmul.MIN_USES_TO_PACK)
    assert (packed is weight) == (chosen == "torch")


def test_a_missing_private_op_is_never_chosen(cache, monkeypatch):
    real = choice.private_op
    monkeypatch.setattr(choice, "private_op", lambda ns, name: None if ns == "mkl" else real(ns, name))
    result = choice.measure()
    assert "mkl" not in result["relative_time"]["loop"] and result["loop"] in ("torch", "onednn")


@pytest.mark.parametrize("fault", ["raises", "wrong"])
def test_a_private_op_that_fails_or_changed_is_dropped_with_a_warning(cache, monkeypatch, fault):
    """As if a torch upgrade changed the op: it raises, or returns something else. Torch's own
    products take over everywhere (the margin makes an equal-speed choice public anyway)."""
    def broken(*args):
        if fault == "raises":
            raise RuntimeError("mkldnn::_linear_pointwise() Expected 7 arguments, got 6")
        return torch.zeros(args[0].shape[0], 3)

    real = choice.private_op
    monkeypatch.setattr(choice, "private_op", lambda ns, name: None if ns == "mkl" else (
        broken if name == "_linear_pointwise" else real(ns, name)))
    with pytest.warns(RuntimeWarning, match="the onednn product failed its check and is not used"):
        result = choice.measure()
    assert result["dense"] == result["loop"] == "torch"
    assert set(result["relative_time"]["dense"]) == set(result["relative_time"]["loop"]) == {"torch"}


def test_public_only_on_request(monkeypatch):
    monkeypatch.setenv("LYRICIST_PRODUCTS", "public")
    monkeypatch.setattr(choice, "measure", lambda: pytest.fail("measured"))
    assert choice.choose() == choice.PUBLIC == matmul.Backend("torch", "torch")
    assert choice.loop_for(64, 2048, 512) == "torch"


def test_public_backend_uses_no_private_op(monkeypatch):
    """With torch's products chosen, a layer's products and the head's never reach a private op
    (the compiled steps call them only on a packed weight, and nothing is packed)."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a private op was called")

    monkeypatch.setattr(matmul, "_ONEDNN", forbidden)
    monkeypatch.setattr(matmul, "_MKL_PACKED", forbidden)
    torch.manual_seed(0)
    cell, head = make_cell("lstm", 8, 16), torch.randn(20, 16, requires_grad=True)
    x, targets = torch.randn(12, 16, 8, requires_grad=True), torch.randint(20, (12, 16))  # (T, B, I): enough to pack
    with matmul.use(choice.PUBLIC):
        packed = matmul.pack(cell.weight_hh, rows=16, uses=12)
        outputs, _ = cell.sequence(matmul.linear(x, cell.weight_ih, cell.bias_ih), cell.begin_state(16))
        linear_cross_entropy(outputs, head, torch.zeros(20), targets).backward()
    assert packed is cell.weight_hh and x.grad is not None and cell.weight_hh.grad is not None
