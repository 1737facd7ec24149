"""Nothing is loaded unverified: export files against the manifest's sha256, the Triton
repository copy against the record written beside it (deploy, rollback, reload after a
restart), the smoke reference from verified bytes, and registry downloads only once complete.
The serving tests run against the real tritonserver, one per module."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from test_serving import TEXTS, make_export

from ftops.config import Config
from ftops.serve import deploy
from ftops.serve.triton import repository, server
from ftops.serve.triton.client import TritonClient
from ftops.serve.deployable import Deployable
from ftops.serve.triton.models import ModelNames
from ftops.serve.runtime import ServingError


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return [make_export(root / f"e{i}", seed=i) for i in range(2)]


@pytest.fixture(scope="module")
def project(tmp_path_factory, exports):
    """A real Triton with a champion (exports[1]) and a previous (exports[0])."""
    root = tmp_path_factory.mktemp("verified")
    cfg = Config.model_validate({
        "project": {"dir": str(root), "name": "ver"},
        "gates": {"p99_ms": 5000},
        "serving": {"http_port": 0, "grpc_port": 0, "metrics_port": 0, "load_requests": 40,
                    "load_warmup": 4, "load_concurrency": 2},
    })
    info = server.start(cfg)
    try:
        for export in exports:
            assert deploy.deploy(cfg, export, TEXTS[:16]).outcome == "promoted"
        yield cfg
    finally:
        server.stop(cfg)


def answers(cfg: Config, name: str) -> int:
    info = server.status(cfg)
    with TritonClient(info.grpc_url) as client:
        return len(client.classify(["the champion still answers"], name))


# ------------------------------------------------------------ export files (no server needed)


@pytest.mark.parametrize("name", ["fp32/model.onnx", "tokenizer.json", "labels.json"])
def test_a_changed_export_file_is_named_and_refused(exports, tmp_path, name):
    copy = shutil.copytree(exports[0], tmp_path / "e")
    flip_byte(copy / name, offset=1)
    with pytest.raises(ServingError, match=rf"{name} has sha256 .*Re-export the model"):
        Deployable.from_export(copy)


def test_an_export_without_hashes_is_refused(exports, tmp_path):
    copy = shutil.copytree(exports[0], tmp_path / "e")
    manifest = json.loads((copy / "export.json").read_text())
    del manifest["files"]
    (copy / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(ServingError, match="lists no sha256 for labels.json"):
        Deployable.from_export(copy)


def test_the_smoke_reference_reads_only_verified_bytes(exports, tmp_path):
    """A file swapped after the export was checked cannot become the smoke test's reference."""
    copy = shutil.copytree(exports[0], tmp_path / "e")
    model = Deployable.from_export(copy)
    flip_byte(copy / "fp32" / "model.onnx")
    with pytest.raises(ServingError, match="model.onnx has sha256"):
        deploy.reference_probs(model, TEXTS[:2])


def test_the_repository_copy_is_recorded_and_checked(exports, tmp_path):
    model = Deployable.from_export(exports[0])
    names = repository.write_version(tmp_path, "p", "v1", model, Config().serving)
    record = json.loads((tmp_path / f"{names.classifier}.sha256.json").read_text())
    assert record["files"]["1/model.onnx"] == model.onnx_sha256
    assert repository.version_problems(tmp_path, names) == []
    (tmp_path / names.classifier / "1" / "__pycache__").mkdir()
    (tmp_path / names.classifier / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"x")
    assert repository.version_problems(tmp_path, names) == []  # the python backend's own cache
    (tmp_path / names.classifier / "2").mkdir()
    shutil.copy(tmp_path / names.classifier / "1" / "model.onnx", tmp_path / names.classifier / "2" / "model.onnx")
    flip_byte(tmp_path / names.classifier / "config.pbtxt", offset=0)
    problems = repository.version_problems(tmp_path, names)
    assert len(problems) == 2
    assert problems[0] == f"{names.classifier}/2/model.onnx was not deployed"  # Triton would serve a "2"
    assert problems[1].startswith(f"{names.classifier}/config.pbtxt has sha256 ")
    flip_byte(tmp_path / names.ensemble / "config.pbtxt", offset=0)  # the steps it names are not trusted
    assert repository.version_problems(tmp_path, names)[0].startswith(f"{names.ensemble}/config.pbtxt has sha256 ")


def test_a_copy_that_differs_from_the_manifest_is_removed(exports, tmp_path, monkeypatch):
    """The copy itself is checked against the manifest's hash: a copy that goes wrong (or
    a file swapped between the check and the copy) is never left in the repository."""
    model = Deployable.from_export(exports[0])
    real_copy = shutil.copyfile

    def bad_copy(src, dst):
        real_copy(src, dst)
        flip_byte(Path(dst))

    monkeypatch.setattr(repository.shutil, "copyfile", bad_copy)
    with pytest.raises(ServingError, match="is not what was deployed.*tokenizer.json has sha256"):
        repository.write_version(tmp_path, "p", "v1", model, Config().serving)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------ the real Triton


def test_a_flipped_byte_in_the_export_stops_the_deploy(project, exports, tmp_path):
    cfg = project
    before = deploy.routing(cfg)
    candidate = make_export(tmp_path / "candidate", seed=7)
    tag = deploy.tag_for(Deployable.from_export(candidate), None)
    flip_byte(candidate / "fp32" / "model.onnx")
    with pytest.raises(ServingError, match=r"fp32/model.onnx has sha256 .* the champion keeps serving"):
        deploy.deploy(cfg, candidate, TEXTS[:16])
    assert deploy.routing(cfg) == before
    assert answers(cfg, before["champion"].ensemble) == 1
    repo = Path(server.status(cfg).repository)
    assert not any(p.name.startswith(f"ver-{tag}") for p in repo.iterdir())  # nothing was written


def test_a_flipped_byte_in_the_repository_copy_stops_a_rollback(project):
    cfg = project
    before = deploy.routing(cfg)
    repo = Path(server.status(cfg).repository)
    previous = ModelNames.of(before["previous"].ensemble)
    onnx = repo / previous.classifier / "1" / "model.onnx"
    original = onnx.read_bytes()
    flip_byte(onnx)
    try:
        with pytest.raises(ServingError, match=rf"{previous.classifier}/1/model.onnx has sha256 .*"
                                               r"Not rolled back; the champion keeps serving.*`ftops deploy --export"):
            deploy.rollback(cfg)
        assert deploy.routing(cfg) == before
        assert answers(cfg, before["champion"].ensemble) == 1
    finally:
        onnx.write_bytes(original)
    assert deploy.rollback(cfg) == before["previous"]  # restored: the rollback goes through
    assert deploy.rollback(cfg) == before["champion"]


def _restart(cfg) -> None:
    assert server.stop(cfg)
    time.sleep(0.3)
    server.start(cfg)


def test_after_a_restart_a_damaged_copy_is_restored_from_its_export_or_refused(project):
    cfg = project
    routes = deploy.routing(cfg)
    repo = Path(server.status(cfg).repository)
    previous = ModelNames.of(routes["previous"].ensemble)
    tokenizer = repo / previous.classifier / "1" / "tokenizer.json"  # one hop: the classifier tokenises
    exported = Path(routes["previous"].export) / "tokenizer.json"
    original = tokenizer.read_bytes()
    assert exported.read_bytes() == original
    expected = {"champion": routes["champion"].ensemble, "previous": previous.ensemble}

    flip_byte(tokenizer)  # the copy alone: its export verifies, so the copy is rewritten from it
    _restart(cfg)
    assert deploy.reload_routes(cfg) == expected
    assert tokenizer.read_bytes() == original

    flip_byte(tokenizer)  # the copy and its export: nothing trustworthy is left to load it from
    flip_byte(exported)
    _restart(cfg)
    try:
        with pytest.raises(ServingError, match=rf"previous {previous.ensemble}: .*tokenizer.json has sha256.*"
                                               "its export cannot restore it"):
            deploy.reload_routes(cfg)
        info = server.status(cfg)
        with TritonClient(info.grpc_url) as client:
            assert client.ready(routes["champion"].ensemble)  # the intact champion was loaded
            assert not client.ready(previous.ensemble)
        assert answers(cfg, routes["champion"].ensemble) == 1
    finally:
        tokenizer.write_bytes(original)
        exported.write_bytes(original)
    assert deploy.reload_routes(cfg) == expected


# ------------------------------------------------------------ registry downloads


@pytest.fixture
def registered(tmp_path):
    """A registry version whose `model/` artifact is three small files (no training)."""
    import mlflow

    from ftops import registry, tracking

    cfg = Config.model_validate({"project": {"dir": str(tmp_path / "proj"), "name": "dl"}})
    tracking.use_project(cfg)
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "ftops.json").write_text(json.dumps({"labels": ["a", "b"]}))
    (source / "weights.bin").write_bytes(bytes(range(256)) * 200)
    (source / "sub" / "vocab.txt").write_text("a\nb\n")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(source), "model")
    return cfg, registry.register(cfg, run.info.run_id)


def test_a_download_lands_under_the_project_and_is_reused_only_when_complete(registered):
    from ftops import registry

    cfg, version = registered
    folder = registry.download(cfg, version.version)
    assert folder == cfg.resolved().project.dir / "downloads" / f"v{version.version}"
    assert registry.complete(folder, version.version)
    assert (folder / "model" / "weights.bin").stat().st_size == 51200
    flip_byte(folder / "model" / "weights.bin")  # damaged in place: not complete any more
    assert not registry.complete(folder, version.version)
    assert registry.download(cfg, version.version) == folder
    assert (folder / "model" / "weights.bin").read_bytes() == bytes(range(256)) * 200
    (folder / registry.DOWNLOADED).unlink()  # a download that died before its record
    assert not registry.complete(folder, version.version)


def test_a_failed_download_leaves_nothing_that_looks_complete(registered, monkeypatch):
    import mlflow

    from ftops import registry

    cfg, version = registered
    real = mlflow.artifacts.download_artifacts

    def truncated(artifact_uri, dst_path):
        real(artifact_uri=artifact_uri, dst_path=dst_path)
        Path(dst_path, "weights.bin").write_bytes(b"cut")  # the connection dropped mid-file

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", truncated)
    with pytest.raises(registry.RegistryError, match="incomplete .*weights.bin"):
        registry.download(cfg, version.version)
    folder = cfg.resolved().project.dir / "downloads" / f"v{version.version}"
    assert sorted(p.name for p in folder.iterdir()) == [".lock"]  # no model/, no temp folder
