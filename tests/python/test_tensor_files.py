"""The real clients read the tensor files vitconv writes, and vitconv reads the ones torch writes.

- Every golden .npz is rewritten as .pt and .safetensors by the tensor crate (its `recode`
  example); torch.load(weights_only=True), torch.load(mmap=True) and
  safetensors.torch.load_file must return exactly numpy's view of the source, tensor by
  tensor, bfloat16 included (numpy holds JAX bfloat16 as the 2-byte void type <V2).
- Files written by the real torch.save (views with offsets and strides, shared storages,
  nested checkpoint dicts, every dtype) are read back by vitconv identically.
- A pickle that would run a command is refused, naming the global, and runs nothing.
"""

import collections
import json
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

GOLDEN = [
    "vit-token/checkpoint.npz",
    "vit-prelogits/checkpoint.npz",
    "vit-gap/checkpoint.npz",
    "vit-mlp4/checkpoint.npz",
    "hybrid-r2/checkpoint.npz",
    "hybrid-root/checkpoint.npz",
    "vit-token-variants/bfloat16.npz",
    "vit-token-variants/compressed.npz",
    "vit-token-variants/opt-target-prefix.npz",
]


def as_bits(t):
    """A torch tensor's raw element bits as numpy (bf16 has no numpy dtype; compare bits)."""
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def numpy_bits(a):
    """A numpy array as comparable bits: the <V2 void of JAX bfloat16 as uint16."""
    if a.dtype.kind == "V" and a.dtype.itemsize == 2:
        return a.view(np.uint16)
    return a


def assert_same(loaded, src_npz, what):
    src = np.load(src_npz)
    assert list(loaded.keys()) == list(src.files), what
    for k in src.files:
        want = numpy_bits(src[k])
        got = loaded[k]
        if isinstance(got, torch.Tensor):
            if src[k].dtype.kind == "V":
                assert got.dtype == torch.bfloat16, (what, k, got.dtype)
            got = as_bits(got)
        assert got.shape == want.shape, (what, k)
        assert got.dtype == want.dtype, (what, k, got.dtype, want.dtype)
        assert np.array_equal(got, want), (what, k)


@pytest.mark.parametrize("rel", GOLDEN)
def test_pt_we_write_loads_in_torch(rel, fixtures_dir, recode_bin, tmp_path):
    src = fixtures_dir / rel
    out = tmp_path / "w.pt"
    subprocess.run([recode_bin, src, out], check=True)
    safe = torch.load(out, weights_only=True)
    assert isinstance(safe, collections.OrderedDict)
    assert_same(safe, src, "weights_only")
    mapped = torch.load(out, mmap=True, weights_only=True)
    assert isinstance(mapped, collections.OrderedDict)
    assert_same(mapped, src, "mmap")
    # Records are aligned like torch's own writer, which mmap relies on.
    with zipfile.ZipFile(out) as z, open(out, "rb") as f:
        for info in z.infolist():
            if "/data/" in info.filename:
                f.seek(info.header_offset + 26)
                name_len = int.from_bytes(f.read(2), "little")
                extra_len = int.from_bytes(f.read(2), "little")
                assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename


@pytest.mark.parametrize("rel", GOLDEN)
def test_safetensors_we_write_loads_in_safetensors(rel, fixtures_dir, recode_bin, tmp_path):
    src = fixtures_dir / rel
    out = tmp_path / "w.safetensors"
    subprocess.run([recode_bin, src, out], check=True)
    loaded = load_file(out)
    # safetensors returns a plain dict in file order; compare by name.
    ordered = collections.OrderedDict((k, loaded[k]) for k in np.load(src).files)
    assert set(loaded) == set(ordered)
    assert_same(ordered, src, "safetensors")


def test_npz_we_write_loads_in_numpy(fixtures_dir, recode_bin, tmp_path):
    src = fixtures_dir / "vit-token-variants/bfloat16.npz"
    out = tmp_path / "w.npz"
    subprocess.run([recode_bin, src, out], check=True)
    got, want = np.load(out), np.load(src)
    assert got.files == want.files
    for k in want.files:
        assert got[k].dtype == want[k].dtype and np.array_equal(numpy_bits(got[k]), numpy_bits(want[k])), k


def test_torch_saved_files_read_back_exactly(recode_bin, vitconv_bin, tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 8, generator=g)
    state = collections.OrderedDict(
        {
            "plain": torch.randn(3, 4, generator=g),
            "transposed": base.t(),  # strides (1, 8) over a shared storage
            "row_view": base[2],  # storage offset 16 into the same storage
            "half": torch.randn(5, generator=g).half(),
            "bf16": torch.randn(2, 3, generator=g).bfloat16(),
            "f64": torch.randn(2, generator=g).double(),
            "long": torch.arange(7),
            "int": torch.arange(3, dtype=torch.int32),
            "short": torch.arange(3, dtype=torch.int16),
            "int8": torch.arange(-2, 2, dtype=torch.int8),
            "byte": torch.arange(4, dtype=torch.uint8),
            "bool": torch.tensor([True, False, True]),
            "scalar": torch.tensor(3.5),
            "empty": torch.zeros(0, 3),
            "param": torch.nn.Parameter(torch.ones(2)),
        }
    )
    src = tmp_path / "torch.pt"
    torch.save({"state_dict": state, "epoch": 3, "note": "nested"}, src)
    out = tmp_path / "back.npz"
    subprocess.run([recode_bin, src, out], check=True)
    got = np.load(out)
    assert got.files == [f"state_dict.{k}" for k in state]
    for k, t in state.items():
        a = got[f"state_dict.{k}"]
        want = as_bits(t.detach())
        assert a.shape == tuple(t.shape), k
        assert np.array_equal(numpy_bits(a), want), k

    listing = json.loads(subprocess.run([vitconv_bin, "inspect", "--json", src], check=True, capture_output=True).stdout)
    tensors = {t["name"]: t for t in listing["files"][0]["tensors"]}
    assert listing["files"][0]["format"] == "pt"
    assert tensors["state_dict.transposed"]["shape"] == [8, 6]
    assert tensors["state_dict.bf16"]["dtype"] == "bf16"


class _Payload:
    """Unpickling this runs `command` through the given callable, like a hostile checkpoint would."""

    def __init__(self, func, command):
        self.func, self.command = func, command

    def __reduce__(self):
        return (self.func, (self.command,))


def _evil_archive(path, payload):
    data = pickle.dumps(payload, protocol=2)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
    return data


@pytest.mark.parametrize("func", [os.system, eval, subprocess.Popen], ids=["os.system", "builtins.eval", "subprocess.Popen"])
def test_hostile_pickle_is_refused_and_runs_nothing(func, vitconv_bin, tmp_path):
    marker = tmp_path / "marker"
    if func is os.system:
        command = f"touch {marker}"
    elif func is eval:
        command = f"open({str(marker)!r}, 'w').close()"
    else:
        command = ["touch", str(marker)]
    evil = tmp_path / "evil.pt"
    data = _evil_archive(evil, _Payload(func, command))
    # The global exactly as the pickle spells it: os.system pickles as posix.system on Linux,
    # and protocol 2 writes builtins as __builtin__.
    assert data[2:3] == b"c", data[:8]
    module, name = data[3:].split(b"\n")[:2]
    module, name = module.decode(), name.decode()
    assert name == func.__name__

    r = subprocess.run([vitconv_bin, "inspect", evil], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert f"{module}.{name}" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not marker.exists(), "vitconv ran the pickle"

    # The payload is live: Python's own unpickler, in a child process, does create the marker.
    code = "import pickle,sys,time; pickle.loads(sys.stdin.buffer.read()); time.sleep(0.5)"
    subprocess.run([sys.executable, "-c", code], input=data, check=False, capture_output=True)
    assert marker.exists(), "the test payload is not live, so the refusal above proves nothing"


def test_inspect_recognises_wrapped_training_checkpoints(tmp_path):
    """A training checkpoint's weights under `state_dict` (or DDP's `module.`) are recognised, the wrapper
    is named, and the entries that are not tensors are listed, not ignored."""
    from test_loaders import BINARY, FIXTURES

    out = tmp_path / "m.safetensors"
    run = subprocess.run([str(BINARY), "npz-to-pt", str(FIXTURES / "vit-token/checkpoint.npz"), str(out),
                          "--layout", "timm", "--quiet"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    sd = load_file(str(out))
    ckpt = {"state_dict": {f"module.{k}": v for k, v in sd.items()},
            "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 0.1}]},
            "epoch": 7, "arch": "vit"}
    torch.save(ckpt, tmp_path / "train.pt")
    torch.save({"model": sd}, tmp_path / "model.pt")
    run = subprocess.run([str(BINARY), "inspect", "--json", str(tmp_path / "train.pt"), str(tmp_path / "model.pt"),
                          str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    train, model, plain = json.loads(run.stdout)["files"]
    assert train["summary"]["family"] == "timm" and train["summary"]["wrapper"] == "state_dict.module."
    assert any("1 other tensors lie outside" in p for p in train["summary"]["parts"]), train["summary"]
    assert "epoch = 7" in train["non_tensor_entries"] and "arch (str)" in train["non_tensor_entries"]
    assert model["summary"]["wrapper"] == "model." and model["non_tensor_entries"] == []
    # The converted file records its head count, which fused q/k/v weights cannot tell.
    assert "4 heads" in plain["summary"]["architecture"], plain["summary"]
    text = subprocess.run([str(BINARY), "inspect", str(tmp_path / "train.pt")], capture_output=True, text=True)
    assert "non-tensor entries: " in text.stdout and "epoch = 7" in text.stdout
