"""The real entry point: exit codes, one-line errors naming file and line, JSON outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
PROTPEFT = [sys.executable, "-m", "protpeft.cli"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*PROTPEFT, *args], capture_output=True, text=True, timeout=120)


def test_params_prints_json_counts() -> None:
    root = Path(__file__).resolve().parents[2]
    out = run("params", str(root / "configs/paper/ppi_lora.yaml"))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["trainable"] == 491_777


def test_data_check_reports_bad_lines_without_traceback(tmp_path: Path) -> None:
    fasta = tmp_path / "seqs.fasta"
    fasta.write_text(">A\nMKVL\n>B\nMK1L\n>C\n\n")
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("A\tB\t1\nA\tZ\t0\n")
    out = run("data", "check", "--pairs", str(pairs), "--sequences", str(fasta))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert f"{fasta}:4" in out.stderr and "'1'" in out.stderr
    assert f"{fasta}:5" in out.stderr and "empty" in out.stderr


def test_data_check_summarises_valid_input(synth_ppi: dict) -> None:
    out = run("data", "check", "--pairs", str(synth_ppi["pairs"]), "--sequences", str(synth_ppi["sequences"]))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["pairs"] == 1200 and report["positives"] == 600


def test_train_with_a_bad_config_names_the_line(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("task: ppi\nmode: lora\noptim:\n  lr: fast\n")
    out = run("train", str(config), "--local")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{config}:4: optim.lr" in out.stderr


def test_train_with_missing_data_is_a_clear_error(tmp_path: Path, tiny_model: Path) -> None:
    out = run("train", "--local", str(tmp_path / "none.yaml"))
    assert out.returncode == 2 and "cannot read config" in out.stderr
    out = run(
        "train",
        "--local",
        "/dev/null",
        "--set",
        f"model.base={tiny_model}",
        "--set",
        "data.pairs=nope.tsv",
        "--set",
        "data.sequences=nope.fasta",
        "--set",
        "tracking.mlflow=false",
    )
    assert out.returncode == 2 and "nope.tsv: file not found" in out.stderr


def test_bad_data_through_ray_is_reported_before_ray_starts(tmp_path: Path, tiny_model: Path) -> None:
    (tmp_path / "seqs.fasta").write_text(">a\nMKVL\n>b\nMKLV\n")
    (tmp_path / "pairs.tsv").write_text("a\tb\t1\na\tb\tmaybe\n")
    out = run(
        "train", "/dev/null", "--set", f"model.base={tiny_model}", "--set", f"data.pairs={tmp_path / 'pairs.tsv'}",
        "--set", f"data.sequences={tmp_path / 'seqs.fasta'}", "--set", "tracking.mlflow=false",
        "--set", f"output_dir={tmp_path / 'runs'}", "--address", "127.0.0.1:1",  # no cluster there: never reached
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "pairs.tsv:2: label 'maybe' must be 0 or 1" in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr  # one line, no Ray output


def test_an_address_where_no_cluster_answers_is_one_line_at_once(synth_ppi: dict, tiny_model: Path, tmp_path) -> None:
    """``ray.init`` would retry an unreachable GCS for minutes, then print a traceback."""
    from protpeft.trainer.ray_cluster import free_port

    port = free_port()  # nothing listens there
    out = run(
        "train", "/dev/null", "--set", f"model.base={tiny_model}", "--set", f"data.pairs={synth_ppi['pairs']}",
        "--set", f"data.sequences={synth_ppi['sequences']}", "--set", "tracking.mlflow=false",
        "--set", f"output_dir={tmp_path / 'runs'}", "--address", f"127.0.0.1:{port}",
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert f"--address 127.0.0.1:{port}: no Ray cluster answers there" in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr


def test_synth_and_init_tiny_commands(tmp_path: Path) -> None:
    assert run("data", "synth", "--task", "symmetry", "--out", str(tmp_path / "s"), "--n", "50").returncode == 0
    assert (tmp_path / "s" / "symmetry.tsv").is_file()
    out = run("model", "init-tiny", str(tmp_path / "m"), "--layers", "2", "--hidden", "32")
    assert out.returncode == 0 and (tmp_path / "m" / "model.safetensors").is_file()


def test_usage_errors_are_one_line_without_traceback() -> None:
    out = run("train")
    assert out.returncode == 2 and "Missing argument" in out.stderr and "Traceback" not in out.stderr


def test_a_commands_exit_code_reaches_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """`run-many` with a failed job exits 1, an interrupted `tune` 130: typer.Exit(n) must not become 0."""
    import typer

    from protpeft import cli

    small = typer.Typer()

    @small.command()
    def fails() -> None:
        raise typer.Exit(3)

    @small.command()
    def works() -> None:
        pass

    monkeypatch.setattr(cli, "app", small)
    monkeypatch.setattr(sys, "argv", ["protpeft", "fails"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 3
    monkeypatch.setattr(sys, "argv", ["protpeft", "works"])
    cli.main()  # no SystemExit: exit status 0


def test_a_fresh_local_run_starts_clean(make_config, tmp_path: Path) -> None:
    """`train --local` of a run whose directory holds an earlier run's metrics and checkpoints starts clean."""
    import yaml

    from protpeft.trainer.train_command import train_from_cli

    cfg = make_config("ppi", "lora", "optim.max_steps=2", "data.max_examples=32", "engine.eval_every=2")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    stale = cfg.run_dir / "checkpoints" / "step-00000999"
    stale.mkdir(parents=True)
    (stale / "train_state.json").write_text("{}")
    (cfg.run_dir / "metrics.jsonl").write_text(json.dumps({"step": 999, "train_loss": 9.0}) + "\n")

    summary = train_from_cli(path, local=True, progress=False)

    records = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records and max(r["step"] for r in records) == summary["steps"] == 2
    assert not stale.exists()


def test_sub_clis_do_not_import_the_root_cli() -> None:
    """The CLI is one layer: shared console and options come from protpeft.console, never from protpeft.cli."""
    root = Path(__file__).resolve().parents[2]
    for package in ("trainer", "tune", "registry", "deploy"):
        for source in (root / package).glob("*.py"):
            assert "protpeft.cli import" not in source.read_text(), source


def test_submit_env_items_take_values_or_this_shells_and_refuse_the_ray_token() -> None:
    from protpeft.trainer.jobs import JobsError, job_env

    here = {"AWS_ACCESS_KEY_ID": "key", "HOME": "/root"}
    assert job_env(["AWS_ACCESS_KEY_ID", "MLFLOW_TRACKING_URI=http://mlflow:5000"], here) == {
        "AWS_ACCESS_KEY_ID": "key",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
    }
    for bad, says in [("NOT_SET", "not set here"), ("RAY_AUTH_TOKEN=x", "auth token"), ("=x", "NAME=VALUE")]:
        with pytest.raises(JobsError, match=says):
            job_env([bad], here)


def test_a_grpc_listener_passes_the_reachability_check_in_ipv4_and_bracketed_ipv6() -> None:
    import socket
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from protpeft.trainer.cluster_checks import ClusterError
    from protpeft.trainer.ray_cluster import check_reachable

    forms = ["127.0.0.1:{}"] + (["[::1]:{}"] if socket.has_ipv6 else [])
    for form in forms:
        server = grpc.server(ThreadPoolExecutor(max_workers=1))  # what a GCS is, as far as the check can tell
        try:
            port = server.add_insecure_port(form.format(0))
        except RuntimeError:  # no IPv6 loopback on this machine (older grpcio returns 0 instead)
            port = 0
        if not port:
            continue
        server.start()
        try:
            check_reachable(form.format(port))
        finally:
            server.stop(None).wait()
        with pytest.raises(ClusterError, match="no Ray cluster answers there"):
            check_reachable(form.format(port))  # closed now


def test_an_http_port_given_as_the_cluster_address_is_one_line_not_a_hang() -> None:
    """``ray.init`` on a port where an HTTP server listens (the dashboard's 8265 without ``http://``) retries for
    minutes; the check says so within its timeout."""
    import threading
    from http.server import HTTPServer, SimpleHTTPRequestHandler

    from protpeft.trainer.cluster_checks import ClusterError
    from protpeft.trainer.ray_cluster import check_reachable

    server = HTTPServer(("127.0.0.1", 0), SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(ClusterError, match=f"--address {address}: something listens there but does not answer"):
            check_reachable(address, timeout=2.0)
    finally:
        server.shutdown()
        server.server_close()
