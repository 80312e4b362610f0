"""Drives a server's /v1/embeddings with the real `openai` package (as
installed by scripts/modalkit-oracle.sh) and prints what the client saw, as
JSON, for tests/tests/embeddings.rs. Usage: openai_client.py BASE_URL MODEL"""

import json
import sys

import openai


def main():
    base_url, model = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="not-needed", max_retries=0)
    # The client asks for base64 unless told otherwise, and decodes it.
    default = client.embeddings.create(input="hello world", model=model)
    floats = client.embeddings.create(
        input=["hello world", "the cat sat on the mat"], model=model, encoding_format="float"
    )
    short = client.embeddings.create(input="hello world", model=model, dimensions=128)
    listed = client.models.list()
    try:
        client.embeddings.create(input="hello", model=model, dimensions=100000)
        refused = None
    except openai.BadRequestError as err:
        refused = {"status": err.status_code, "body": err.body}
    print(json.dumps({
        "default": default.model_dump(),
        "floats": floats.model_dump(),
        "short": short.model_dump(),
        "models": [m.id for m in listed.data],
        "refused": refused,
    }))


if __name__ == "__main__":
    main()
