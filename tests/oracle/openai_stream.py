"""Drives a generative server's /v1/completions and /v1/chat/completions
with the real `openai` package (as installed by scripts/modalkit-oracle.sh),
streamed and whole, and prints what the client saw, as JSON, for
tests/tests/generate.rs. Usage: openai_stream.py BASE_URL MODEL REQUESTS_JSON
where REQUESTS_JSON is {"prompt": str, "messages": [...], "max_tokens": int,
"long_prompt": str}."""

import json
import sys

import openai


def refusal(call):
    try:
        call()
    except openai.BadRequestError as err:
        return {"status": err.status_code, "body": err.body}
    return None


def main():
    base_url, model, requests = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="not-needed", max_retries=0)
    greedy = {"model": model, "max_tokens": requests["max_tokens"], "temperature": 0}

    chat_chunks = list(client.chat.completions.create(
        messages=requests["messages"], stream=True, stream_options={"include_usage": True}, **greedy))
    chat_stream = {
        "roles": [c.choices[0].delta.role for c in chat_chunks if c.choices],
        "text": "".join(c.choices[0].delta.content or "" for c in chat_chunks if c.choices),
        "finish_reasons": [c.choices[0].finish_reason for c in chat_chunks if c.choices],
        "ids": sorted({c.id for c in chat_chunks}),
        "usage": [c.usage.model_dump() for c in chat_chunks if c.usage],
        "chunks": len(chat_chunks),
    }
    chat_whole = client.chat.completions.create(messages=requests["messages"], **greedy)

    completion_chunks = list(client.completions.create(prompt=requests["prompt"], stream=True, **greedy))
    completion_stream = {
        "text": "".join(c.choices[0].text for c in completion_chunks if c.choices),
        "finish_reasons": [c.choices[0].finish_reason for c in completion_chunks if c.choices],
        "chunks": len(completion_chunks),
    }
    completion_whole = client.completions.create(prompt=requests["prompt"], **greedy)

    refused = {
        "empty_messages": refusal(lambda: list(client.chat.completions.create(
            model=model, messages=[], stream=True))),
        "max_tokens_zero": refusal(lambda: list(client.completions.create(
            model=model, prompt="Hello", max_tokens=0, stream=True))),
        "prompt_over_context": refusal(lambda: list(client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": requests["long_prompt"]}], max_tokens=8,
            stream=True))),
    }
    print(json.dumps({
        "chat_stream": chat_stream,
        "chat_whole": chat_whole.model_dump(),
        "completion_stream": completion_stream,
        "completion_whole": completion_whole.model_dump(),
        "refused": refused,
        "models": [m.id for m in client.models.list().data],
    }))


if __name__ == "__main__":
    main()
