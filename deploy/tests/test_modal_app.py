"""deploy/modal_app.py, offline: the Modal objects it builds from modalkit.yaml,
the Cargo features it derives from the yaml (held to what the server binary's
`check --features` says of the same yaml), `modal deploy` reaching the token
check, and the server command line it runs started for real and stopped the
way Modal stops it.

Run by scripts/test-modal.sh (which installs `modal` into .venv-modal and
builds the server binary).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODAL_APP = REPO / "deploy" / "modal_app.py"

GPU_YAML = """
app_settings:
  app_prefix: gpu-app
  build_config:
    image: ghcr.io/acme/modalkit-rs
    tag: "1.2.3"
    workdir: /srv
    env: {HF_HOME: /models/cache}
    extra_run_commands: "echo built"
  deployment_config:
    gpu: [H100, A100]
    region: us-east
    memory: 8192
    cpu: 4.0
    volumes: {/models: models-vol, /cache: cache-vol}
    volume_reload_interval_seconds: 300
    secrets: [hf-token, aws-creds]
    concurrency_limit: 3
    retries: 2
    container_idle_timeout: 120
    allow_concurrent_inputs: 16
    allow_concurrent_inputs_handler: 8
    cloud_bucket_mounts:
      - mount_point: /data
        bucket_name: training-data
        bucket_endpoint_url: https://r2.example.com
        key_prefix: shards/
        secret: r2-secret
        read_only: true
model_settings:
  model_entries:
    translator: {target_language: de}
"""

SECURE_YAML = """
app_settings:
  app_prefix: secure-app
  deployment_config:
    gpu: T4
    secure: true
model_settings:
  model_entries:
    translator: {}
"""


def load_app(monkeypatch, tmp_path, yaml_text: str | None, **env: str):
    """Imports deploy/modal_app.py afresh under MODALKIT_CONFIG pointing at yaml_text."""
    if yaml_text is None:
        config = REPO / "config" / "modalkit.yaml"
    else:
        config = tmp_path / "modalkit.yaml"
        config.write_text(yaml_text)
    monkeypatch.setenv("MODALKIT_CONFIG", str(config))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    name = f"modal_app_{abs(hash((str(tmp_path), yaml_text)))}"
    spec = importlib.util.spec_from_file_location(name, MODAL_APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def server_info(module):
    """FunctionInfo of the server's service function: computed locally, no network."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        function = module.app.registered_functions["ModalkitServer"]
    return function.info()


def server_binary() -> str:
    binary = os.environ.get("MODALKIT_SERVER_BINARY", str(REPO / "target" / "debug" / "translate"))
    assert Path(binary).is_file(), f"build the server first: {binary}"
    return binary


def test_cpu_config_maps_to_a_cpu_server(monkeypatch, tmp_path):
    module = load_app(monkeypatch, tmp_path, None)
    assert module.app.name == "modalkit-translate-dev"
    info = server_info(module)
    assert info.gpus == []
    assert info.volumes == {}
    assert info.cloud_bucket_mounts == {}
    assert info.secrets == []
    assert info.startup_timeout == module.STARTUP_TIMEOUT_SECONDS
    # One model, max_batch_size 32, one worker, the default queue depth of 1024:
    # the server holds 1024 + 32 requests; autoscaling aims at two batches.
    assert info.concurrency_info.max_inputs == 1024 + 32
    assert module.OPTIONS["max_concurrency"] == 1024 + 32
    assert module.OPTIONS["target_concurrency"] == 64
    # The drain: 30 s grace + 0.5 s unready delay + 5 s to close connections.
    assert module.OPTIONS["exit_grace_period"] == 36
    assert module.OPTIONS["unauthenticated"] is True
    assert module.OPTIONS["port"] == module.PORT
    assert "retries" not in module.OPTIONS
    # config/modalkit.yaml names the memory backend: no feature needed.
    assert module.image_source(module.SETTINGS, module.PATHS)["build_args"]["FEATURES"] == ""


def test_gpu_config_maps_gpu_volumes_secrets_buckets_and_concurrency(monkeypatch, tmp_path):
    module = load_app(monkeypatch, tmp_path, GPU_YAML, MODALKIT_APP_POSTFIX="-prod")
    assert module.app.name == "gpu-app-prod"
    info = server_info(module)
    assert info.gpus == [("H100", 1), ("A100", 1)]
    assert info.regions == ["us-east"]
    assert info.memory_mib == 8192 and info.cpu == 4.0
    assert sorted(info.volumes) == ["/cache", "/models"]
    assert info.volumes["/models"].name == "models-vol"
    assert info.volumes["/cache"].name == "cache-vol"
    bucket = info.cloud_bucket_mounts["/data"]
    assert (bucket.bucket_name, bucket.key_prefix, bucket.read_only) == ("training-data", "shards/", True)
    assert sorted(info.secrets) == sorted(["modal.Secret.from_name('hf-token')", "modal.Secret.from_name('aws-creds')"])
    # The yaml's allow_concurrent_inputs(_handler) win over the derived ones.
    assert info.concurrency_info.max_inputs == 16
    assert module.OPTIONS["target_concurrency"] == 8
    assert module.OPTIONS["unauthenticated"] is True
    assert module.OPTIONS["max_containers"] == 3
    assert module.OPTIONS["scaledown_window"] == 120
    assert module.RELOAD_EVERY == 300.0
    assert module.container_config_paths(module.PATHS) == ["/etc/modalkit/0-modalkit.yaml"]
    # No queue_config: modalkit's default sqs backend; a gpu: cuda.
    assert module.derive_features(module.SETTINGS) == ["cuda", "sqs"]


def test_secure_config_requires_modal_proxy_auth(monkeypatch, tmp_path):
    module = load_app(monkeypatch, tmp_path, SECURE_YAML)
    info = server_info(module)
    assert info.gpus == [("T4", 1)]
    assert module.OPTIONS["unauthenticated"] is False


def test_a_long_drain_gets_its_exit_grace_and_a_busy_config_its_concurrency(monkeypatch, tmp_path):
    yaml_text = """
app_settings:
  app_prefix: busy
  batch_config: {max_batch_size: 16}
  server_config: {workers: 2, max_queue_depth: 100, shutdown_grace_seconds: 120, unready_delay_seconds: 2}
model_settings:
  model_entries: {a: {}, b: {}}
"""
    module = load_app(monkeypatch, tmp_path, yaml_text)
    # Two models, each 100 queued + 2 workers x 16 computing; target: two batches per worker.
    assert module.OPTIONS["max_concurrency"] == 2 * (100 + 2 * 16)
    assert module.OPTIONS["target_concurrency"] == 2 * 2 * 2 * 16
    assert module.OPTIONS["exit_grace_period"] == 127


def test_env_overrides_win_as_in_the_server(monkeypatch, tmp_path):
    module = load_app(monkeypatch, tmp_path, SECURE_YAML, MODALKIT_APP_SETTINGS__DEPLOYMENT_CONFIG__GPU="L4")
    assert server_info(module).gpus == [("L4", 1)]


def test_a_missing_config_file_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("MODALKIT_CONFIG", str(tmp_path / "absent.yaml"))
    spec = importlib.util.spec_from_file_location("modal_app_missing", MODAL_APP)
    module = importlib.util.module_from_spec(spec)
    with pytest.raises(ValueError, match="absent.yaml does not exist"):
        spec.loader.exec_module(module)


def test_modal_deploy_without_a_token_reaches_the_token_check(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env.update(HOME=str(tmp_path), MODALKIT_CONFIG=str(REPO / "config" / "modalkit.yaml"))
    modal_cli = Path(sys.executable).parent / "modal"
    result = subprocess.run(
        [str(modal_cli), "deploy", str(MODAL_APP)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Token missing" in output, output
    assert "Traceback" not in output and "Error importing" not in output, output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_on_all_interfaces(port: int) -> bool:
    """Whether /proc/net/tcp shows a LISTEN socket on 0.0.0.0:port."""
    wanted = f"00000000:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "0A":
            return True
    return False


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_the_runtime_command_serves_on_all_interfaces_and_sigterm_drains(monkeypatch, tmp_path):
    binary = server_binary()
    module = load_app(monkeypatch, tmp_path, None)
    port = free_port()
    command = module.server_command(binary, [str(REPO / "config" / "modalkit.yaml")], port=port)
    assert command[command.index("--host") + 1] == "0.0.0.0"
    process = module.start_server(command, env={**os.environ, "RUST_LOG": "warn"})
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline:
            try:
                status, _ = get(f"http://127.0.0.1:{port}/ready")
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        assert status == 200, "the server never became ready"
        assert listening_on_all_interfaces(port)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/predict_sync", data=b'{"text": "modal"}', headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert b'"translated_text":"MODAL"' in response.read()
        assert module.stop_server(process, grace_seconds=10) == 0
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)


# Each yaml case, and the features it needs (besides `cuda`, which only the
# deploy knows of: the server's `check --features` reports its own three).
FEATURE_CASES = {
    "memory backend": ("queue_config: {backend: memory}", []),
    "modalkit's default backend": ("batch_config: {max_batch_size: 4}", ["sqs"]),
    "sqs backend": ("queue_config: {backend: sqs}", ["sqs"]),
    "custom backend": ("queue_config: {backend: kafka}", []),
    "input queue": ("queue_config: {backend: memory, input_queue: jobs}", ["sqs"]),
    "dynamodb job store": ("queue_config: {backend: sqs, input_queue: jobs, job_store: dynamodb}", ["dynamodb", "sqs"]),
    "webhook hosts": ("queue_config: {backend: memory, webhook_allowed_hosts: [hooks.example.com]}", ["webhooks"]),
    "webhook secret": ("queue_config: {backend: memory, webhook_secret: whsec_c2VjcmV0}", ["webhooks"]),
    "ssm key": ("queue_config: {backend: memory}\n  auth_config: {ssm_key: /api/key}", ["sqs"]),
    "ssm key behind proxy auth": (
        "queue_config: {backend: memory}\n  auth_config: {ssm_key: /api/key}\n  deployment_config: {secure: true}",
        [],
    ),
    "gpu": ("queue_config: {backend: memory}\n  deployment_config: {gpu: L4}", ["cuda"]),
    "everything": (
        "queue_config: {input_queue: jobs, job_store: dynamodb, webhook_allowed_hosts: ['*']}\n"
        "  deployment_config: {gpu: [H100]}",
        ["cuda", "dynamodb", "sqs", "webhooks"],
    ),
}


def feature_yaml(app_lines: str) -> str:
    return f"app_settings:\n  app_prefix: feat\n  {app_lines}\nmodel_settings:\n  model_entries:\n    translator: {{}}\n"


@pytest.mark.parametrize("case", sorted(FEATURE_CASES))
def test_features_follow_the_yaml_as_the_server_reads_it(monkeypatch, tmp_path, case):
    app_lines, expected = FEATURE_CASES[case]
    module = load_app(monkeypatch, tmp_path, feature_yaml(app_lines))
    assert module.derive_features(module.SETTINGS, {}) == expected
    assert module.image_source(module.SETTINGS, module.PATHS, {})["build_args"]["FEATURES"] == ",".join(expected)
    config = tmp_path / "modalkit.yaml"
    report = subprocess.run(
        [server_binary(), "check", "--features", "--config", str(config)],
        capture_output=True, text=True, timeout=60, env={k: v for k, v in os.environ.items() if not k.startswith("MODALKIT_")},
    )
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["needed"] == [f for f in expected if f != "cuda"]


def test_modalkit_features_adds_to_what_the_yaml_needs(monkeypatch, tmp_path):
    module = load_app(monkeypatch, tmp_path, feature_yaml("queue_config: {backend: memory}"))
    assert module.derive_features(module.SETTINGS, {"MODALKIT_FEATURES": "otel, webhooks"}) == ["otel", "webhooks"]
    other = tmp_path / "sqs"
    other.mkdir()
    module = load_app(monkeypatch, other, feature_yaml(FEATURE_CASES["sqs backend"][0]))
    assert module.derive_features(module.SETTINGS, {"MODALKIT_FEATURES": "sqs otel"}) == ["otel", "sqs"]


def merged_by_the_server(config: Path) -> dict:
    """``app_settings`` as the server binary merges them (``check``)."""
    result = subprocess.run(
        [server_binary(), "check", "--config", str(config)],
        capture_output=True, text=True, timeout=60, env={k: v for k, v in os.environ.items() if not k.startswith("MODALKIT_")},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["app_settings"]


def test_the_defaults_the_deploy_derives_from_are_the_servers(monkeypatch, tmp_path):
    config = tmp_path / "modalkit.yaml"
    config.write_text(feature_yaml("batch_config: {wait_ms: 3}"))
    merged = merged_by_the_server(config)
    module = load_app(monkeypatch, tmp_path, None, MODALKIT_CONFIG=str(config))
    for section, values in module.SERVER_DEFAULTS.items():
        for key, value in values.items():
            assert merged[section][key] == value, f"{section}.{key}: server {merged[section][key]!r}, deploy {value!r}"


def test_an_unconfigured_batch_size_is_the_servers(monkeypatch, tmp_path):
    config = tmp_path / "modalkit.yaml"
    config.write_text(feature_yaml("deployment_config: {}"))
    module = load_app(monkeypatch, tmp_path, None, MODALKIT_CONFIG=str(config))
    assert merged_by_the_server(config)["batch_config"]["max_batch_size"] == module.UNCONFIGURED_MAX_BATCH_SIZE


def test_the_cuda_image_and_the_cuda_build_script_use_one_cuda_release():
    script = (REPO / "scripts" / "build-cuda.sh").read_text()
    dockerfile = (REPO / "deploy" / "Dockerfile.cuda").read_text()
    toolkit = next(line.split("=", 1)[1] for line in script.splitlines() if line.startswith("CUDA_TOOLKIT="))
    image = next(line.split("=", 1)[1] for line in dockerfile.splitlines() if line.startswith("ARG CUDA_VERSION="))
    assert image == toolkit
    assert f"cuda-toolkit=={toolkit}" in script
