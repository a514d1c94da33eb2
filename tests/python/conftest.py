"""Shared pytest fixtures: where the repository, its fixtures and the built binaries are.

Nothing is skipped when something is missing: a test that needs the release binary fails
with the command that builds it.
"""

import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def repo_root():
    """The repository root."""
    return ROOT


@pytest.fixture(scope="session")
def fixtures_dir():
    """The golden reference data (fixtures/, see fixtures/GOLDEN-README.md)."""
    return ROOT / "fixtures"


@pytest.fixture(scope="session")
def vitconv_bin():
    """The release binary the test command builds (`cargo build --release`)."""
    path = ROOT / "target" / "release" / "vitconv"
    assert path.is_file(), f"{path} is missing: run `cargo build --release` first"
    return path


@pytest.fixture(scope="session")
def recode_bin():
    """The tensor crate's `recode` example (IN OUT: rewrite a tensor file in OUT's format), built on demand."""
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "-p", "vitconv-tensors", "--example", "recode"],
        cwd=ROOT,
        check=True,
    )
    path = ROOT / "target" / "release" / "examples" / "recode"
    assert path.is_file(), path
    return path
