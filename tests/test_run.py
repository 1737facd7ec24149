"""`ftops run`: the outcome and exit code of recorded lifecycle summaries; a monitor run with
no champion ends "Skipped"; the log follower reads a flow run's and its subflows' lines from
a real Prefect server; and `ftops run --in-process` on a small CSV, end to end, with the
outcome the Prefect UI shows."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from ftops import procs, run as runs, services
from ftops.config import Config, load_config
from ftops.serve.triton import server as triton
from ftops.serve.triton.server import free_port


# ---------------------------------------------------------------- recorded summaries

DATA = {"snapshot": "s-1a2b", "counts": {"train": 84, "validation": 18, "test": 18}, "retrain": False,
        "feedback_rows": 0}
TRAIN = {"round_run_id": "r1", "best": "full", "best_run_id": "c1", "baseline_test_macro_f1": 0.612,
         "candidates": {"full": {"val_macro_f1": 0.811, "test_macro_f1": 0.794},
                        "lora": {"val_macro_f1": 0.702, "test_macro_f1": 0.688}}}
PROMOTE = {"outcome": "promote", "version": "2", "mode": "champion", "failed_rules": [],
           "summary": "promote: challenger macro-F1 0.7940 vs champion 0.7010 (delta +0.0930); all rules passed",
           "metrics": {"challenger": 0.794, "champion": 0.701, "baseline": 0.612},
           "rules": [{"name": "effect", "passed": True, "value": 0.093, "threshold": 0.01, "detail": "gain"}]}
REJECT = {**PROMOTE, "outcome": "reject", "failed_rules": ["effect", "significance"],
          "summary": "reject: challenger macro-F1 0.7000 vs champion 0.7010 (delta -0.0010); failed: effect, significance"}
VARIANTS = {"fp32": {"status": "pass", "reason": "", "max_abs_diff": 2.1e-6, "agreement": 1.0, "delta_macro_f1": 0.0},
            "int8": {"status": "pass", "reason": "", "max_abs_diff": 0.03, "agreement": 0.9921, "delta_macro_f1": -0.0012}}
DEPLOYED = {"gate": "deploy", "outcome": "promoted", "reason": "p99 12.3 ms <= 250.0 ms, 0 errors", "version": "2",
            "variant": "int8", "variants": VARIANTS, "p99_slo_ms": 250.0, "unfinished": [],
            "smoke": {"n": 32, "alone_label_agreement": 1.0, "alone_max_prob_diff": 1e-5, "passed": True},
            "load": {"requests": 300, "concurrency": 4, "p50_ms": 4.2, "p99_ms": 12.3, "errors": 0}}
SUMMARIES = {
    "promoted": {"data": DATA, "train": TRAIN, "decision": PROMOTE, "deploy": DEPLOYED},
    "rejected at A/B": {"data": DATA, "train": TRAIN, "decision": REJECT},
    "baseline serves": {"data": DATA, "train": TRAIN, "decision": {**PROMOTE, "served": "baseline"}, "deploy": DEPLOYED},
    "rejected at export": {"data": DATA, "train": TRAIN, "decision": PROMOTE,
                           "deploy": {"gate": "export", "outcome": "rejected", "variants": VARIANTS,
                                      "reason": "export: no variant within parity_atol"}},
    "rejected at deploy": {"data": DATA, "train": TRAIN, "decision": PROMOTE,
                           "deploy": {**DEPLOYED, "outcome": "rejected", "load": {**DEPLOYED["load"], "p99_ms": 410.0},
                                      "reason": "load test: p99 410.0 ms > 250.0 ms"}},
}


def finished(summary: dict | None, state_type: str = "COMPLETED", name: str | None = None, message: str = ""):
    name = name or (runs.outcome(summary).name if summary else "Failed")
    return runs.Finished("0b5e-run", state_type, name, message, summary, "deployment",
                         {"prefect": "http://127.0.0.1:4200/runs/flow-run/0b5e-run"})


def printed(result: runs.Finished) -> str:
    console = Console(record=True, width=400)
    runs.report(console, result)
    return console.export_text()


@pytest.mark.parametrize("case, name, gate, line", [
    ("promoted", runs.PROMOTED, None, "PROMOTED: v2 serves as champion (int8)"),
    ("rejected at A/B", runs.REJECTED_AB, "A/B", "REJECTED at the A/B gate: challenger macro-F1 0.7000"),
    ("baseline serves", runs.PROMOTED, None,
     "PROMOTED: v2 serves as champion (int8, the TF-IDF baseline: no candidate beat it)"),
    ("rejected at export", runs.REJECTED_EXPORT, "export", "REJECTED at the export gate: no variant within parity"),
    ("rejected at deploy", runs.REJECTED_DEPLOY, "deploy", "REJECTED at the deploy gate: load test: p99 410.0 ms"),
])
def test_a_gate_refusing_is_an_answer_with_exit_code_0(case, name, gate, line):
    summary = SUMMARIES[case]
    result = runs.outcome(summary)
    assert (result.name, result.gate) == (name, gate) and result.line.startswith(line)
    done = finished(summary)
    assert runs.exit_code(done) == 0
    text = printed(done)
    assert line in text and "http://127.0.0.1:4200/runs/flow-run/0b5e-run" in text
    assert "train 84, validation 18, test 18" in text
    assert "best full: val macro-F1 0.811, test macro-F1 0.794; baseline test macro-F1 0.612" in text
    page = runs.markdown(summary)
    assert page.startswith(f"# Lifecycle: {name}\n") and line in page


def test_the_table_carries_parity_and_latency_and_what_was_not_reached():
    promoted = printed(finished(SUMMARIES["promoted"]))
    assert "int8: max |diff| 3.00e-02, label agreement 0.9921, delta macro-F1 -0.0012" in promoted
    assert "p50 4.2 ms, p99 12.3 ms (SLO 250 ms), errors 0" in promoted
    ab = printed(finished(SUMMARIES["rejected at A/B"]))
    assert "failed rules: effect, significance" in ab and "not reached (the A/B gate refused)" in ab
    deploy = runs.markdown(SUMMARIES["rejected at deploy"])
    assert "## Deploy gates" in deploy and "p99 410.0 ms vs SLO 250 ms" in deploy
    assert "| int8 (selected) | pass |" in deploy


def test_unfinished_items_are_listed_and_keep_exit_code_0():
    summary = {**SUMMARIES["promoted"], "deploy": {**DEPLOYED, "unfinished": ["the registry alias did not move"]}}
    done = finished(summary)
    assert runs.exit_code(done) == 0
    text = printed(done)
    assert "unfinished" in text and "the registry alias did not move" in text and "`ftops reconcile`" in text


@pytest.mark.parametrize("state_type, name", [("FAILED", "Failed"), ("CRASHED", "Crashed"), ("CANCELLED", "Cancelled")])
def test_a_failed_or_crashed_run_exits_1(state_type, name):
    done = finished(None, state_type, name, "Flow run encountered an exception: DataError: no rows")
    assert runs.exit_code(done) == 1
    text = printed(done)
    assert f"FAILED: the lifecycle run ended {name}: Flow run encountered an exception: DataError: no rows" in text


def test_the_artifact_key_is_what_prefect_accepts():
    assert runs.artifact_key(Config.model_validate({"project": {"name": "tickets_eu.v2"}})) == "lifecycle-tickets-eu-v2"


def test_without_a_prefect_server_it_runs_in_process(tmp_path):
    cfg = Config.model_validate({"project": {"dir": str(tmp_path / "p")},
                                 "uris": {"prefect_api": f"http://127.0.0.1:{free_port()}/api"}})
    chosen = runs.plan(cfg)
    assert (chosen.mode, chosen.api) == ("in-process", None) and "no Prefect server answers" in chosen.why


# ---------------------------------------------------------------- a real Prefect server


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """`prefect server start` on a free port, its own home; stopped by PID."""
    root = tmp_path_factory.mktemp("prefect")
    cfg = Config.model_validate({"project": {"dir": str(root), "name": "runs"},
                                 "uris": {"prefect_api": f"http://127.0.0.1:{free_port()}/api"}})
    running = procs.start(services.folder(cfg), services.prefect_service(cfg, services.environment(cfg, None)))
    yield cfg.uris.prefect_api
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)  # the tests' flow lines are sent before the server goes
    assert procs.stop(services.folder(cfg), "prefect")
    assert not procs._alive(running.pid, running.marker)


@pytest.fixture
def project(tmp_path, prefect_server):
    """A project YAML whose Prefect is the module's server; the environment restored after."""
    saved = dict(os.environ)

    def make(**settings) -> tuple[Config, str]:
        body = {"project": {"dir": str(tmp_path / "proj"), "name": "runs-test"},
                "uris": {"prefect_api": prefect_server}, **settings}
        path = tmp_path / "ftops.yaml"
        path.write_text(yaml.safe_dump(body))
        return load_config(path), str(path)

    yield make
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.slow
def test_the_follower_prints_the_lines_of_the_run_and_its_subflows_live_and_once(project):
    """A flow with a subflow runs in a thread while `follow` polls the server: each line is
    printed once, in order, named after its flow, and the states close it."""
    import contextvars
    import queue
    import threading

    from prefect import flow
    from prefect.runtime import flow_run

    started: queue.Queue = queue.Queue()

    @flow(name="stage_b", log_prints=True)
    def stage_b(n: int) -> int:
        for i in range(n):
            print(f"stage b step {i}")
            time.sleep(0.5)
        return n

    @flow(name="outer", log_prints=True)
    def outer() -> int:
        started.put(flow_run.id)
        print("outer starts")
        done = stage_b(3)
        print("outer ends")
        return done

    cfg, path = project()
    lines: list[str] = []
    with runs.prefect_api(cfg, path, cfg.uris.prefect_api):
        # the thread runs in a copy of this context: Prefect's settings are a context variable
        worker = threading.Thread(target=contextvars.copy_context().run, args=(outer,), daemon=True)
        worker.start()
        final = runs.follow(started.get(timeout=120), lines.append, limit_s=120, poll_s=0.5)
        worker.join(timeout=60)
    assert final.state.is_completed()
    mine = ("outer starts", "stage b step", "outer ends", "stage_b [", "outer [")
    ours = [line.split(" ", 3)[3] for line in lines if any(m in line for m in mine)]  # without "  HH:MM:SS "
    assert [line for line in ours if "-> " not in line] == [
        "outer: outer starts", "stage_b: stage b step 0", "stage_b: stage b step 1", "stage_b: stage b step 2",
        "outer: outer ends"]
    states = [(line.split(" [")[0], line.rsplit("-> ", 1)[1]) for line in ours if "-> " in line]
    assert ("stage_b", "Running") in states and ("stage_b", "Completed") in states
    assert states[-1] == ("outer", "Completed")
    # in time order: the subflow runs between the outer lines, and ends before "outer ends"
    assert ours.index("stage_b: stage b step 0") > next(i for i, line in enumerate(ours) if "stage_b [" in line)
    assert ours.index("outer: outer ends") > next(i for i, line in enumerate(ours) if line.endswith("-> Completed"))


@pytest.mark.slow
def test_a_monitor_run_without_a_champion_is_skipped_and_recorded_without_a_server(tmp_path):
    """No champion yet and no `ftops up`: the drift check ends "Skipped" (a Completed state)
    with the reason, and the temporary Prefect that `ftops run` and the flows then use
    records it in the project's Prefect database."""
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer

    from flows.lifecycle import monitor_drift
    from ftops import monitor

    path = tmp_path / "ftops.yaml"
    path.write_text(yaml.safe_dump({"project": {"dir": str(tmp_path / "fresh" / "proj"), "name": "runs-test"},
                                    "uris": {"prefect_api": f"http://127.0.0.1:{free_port()}/api"}}))
    cfg = load_config(path)
    saved = dict(os.environ)
    try:
        with runs.prefect_api(cfg, str(path), runs.plan(cfg).api):
            state = monitor_drift(str(path), return_state=True)
            with get_client(sync_client=True) as client:
                recorded = client.read_flow_run(state.state_details.flow_run_id).state
    finally:
        APILogWorker.drain_all(timeout=10)  # its lines are sent before the server goes
        SubprocessASGIServer().stop()
        os.environ.clear()
        os.environ.update(saved)
    assert state.is_completed() and state.name == runs.SKIPPED
    assert "no champion yet for runs-test" in state.message and "`ftops run`" in state.message
    assert state.result()["skipped"] == state.message
    assert (recorded.type.value, recorded.name) == ("COMPLETED", runs.SKIPPED)  # what the UI shows
    assert monitor.history(cfg) == []  # no check was run, none stored
    assert (cfg.resolved().project.dir / "prefect" / "prefect.db").is_file()


def tickets_csv(path: Path) -> Path:
    """3 labels x 40 varied short texts; each label has its own words, so the TF-IDF
    baseline is perfect and a 4-step random BERT cannot beat it: the A/B gate refuses."""
    import itertools

    words = {"billing": ["charged twice", "refund", "invoice", "payment failed", "card declined"],
             "shipping": ["parcel", "tracking number", "delivery late", "courier", "package lost"],
             "account": ["password reset", "login fails", "username", "two factor code", "profile locked"]}
    openers = ["please help with", "why is my", "still waiting on", "question about", "angry about",
               "quick note on", "again the", "issue with"]
    rows = ["text,label"]
    for label, topics in words.items():
        for i, (topic, opener) in enumerate(itertools.islice(itertools.product(topics, openers), 40)):
            rows.append(f'"{opener} {topic} order {100 + i}",{label}')
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ftops_run_in_process_shows_progress_summary_and_the_outcome(project, tiny_model, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    cfg, path = project(data={"source": str(tickets_csv(tmp_path / "tickets.csv"))},
                        model={"name": str(tiny_model), "max_length": 32},
                        candidates=[{"name": "full", "strategy": "full", "max_steps": 4}])
    env = {**os.environ, "COLUMNS": "250", "HF_HUB_OFFLINE": "1"}
    env.pop("FTOPS_CONFIG", None)
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "ftops", "run", "-c", path, "--in-process", "--reason", "test"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    finally:
        triton.stop(cfg)  # the baseline was deployed: the run started the project's Triton
    assert triton.status(cfg) is None
    terminal = done.stdout + done.stderr
    assert done.returncode == 0, terminal[-4000:]
    assert "in-process (--in-process)" in terminal
    # 4 steps of a random tiny BERT lose to TF-IDF (1.0 on these tickets): the baseline serves
    for progress in ("reconcile:", "best candidate full: val macro-F1", "reject: challenger macro-F1",
                     "vs baseline 1.0000", "promote: the TF-IDF baseline (macro-F1 1.0000) serves"):
        assert progress in terminal, f"{progress!r} not shown:\n{terminal[-4000:]}"
    assert "PROMOTED: v2 serves as champion (fp32, the TF-IDF baseline: no candidate beat it)" in done.stdout
    assert "best full: val macro-F1" in done.stdout and "the TF-IDF baseline serves: no candidate beat it" in done.stdout

    (summary_path,) = (cfg.resolved().project.dir / "runs").glob("lifecycle-*.json")
    run_id = summary_path.stem.removeprefix("lifecycle-")
    summary = runs.load_summary(cfg, run_id)
    assert summary["reason"] == "test" and summary["outcome"] == runs.PROMOTED
    assert summary["decision"]["run_id"] == summary["train"]["baseline_run_id"]
    assert summary["deploy"]["variants"]["fp32"]["max_abs_diff"] <= cfg.gates.parity_atol
    assert f"runs/flow-run/{run_id}" in done.stdout
    with runs.prefect_api(cfg, path, cfg.uris.prefect_api), get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
        (page,) = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[runs.artifact_key(cfg)])))
    assert (state.type.value, state.name) == ("COMPLETED", runs.PROMOTED)  # green, named, in the UI
    assert str(page.flow_run_id) == run_id
    assert "# Lifecycle: Promoted" in page.data and "| A/B | promote v2 (the TF-IDF baseline serves" in page.data
    print(f"ftops run --in-process: {time.monotonic() - started:.0f} s")
