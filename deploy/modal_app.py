"""Run a modalkit-rs server on Modal, configured by the same modalkit.yaml.

    MODALKIT_CONFIG=config/modalkit.yaml modal deploy deploy/modal_app.py

This file does what modalkit's ``ModalConfig.get_app_cls_settings`` did in
Python: it reads ``modalkit.yaml`` (every file of ``MODALKIT_CONFIG``, later
files and ``MODALKIT_APP_SETTINGS__...`` variables winning, as the server
does) and maps it to Modal's app, image and server settings. The server
binary runs as a child process bound to 0.0.0.0 under ``@app.server``,
Modal's primitive for a process that listens on a port: requests are proxied
to it as they are (no 150 s cut-off and 303 redirect as for web endpoints),
autoscaling targets the batcher's real capacity, and past what the server
can hold Modal answers 429 itself. Stopping the container sends SIGTERM and
waits for the server's drain, which ``exit_grace_period`` covers. With
``volume_reload_interval_seconds``, volumes are reloaded on that interval
and the server gets SIGHUP so the pipeline's ``on_volume_reload`` runs.

The binary is built with the Cargo features the yaml needs
(``derive_features``): an SQS backend (modalkit's default), an
``input_queue`` or an ``ssm_key`` need ``sqs``; ``job_store: dynamodb``
needs ``dynamodb``; webhook settings need ``webhooks``; a ``gpu`` needs
``cuda``. The server's ``check --features`` reports the same from the same
yaml, and a test holds the two together.

Environment read at deploy time:
  MODALKIT_CONFIG        config file(s), comma-separated (default modalkit.yaml)
  MODALKIT_APP_POSTFIX   appended to app_prefix (default -dev)
  MODALKIT_PACKAGE       the Cargo package the image builds (default: this project's)
  MODALKIT_BINARY        its binary (default: this project's; MODALKIT_EXAMPLE is an alias)
  MODALKIT_FEATURES      Cargo features to add to those the yaml needs (comma- or space-separated)
  MODALKIT_DOCKERFILE    Dockerfile to build (default: this project's Dockerfile,
                         Dockerfile.cuda when a GPU is configured)

`modalkit new` copies this file into a new project and sets the project
block below to that project's package and binary.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import modal
import yaml

# The project block: `modalkit new` rewrites these lines for a new project.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGE = "modalkit-examples"
PROJECT_BINARY = "translate"
PROJECT_DOCKERFILE = "deploy/Dockerfile"
PROJECT_CUDA_DOCKERFILE = "deploy/Dockerfile.cuda"

PORT = 8000
SERVER_BINARY = "/usr/local/bin/modalkit-server"
CONTAINER_CONFIG_DIR = "/etc/modalkit"
STARTUP_TIMEOUT_SECONDS = 600
# The server's own defaults for what the Modal settings are derived from
# (modalkit-core's settings schema; a test checks them against the binary).
# A batch_config left out entirely batches 32; one given without
# max_batch_size batches 1, as in modalkit.
UNCONFIGURED_MAX_BATCH_SIZE = 32
SERVER_DEFAULTS = {
    "batch_config": {"max_batch_size": 1},
    "server_config": {
        "workers": 1,
        "max_queue_depth": 1024,
        "shutdown_grace_seconds": 30.0,
        "unready_delay_seconds": 0.5,
    },
    "queue_config": {"backend": "sqs", "job_store": "memory"},
}
# How long the server may take to close its connections after the drain.
HTTP_CLOSE_SECONDS = 5
# Modal's limit on a server's exit grace period.
MAX_EXIT_GRACE_SECONDS = 3600


class ConfigError(ValueError):
    """The yaml cannot be mapped to Modal settings."""


def config_paths(environ: Mapping[str, str] = os.environ) -> list[Path]:
    """The config files, as the server finds them."""
    listed = environ.get("MODALKIT_CONFIG", "modalkit.yaml")
    paths = [Path(p.strip()) for p in listed.split(",") if p.strip()]
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (named by MODALKIT_CONFIG)")
    return paths


def _merge(base: dict, other: Mapping) -> dict:
    for key, value in other.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def load_settings(paths: list[Path], environ: Mapping[str, str] = os.environ) -> dict:
    """Merges the files, then ``MODALKIT_APP_SETTINGS__*`` / ``MODALKIT_MODEL_SETTINGS__*`` variables."""
    settings: dict = {}
    for path in paths:
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        _merge(settings, loaded)
    for name, raw in environ.items():
        lower = name.lower()
        if not lower.startswith(("modalkit_app_settings__", "modalkit_model_settings__")):
            continue
        keys = lower[len("modalkit_"):].split("__")
        node = settings
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = yaml.safe_load(raw)
    app_settings = settings.get("app_settings") or {}
    if not app_settings.get("app_prefix"):
        raise ConfigError("app_settings.app_prefix is required")
    return settings


def app_name(settings: dict, environ: Mapping[str, str] = os.environ) -> str:
    """``app_prefix`` + ``MODALKIT_APP_POSTFIX`` (default ``-dev``), as the server names it."""
    return settings["app_settings"]["app_prefix"] + environ.get("MODALKIT_APP_POSTFIX", "-dev")


def _section(settings: dict, name: str) -> dict:
    return (settings.get("app_settings") or {}).get(name) or {}


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _setting(settings: dict, section: str, key: str) -> Any:
    """``app_settings.<section>.<key>``, or the server's default for it."""
    value = _section(settings, section).get(key)
    return SERVER_DEFAULTS.get(section, {}).get(key) if value is None else value


def derive_features(settings: dict, environ: Mapping[str, str] = os.environ) -> list[str]:
    """The Cargo features the yaml needs (the table in the module docstring), plus
    ``MODALKIT_FEATURES``; sorted, each once."""
    queue = _section(settings, "queue_config")
    auth = _section(settings, "auth_config")
    secure = bool(_section(settings, "deployment_config").get("secure", False))
    features: set[str] = set()
    if _setting(settings, "queue_config", "backend") == "sqs" or queue.get("input_queue"):
        features.add("sqs")
    if auth.get("ssm_key") and not secure:
        features.add("sqs")
    if _setting(settings, "queue_config", "job_store") == "dynamodb":
        features.add("dynamodb")
    if queue.get("webhook_allowed_hosts") or queue.get("webhook_secret"):
        features.add("webhooks")
    if _as_list(_section(settings, "deployment_config").get("gpu")):
        features.add("cuda")
    extra = environ.get("MODALKIT_FEATURES", "").replace(",", " ").split()
    return sorted(features | set(extra))


def container_config_paths(paths: list[Path]) -> list[str]:
    """Where each config file lands in the container."""
    return [f"{CONTAINER_CONFIG_DIR}/{i}-{p.name}" for i, p in enumerate(paths)]


def image_source(settings: dict, paths: list[Path], environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """What the image is built from when ``build_config.image`` is not set: the project's
    Dockerfile (the CUDA one when a GPU is configured), the project folder as context, and
    the package, binary, features (``derive_features``) and config file as build arguments."""
    gpu = bool(_as_list(_section(settings, "deployment_config").get("gpu")))
    default_dockerfile = PROJECT_CUDA_DOCKERFILE if gpu else PROJECT_DOCKERFILE
    dockerfile = Path(environ.get("MODALKIT_DOCKERFILE", str(PROJECT_ROOT / default_dockerfile)))
    binary = environ.get("MODALKIT_BINARY") or environ.get("MODALKIT_EXAMPLE") or PROJECT_BINARY
    build_args = {
        "PACKAGE": environ.get("MODALKIT_PACKAGE", PROJECT_PACKAGE),
        "BIN": binary,
        "FEATURES": ",".join(derive_features(settings, environ)),
    }
    first = paths[0].resolve() if paths else None
    if first is not None and first.is_relative_to(PROJECT_ROOT):
        build_args["CONFIG"] = first.relative_to(PROJECT_ROOT).as_posix()
    return {"dockerfile": str(dockerfile), "context_dir": str(PROJECT_ROOT), "build_args": build_args}


def build_image(settings: dict, paths: list[Path], environ: Mapping[str, str] = os.environ) -> modal.Image:
    """The image: ``build_config.image``/``tag`` from a registry, else our Dockerfile; then
    ``env``, ``extra_run_commands``, ``workdir``, the config files and ``deployment_config.mounts``."""
    build = _section(settings, "build_config")
    if build.get("image"):
        reference = build["image"] + (f":{build['tag']}" if build.get("tag") else "")
        image = modal.Image.from_registry(reference, add_python="3.11")
    else:
        source = image_source(settings, paths, environ)
        image = modal.Image.from_dockerfile(
            source["dockerfile"],
            context_dir=source["context_dir"],
            build_args=source["build_args"],
            add_python="3.11",
        )
    env = {str(k): str(v) for k, v in (build.get("env") or {}).items()}
    env["MODALKIT_CONFIG"] = ",".join(container_config_paths(paths))
    image = image.env(env)
    commands = _as_list(build.get("extra_run_commands"))
    if commands:
        image = image.run_commands(*commands)
    if build.get("workdir"):
        image = image.workdir(build["workdir"])
    # Files added at container start must come last.
    for path, remote in zip(paths, container_config_paths(paths)):
        image = image.add_local_file(path, remote)
    for mount in _section(settings, "deployment_config").get("mounts") or []:
        kind = mount.get("type", "file")
        if kind == "dir":
            image = image.add_local_dir(mount["local_path"], mount["remote_path"])
        elif kind == "file":
            image = image.add_local_file(mount["local_path"], mount["remote_path"])
        else:
            raise ConfigError(f"app_settings.deployment_config.mounts: type must be file or dir, got {kind!r}")
    return image


def volumes(settings: dict) -> dict[str, Any]:
    """``deployment_config.volumes`` and ``cloud_bucket_mounts``, by mount path."""
    deploy = _section(settings, "deployment_config")
    mounted: dict[str, Any] = {
        path: modal.Volume.from_name(name, create_if_missing=True) for path, name in (deploy.get("volumes") or {}).items()
    }
    for bucket in deploy.get("cloud_bucket_mounts") or []:
        mounted[bucket["mount_point"]] = modal.CloudBucketMount(
            bucket_name=bucket["bucket_name"],
            bucket_endpoint_url=bucket.get("bucket_endpoint_url"),
            key_prefix=bucket.get("key_prefix"),
            secret=modal.Secret.from_name(bucket["secret"]) if bucket.get("secret") else None,
            oidc_auth_role_arn=bucket.get("oidc_auth_role_arn"),
            read_only=bool(bucket.get("read_only", False)),
            requester_pays=bool(bucket.get("requester_pays", False)),
        )
    return mounted


def concurrency(settings: dict) -> dict[str, int]:
    """Requests per container. ``max_concurrency``: what the server can hold (every
    model's queue plus the batches its workers compute), past which Modal answers 429
    instead of the server's 503; ``allow_concurrent_inputs`` overrides it.
    ``target_concurrency``, what autoscaling aims for: a full batch computing on every
    worker and the next one forming, per model (continuous batching);
    ``allow_concurrent_inputs_handler`` overrides it. Never above the maximum."""
    deploy = _section(settings, "deployment_config")
    models = max(1, len((settings.get("model_settings") or {}).get("model_entries") or {}))
    if "batch_config" in (settings.get("app_settings") or {}):
        batch = int(_setting(settings, "batch_config", "max_batch_size"))
    else:
        batch = UNCONFIGURED_MAX_BATCH_SIZE
    workers = int(_setting(settings, "server_config", "workers"))
    depth = int(_setting(settings, "server_config", "max_queue_depth"))
    maximum = int(deploy.get("allow_concurrent_inputs") or models * (depth + workers * batch))
    target = int(deploy.get("allow_concurrent_inputs_handler") or models * 2 * workers * batch)
    return {"max_concurrency": maximum, "target_concurrency": min(target, maximum)}


def exit_grace_seconds(settings: dict) -> int:
    """The drain's whole length: the shutdown grace, the unready delay and the time the
    server takes to close its connections, so Modal never cuts the drain short."""
    grace = float(_setting(settings, "server_config", "shutdown_grace_seconds"))
    unready = float(_setting(settings, "server_config", "unready_delay_seconds"))
    return min(MAX_EXIT_GRACE_SECONDS, math.ceil(grace + unready + HTTP_CLOSE_SECONDS))


def server_options(settings: dict) -> dict[str, Any]:
    """Keyword arguments for ``app.server``: resources, placement, storage, scaling, the
    port and who may call it. ``retries`` has no meaning for a server (Modal retries
    function calls, and a server gets requests, not calls), so it is not passed."""
    deploy = _section(settings, "deployment_config")
    gpus = _as_list(deploy.get("gpu"))
    options: dict[str, Any] = {
        "port": PORT,
        "gpu": (gpus[0] if len(gpus) == 1 else gpus) or None,
        "compute_region": deploy.get("region"),
        "secrets": [modal.Secret.from_name(s) for s in deploy.get("secrets") or []],
        "volumes": volumes(settings),
        "max_containers": deploy.get("concurrency_limit"),
        "scaledown_window": deploy.get("container_idle_timeout"),
        "memory": deploy.get("memory"),
        "cpu": deploy.get("cpu"),
        "startup_timeout": STARTUP_TIMEOUT_SECONDS,
        "exit_grace_period": exit_grace_seconds(settings),
        # Modal's proxy auth (Modal-Key / Modal-Secret) only with `secure: true`.
        "unauthenticated": not bool(deploy.get("secure", False)),
        **concurrency(settings),
    }
    return {k: v for k, v in options.items() if v is not None}


def server_command(binary: str, configs: list[str], port: int = PORT, host: str = "0.0.0.0") -> list[str]:
    """The server's command line: bound to 0.0.0.0, since Modal probes the container's own address."""
    return [binary, "serve", "--config", ",".join(configs), "--host", host, "--port", str(port)]


def start_server(command: list[str], env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Starts the server as a child process."""
    return subprocess.Popen(command, env=dict(env) if env is not None else None)


def stop_server(process: subprocess.Popen, grace_seconds: float) -> int:
    """Sends SIGTERM and waits for the drain (grace + 10 s), then kills. Returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=grace_seconds + 10)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def reload_interval(settings: dict) -> float | None:
    seconds = _section(settings, "deployment_config").get("volume_reload_interval_seconds")
    return float(seconds) if seconds and float(seconds) > 0 else None


PATHS = config_paths()
SETTINGS = load_settings(PATHS)
GRACE = float(_setting(SETTINGS, "server_config", "shutdown_grace_seconds"))
RELOAD_EVERY = reload_interval(SETTINGS)
OPTIONS = server_options(SETTINGS)
VOLUMES = [v for v in OPTIONS.get("volumes", {}).values() if isinstance(v, modal.Volume)]

app = modal.App(app_name(SETTINGS), image=build_image(SETTINGS, PATHS))


@app.server(**OPTIONS)
class ModalkitServer:
    """One container: the modalkit-rs server process, which Modal proxies HTTP to."""

    @modal.enter()
    def start(self) -> None:
        self.process = start_server(server_command(SERVER_BINARY, container_config_paths(PATHS)))
        self.stopping = threading.Event()
        if RELOAD_EVERY:
            threading.Thread(target=self._reload_volumes, daemon=True).start()

    def _reload_volumes(self) -> None:
        while not self.stopping.wait(RELOAD_EVERY):
            for volume in VOLUMES:
                volume.reload()
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGHUP)

    @modal.exit()
    def stop(self) -> None:
        self.stopping.set()
        code = stop_server(self.process, GRACE)
        print(f"modalkit-rs server exited with code {code}")
