"""Shared fixtures. ``pytest --device cuda`` runs the same tests on a GPU (kornia-style)."""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", action="store", default="cpu", help="torch device for tests: cpu, cuda, cuda:N")


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.config.getoption("--device"))


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    # Tests share 2 cores with each other; one intra-op thread keeps them predictable.
    torch.set_num_threads(1)
    torch.manual_seed(0)
