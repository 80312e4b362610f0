"""deploy/modal_app.py, offline: the Modal objects it builds from modalkit.yaml,
`modal deploy` reaching the token check, and the server command line it runs
started for real and stopped the way Modal stops it.

Run by scripts/test-modal.sh (which installs `modal` into .venv-modal and
builds the server binary).
"""

from __future__ import annotations

import importlib.util
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
    """FunctionInfo of the class's service function: computed locally, no network."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        function = module.app.registered_functions["ModalkitServer.*"]
    return function.info()


def test_cpu_config_maps_to_a_cpu_container(monkeypatch, tmp_path):
    module = load_app(monkeypatch, tmp_path, None)
    assert module.app.name == "modalkit-translate-dev"
    info = server_info(module)
    assert info.gpus == []
    assert info.volumes == {}
    assert info.cloud_bucket_mounts == {}
    assert info.secrets == []
    assert info.concurrency_info.max_inputs == module.DEFAULT_CONCURRENT_INPUTS
    assert info.startup_timeout == module.STARTUP_TIMEOUT_SECONDS
    assert info.method_names == ["serve"]
    assert info.method_details["serve"].unauthenticated is True


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
    assert info.concurrency_info.max_inputs == 16
    assert info.concurrency_info.target_inputs == 8
    assert info.max_retries == 2
    assert info.method_details["serve"].unauthenticated is True
    options = module.cls_options(module.SETTINGS)
    assert options["max_containers"] == 3
    assert options["scaledown_window"] == 120
    assert module.RELOAD_EVERY == 300.0
    assert module.container_config_paths(module.PATHS) == ["/etc/modalkit/0-modalkit.yaml"]


def test_secure_config_requires_modal_proxy_auth(monkeypatch, tmp_path):
    module = load_app(monkeypatch, tmp_path, SECURE_YAML)
    info = server_info(module)
    assert info.gpus == [("T4", 1)]
    assert info.method_details["serve"].unauthenticated is False


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
    binary = os.environ.get("MODALKIT_SERVER_BINARY", str(REPO / "target" / "debug" / "translate"))
    assert Path(binary).is_file(), f"build the server first: {binary}"
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
