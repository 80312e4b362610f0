"""Drives the TEI and rerank routes with real clients, as installed by
scripts/modalkit-oracle.sh, and prints what each client returned, as JSON,
for tests/tests/bert_family.rs:

- huggingface_hub's InferenceClient with the server's URL as its model (it
  posts to the URL itself, as to a TEI endpoint): feature_extraction and,
  with ?model_name= naming the classifier, text_classification;
- the cohere SDK: ClientV2.rerank (POST /v2/rerank) and the v1 Client's
  rerank with return_documents (POST /v1/rerank).

Usage: tei_clients.py BASE_URL RERANKER CLASSIFIER"""

import json
import sys

import cohere
from huggingface_hub import InferenceClient


def main():
    base_url, reranker, classifier = sys.argv[1], sys.argv[2], sys.argv[3]
    tei = InferenceClient(model=base_url)
    one = tei.feature_extraction("A man is eating food.")
    many = tei.feature_extraction(["A man is eating food.", "The cat sits outside on the warm stones."])
    query = tei.feature_extraction("A man is eating food.", prompt_name="query")
    raw = tei.feature_extraction("A man is eating food.", normalize=False)
    labels = InferenceClient(model=f"{base_url}/?model_name={classifier}").text_classification(
        "The new movie is awesome, I loved every minute."
    )
    # Given TEI's flat list for one text, the client returns its first (best) label.
    top = labels[0] if isinstance(labels, list) else labels
    documents = [
        "Berlin has a population of 3,520,031 registered inhabitants.",
        "New York City is famous for the Metropolitan Museum of Art.",
        "The weather in Lisbon is mild in winter.",
    ]
    v2 = cohere.ClientV2(base_url=base_url, api_key="not-needed").rerank(
        model=reranker, query="How many people live in Berlin?", documents=documents, top_n=2
    )
    v1 = cohere.Client(base_url=base_url, api_key="not-needed").rerank(
        model=reranker,
        query="How many people live in Berlin?",
        documents=documents,
        return_documents=True,
    )
    print(json.dumps({
        "one": one.tolist(),
        "many": many.tolist(),
        "query": query.tolist(),
        "raw": raw.tolist(),
        "classification": {"label": top.label, "score": top.score},
        "cohere_v2": [{"index": r.index, "relevance_score": r.relevance_score} for r in v2.results],
        "cohere_v1": [
            {"index": r.index, "relevance_score": r.relevance_score, "document": r.document.text if r.document else None}
            for r in v1.results
        ],
        "cohere_v1_id": v1.id,
    }))


if __name__ == "__main__":
    main()
