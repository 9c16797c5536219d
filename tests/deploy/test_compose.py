"""docker compose cannot run on the test machines: check the stack's description instead."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = PROJECT_ROOT / "platform" / "entrypoint.sh"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    return data


def entrypoint_roles() -> set[str]:
    case_block = ENTRYPOINT.read_text().split('case "$role" in', 1)[1]
    return set(re.findall(r"^\s+([a-z-]+)\)\s*$", case_block, flags=re.M))


def test_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "web", "worker-cpu", "worker-gpu", "redis", "postgres", "flower",
    }  # fmt: skip


def test_named_volumes_are_declared_and_shared(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    assert {"data", "postgres"} <= declared
    services = compose["services"]
    for name in ("web", "worker-cpu", "worker-gpu"):
        mounts = services[name]["volumes"]
        assert "data:/data" in mounts, f"{name} must share slides and artifacts"
        assert services[name]["environment"]["TUMORMAP_VAR_DIR"] == "/data"
    assert any(m.startswith("postgres:") for m in services["postgres"]["volumes"])
    for service in services.values():
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            assert source in declared or source.startswith((".", "/")), mount


def test_gpu_worker_reserves_an_nvidia_gpu_and_runs_alone(compose: dict[str, Any]) -> None:
    gpu = compose["services"]["worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["build"]["dockerfile"] == "platform/Dockerfile.gpu"
    assert "nvidia/cuda" in (PROJECT_ROOT / "platform/Dockerfile.gpu").read_text()
    worker_gpu = ENTRYPOINT.read_text().split("worker-gpu)", 1)[1].split(";;", 1)[0]
    assert "-Q gpu" in worker_gpu and "--concurrency 1" in worker_gpu
    assert "--pool solo" in worker_gpu


def test_every_dockerfile_and_command_exists(compose: dict[str, Any]) -> None:
    roles = entrypoint_roles()
    assert {"web", "worker-cpu", "worker-gpu", "flower"} <= roles
    for name, service in compose["services"].items():
        if "build" not in service:
            assert "image" in service, name
            continue
        dockerfile = PROJECT_ROOT / service["build"]["context"] / service["build"]["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"
        text = dockerfile.read_text()
        for copy_args in re.findall(r"^COPY (.+)$", text, flags=re.M):
            *sources, _destination = copy_args.split()
            for source in sources:
                assert (PROJECT_ROOT / source).exists(), f"{dockerfile.name} copies {source}"
        assert "platform/entrypoint.sh" in text
        command = service["command"][0]
        assert command in roles, f"{name} runs {command!r}, which the entrypoint does not know"
    assert ENTRYPOINT.stat().st_mode & 0o111, "entrypoint.sh must be executable"


def test_entrypoint_targets_exist() -> None:
    text = ENTRYPOINT.read_text()
    assert "config.wsgi" in text
    assert (PROJECT_ROOT / "config" / "wsgi.py").is_file()
    assert "platform/gunicorn.conf.py" in text
    assert (PROJECT_ROOT / "platform" / "gunicorn.conf.py").is_file()
    assert "-A config" in text


def test_platform_is_not_a_python_package() -> None:
    # A top-level `platform` package would shadow the standard library's module.
    assert not (PROJECT_ROOT / "platform" / "__init__.py").exists()
    import platform

    assert hasattr(platform, "python_version")
