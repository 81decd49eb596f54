"""`geomkit neighbors`: cosine vs Euclidean vocabulary neighbours (the paper's Tables 1 and 5)."""

from __future__ import annotations

from geomkit.commands._common import add_model_args, add_out_arg, existing_file, nonempty, positive_int

NAME = "neighbors"
ORDER = 10
HELP = "top-k vocabulary neighbours by cosine and by Euclidean distance (Table 1)"
DESCRIPTION = (
    "For each WORD (one token of the model's vocabulary) or learned embedding file, list its k nearest "
    "vocabulary tokens by cosine similarity and by Euclidean distance side by side. The query token itself "
    "is excluded. The vocabulary is streamed in chunks; the model is never modified."
)


def add_arguments(p):
    p.add_argument("words", nargs="*", type=nonempty("word"), metavar="WORD", help="query words, each a single token (e.g. apple study writing)")
    p.add_argument("--embedding", nargs="+", default=[], type=existing_file, metavar="FILE", help="learned embedding file(s) (.safetensors, .pt, .bin) to query")
    p.add_argument("-k", "--top-k", type=positive_int, default=10, help="neighbours per query (default 10)")
    p.add_argument("--related", nargs="+", default=[], type=nonempty("word"), metavar="WORD", help="also report the cosine of each query to these words (semantic drift, Fig. 1b)")
    add_model_args(p)
    add_out_arg(p, "runs/neighbors")


def query_table(enc, words, embedding_files=(), k=10):
    """{label: {"token", "vector", "exclude"}} for words and learned embeddings (first vector)."""
    from geomkit.embeddings_io import load_learned_set

    table = enc.embedding_table()
    queries = {}
    for word in words:
        tid = enc.token_id(word)
        queries[word] = {"token": enc.token_str(tid), "text": enc.token_text(tid), "vector": table[tid], "exclude": [tid]}
    for name, vectors in load_learned_set(embedding_files, d_model=enc.d_model).items():
        for j, vec in enumerate(vectors):
            label = name if len(vectors) == 1 else f"{name}[{j}]"
            queries[label] = {"token": label, "vector": vec, "exclude": []}
    return queries


def run(args) -> int:
    import pandas as pd

    from geomkit import report
    from geomkit.errors import GeomkitError
    from geomkit.geometry import drift, nearest
    from geomkit.models import load_encoder

    if not args.words and not args.embedding:
        raise GeomkitError("give at least one WORD or --embedding FILE")
    if args.top_k < 1:
        raise GeomkitError(f"--top-k must be at least 1, not {args.top_k}")
    from geomkit.commands._common import no_duplicates

    no_duplicates(args.words, "WORD")
    no_duplicates(args.embedding, "--embedding", paths=True)
    no_duplicates(args.related, "--related")
    out = report.prepare_out(args.out, command="neighbors")
    enc = load_encoder(args.model, encoder=args.encoder)
    if args.top_k >= enc.vocab_size:
        raise GeomkitError(f"--top-k {args.top_k}: the vocabulary of {enc.name} has only {enc.vocab_size} tokens")
    queries = query_table(enc, args.words, args.embedding, args.top_k)
    import torch

    vectors = torch.stack([q["vector"] for q in queries.values()])
    cos, euc = nearest(enc.embedding_table(), vectors, k=args.top_k, exclude=[q["exclude"] for q in queries.values()])
    related_ids = [enc.token_id(w) for w in args.related]

    results = {"model": enc.name, "top_k": args.top_k, "queries": {}}
    rows = []
    for (label, q), c, e in zip(queries.items(), cos, euc):
        entry = {
            "token": q["token"],
            "norm": float(q["vector"].double().norm()),
            "cosine": [{"token": enc.token_str(i), "score": float(s)} for i, s in zip(c.ids, c.scores)],
            "euclidean": [{"token": enc.token_str(i), "score": float(s)} for i, s in zip(e.ids, e.scores)],
        }
        if related_ids:
            sims = drift(q["vector"], enc.embedding_table()[related_ids])
            entry["related_cosine"] = {w: float(s) for w, s in zip(args.related, sims)}
        results["queries"][label] = entry
        for rank in range(len(c.ids)):
            rows.append(
                {
                    "query": label,
                    "rank": rank + 1,
                    # decoded for people (CLIP's </w>, byte-level BPE's Ġ and mojibake); results.json keeps the raw pieces
                    "euclidean": enc.token_text(e.ids[rank]),
                    "distance": entry["euclidean"][rank]["score"],
                    "cosine": enc.token_text(c.ids[rank]),
                    "similarity": entry["cosine"][rank]["score"],
                }
            )
    report.write_csv(out / "neighbors.csv", pd.DataFrame(rows))
    report.write_json(out / "results.json", results)
    print(f"model: {enc.name}   vocabulary: {enc.vocab_size} x {enc.d_model}")
    for label, entry in results["queries"].items():
        print(f"\n{label!r} (token {queries[label].get('text', entry['token'])!r}, norm {entry['norm']:.4f})")
        print(report.table_text([{k: v for k, v in r.items() if k != "query"} for r in rows if r["query"] == label]))
        if "related_cosine" in entry:
            print("cosine to related words: " + ", ".join(f"{w} {s:.3f}" for w, s in entry["related_cosine"].items()))
    print(f"\nwrote {out / 'results.json'} and {out / 'neighbors.csv'}")
    return 0
