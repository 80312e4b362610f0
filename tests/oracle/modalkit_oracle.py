"""The real modalkit 0.2.0 as an oracle for tests/tests/modalkit_compat.rs.

Reads a JSON object of cases on stdin and writes what modalkit's own code
makes of them:

- "settings": [{"name", "files": [paths], "env": {NAME: value}}] -> modalkit's
  Settings() with MODALKIT_CONFIG=files and only these MODALKIT_ variables,
  in an empty working directory: {"ok": model_dump(mode="json")} or
  {"error": text}.
- "wire": [{"name", "kind", ...}] -> the exact bytes modalkit produces:
  - kind "sync": the FastAPI app of modalkit.fast_api.create_app answering
    /predict_sync for an echo pipeline (status code and body);
  - kind "async_reply": the same app answering /predict_async;
  - kind "success" / "item_failure" / "batch_failure": what
    ModalService.send_async_response sends to the queue (send_response_queue
    captured), for the echo output or error given;
  - kind "translate_success" / "translate_item_failure": the same for the
    README's translate pipeline (examples/src/translate.rs written in
    Python), with the entry's "default_language" or the "error" given.

Installed by scripts/modalkit-oracle.sh into .venv-modalkit.
"""

import json
import os
import sys
import tempfile
from typing import Optional


def settings_case(case):
    from modalkit.settings import Settings

    for name in list(os.environ):
        if name.lower().startswith("modalkit_"):
            del os.environ[name]
    os.environ["MODALKIT_CONFIG"] = ",".join(case["files"])
    os.environ.update(case.get("env", {}))
    try:
        return {"ok": Settings().model_dump(mode="json")}
    except Exception as err:  # noqa: BLE001 - any refusal is an answer
        return {"error": f"{type(err).__name__}: {err}"}


def wire_cases(cases, base_config):
    os.environ["MODALKIT_CONFIG"] = base_config
    from fastapi.testclient import TestClient
    from pydantic import BaseModel, ConfigDict

    import modalkit.modalapp as modalapp
    from modalkit.fast_api import create_app
    from modalkit.iomodel import (
        AsyncInputModel,
        AsyncOutputModel,
        DelayedFailureOutputModel,
        InferenceOutputModel,
    )

    class EchoInput(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: str
        repeat: Optional[int] = None
        sleep_ms: int = 0
        fail: Optional[str] = None

    class EchoOutput(InferenceOutputModel):
        echo: str
        batch_size: int
        worker: int

    class TranslationInput(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: str
        language: Optional[str] = None

    class TranslationOutput(InferenceOutputModel):
        translated_text: str
        language: str
        confidence: float

    def translate(message, default_language):
        text = message.text.strip()
        letters = sum(1 for c in text if c.isalpha())
        return TranslationOutput(
            status="success",
            translated_text=text.upper(),
            language=message.language or default_language,
            confidence=letters / len(text) if text else 0.0,
        )

    def echo(message, batch_size=1, worker=0):
        return EchoOutput(
            status="success",
            echo=message.text.upper() * (message.repeat or 1),
            batch_size=batch_size,
            worker=worker,
        )

    async def sync_fn(model_name, wrapped):
        return echo(wrapped.message)

    async def async_fn(model_name, request):
        return AsyncOutputModel(job_id="00000000-0000-0000-0000-000000000000")

    app = create_app(EchoInput, EchoOutput, [], None, sync_fn, async_fn)
    client = TestClient(app)

    sent = []
    modalapp.send_response_queue = lambda queue, message: sent.append((queue, message)) or True

    results = {}
    for case in cases:
        kind = case["kind"]
        if kind in ("sync", "async_reply"):
            path = "/predict_sync" if kind == "sync" else "/predict_async"
            response = client.post(f"{path}?model_name=echo", content=case["body"].encode(),
                                   headers={"content-type": "application/json"})
            results[case["name"]] = {"status": response.status_code, "body": response.text}
            continue
        if kind.startswith("translate_"):
            request = AsyncInputModel[TranslationInput].model_validate_json(case["body"])
        else:
            request = AsyncInputModel[EchoInput].model_validate_json(case["body"])
        if kind == "translate_success":
            output = translate(request.message, case["default_language"])
        elif kind == "translate_item_failure":
            output = TranslationOutput.model_construct(status="error", error=case["error"])
        elif kind == "success":
            output = echo(request.message, case["batch_size"], case["worker"])
        elif kind == "item_failure":
            output = EchoOutput.model_construct(status="error", error=case["error"])
        else:  # batch_failure, as ModalService.process_request builds it
            output = DelayedFailureOutputModel(
                status="error", error=f"Internal Server Error. Error log: {case['error']}",
                original_message=request,
            )
        sent.clear()
        modalapp.ModalService.send_async_response(None, 0, output, request)
        results[case["name"]] = {"queue": sent[0][0] if sent else None,
                                 "body": sent[0][1] if sent else None}
    return results


def main():
    request = json.load(sys.stdin)
    workdir = tempfile.mkdtemp(prefix="modalkit-oracle-")
    os.chdir(workdir)
    answer = {"settings": {}, "wire": {}}
    for case in request.get("settings", []):
        answer["settings"][case["name"]] = settings_case(case)
    if request.get("wire"):
        for name in list(os.environ):
            if name.lower().startswith("modalkit_"):
                del os.environ[name]
        answer["wire"] = wire_cases(request["wire"], request["wire_config"])
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
