"""Run a modalkit-rs server on Modal, configured by the same modalkit.yaml.

    MODALKIT_CONFIG=config/modalkit.yaml modal deploy deploy/modal_app.py

This file does what modalkit's ``ModalConfig.get_app_cls_settings`` did in
Python: it reads ``modalkit.yaml`` (every file of ``MODALKIT_CONFIG``, later
files and ``MODALKIT_APP_SETTINGS__...`` variables winning, as the server
does) and maps it to Modal's app, image, class and web-server settings. The
server binary runs as a child process bound to 0.0.0.0; Modal's
``web_server`` forwards HTTP to it. Stopping the container sends SIGTERM
and waits for the server's drain. With ``volume_reload_interval_seconds``,
volumes are reloaded on that interval and the server gets SIGHUP so the
pipeline's ``on_volume_reload`` runs.

Environment read at deploy time:
  MODALKIT_CONFIG        config file(s), comma-separated (default modalkit.yaml)
  MODALKIT_APP_POSTFIX   appended to app_prefix (default -dev)
  MODALKIT_PACKAGE       the Cargo package the image builds (default: this project's)
  MODALKIT_BINARY        its binary (default: this project's; MODALKIT_EXAMPLE is an alias)
  MODALKIT_FEATURES      Cargo features to build with (default none; `cuda` for GPU images)
  MODALKIT_DOCKERFILE    Dockerfile to build (default: this project's Dockerfile,
                         Dockerfile.cuda when a GPU is configured)

`modalkit new` copies this file into a new project and sets the project
block below to that project's package and binary.
"""

from __future__ import annotations

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
DEFAULT_CONCURRENT_INPUTS = 100
DEFAULT_SHUTDOWN_GRACE_SECONDS = 30.0


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


def container_config_paths(paths: list[Path]) -> list[str]:
    """Where each config file lands in the container."""
    return [f"{CONTAINER_CONFIG_DIR}/{i}-{p.name}" for i, p in enumerate(paths)]


def image_source(settings: dict, paths: list[Path], environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """What the image is built from when ``build_config.image`` is not set: the project's
    Dockerfile (the CUDA one when a GPU is configured), the project folder as context, and
    the package, binary, features and config file as build arguments."""
    gpu = bool(_as_list(_section(settings, "deployment_config").get("gpu")))
    default_dockerfile = PROJECT_CUDA_DOCKERFILE if gpu else PROJECT_DOCKERFILE
    dockerfile = Path(environ.get("MODALKIT_DOCKERFILE", str(PROJECT_ROOT / default_dockerfile)))
    binary = environ.get("MODALKIT_BINARY") or environ.get("MODALKIT_EXAMPLE") or PROJECT_BINARY
    build_args = {
        "PACKAGE": environ.get("MODALKIT_PACKAGE", PROJECT_PACKAGE),
        "BIN": binary,
        "FEATURES": environ.get("MODALKIT_FEATURES", "cuda" if gpu else ""),
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


def cls_options(settings: dict) -> dict[str, Any]:
    """Keyword arguments for ``app.cls``: resources, placement, storage, scaling."""
    deploy = _section(settings, "deployment_config")
    volumes: dict[str, Any] = {
        path: modal.Volume.from_name(name, create_if_missing=True) for path, name in (deploy.get("volumes") or {}).items()
    }
    for bucket in deploy.get("cloud_bucket_mounts") or []:
        volumes[bucket["mount_point"]] = modal.CloudBucketMount(
            bucket_name=bucket["bucket_name"],
            bucket_endpoint_url=bucket.get("bucket_endpoint_url"),
            key_prefix=bucket.get("key_prefix"),
            secret=modal.Secret.from_name(bucket["secret"]) if bucket.get("secret") else None,
            oidc_auth_role_arn=bucket.get("oidc_auth_role_arn"),
            read_only=bool(bucket.get("read_only", False)),
            requester_pays=bool(bucket.get("requester_pays", False)),
        )
    gpus = _as_list(deploy.get("gpu"))
    options: dict[str, Any] = {
        "gpu": (gpus[0] if len(gpus) == 1 else gpus) or None,
        "region": deploy.get("region"),
        "secrets": [modal.Secret.from_name(s) for s in deploy.get("secrets") or []],
        "volumes": volumes,
        "retries": deploy.get("retries"),
        "max_containers": deploy.get("concurrency_limit"),
        "scaledown_window": deploy.get("container_idle_timeout"),
        "memory": deploy.get("memory"),
        "cpu": deploy.get("cpu"),
        "timeout": 24 * 3600,
        "startup_timeout": STARTUP_TIMEOUT_SECONDS,
    }
    return {k: v for k, v in options.items() if v is not None}


def concurrency(settings: dict) -> dict[str, int]:
    """``allow_concurrent_inputs`` -> max inputs per container; ``allow_concurrent_inputs_handler`` -> target."""
    deploy = _section(settings, "deployment_config")
    limits = {"max_inputs": int(deploy.get("allow_concurrent_inputs") or DEFAULT_CONCURRENT_INPUTS)}
    if deploy.get("allow_concurrent_inputs_handler"):
        limits["target_inputs"] = min(int(deploy["allow_concurrent_inputs_handler"]), limits["max_inputs"])
    return limits


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
SECURE = bool(_section(SETTINGS, "deployment_config").get("secure", False))
GRACE = float(_section(SETTINGS, "server_config").get("shutdown_grace_seconds", DEFAULT_SHUTDOWN_GRACE_SECONDS))
RELOAD_EVERY = reload_interval(SETTINGS)
VOLUMES = [v for v in cls_options(SETTINGS).get("volumes", {}).values() if isinstance(v, modal.Volume)]

app = modal.App(app_name(SETTINGS), image=build_image(SETTINGS, PATHS))


@app.cls(**cls_options(SETTINGS))
@modal.concurrent(**concurrency(SETTINGS))
class ModalkitServer:
    """One container: the modalkit-rs server process behind Modal's web server."""

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

    @modal.web_server(PORT, startup_timeout=STARTUP_TIMEOUT_SECONDS, requires_proxy_auth=SECURE)
    def serve(self) -> None:
        """Modal forwards HTTP to the server on PORT."""

    @modal.exit()
    def stop(self) -> None:
        self.stopping.set()
        code = stop_server(self.process, GRACE)
        print(f"modalkit-rs server exited with code {code}")
