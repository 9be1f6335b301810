"""A simulated fleet: K function containers (processes) behind a router, with and without the shared table.

Each container is its own process with its own memory and /tmp disk cache, invoked through the
Mangum handler with function-URL events, as Lambda would. The router sends each request to a
random container. Prompts follow a Zipf law (a few popular, a long tail), as real traffic does.
The table is a moto server on localhost, so this runs offline; what it measures is hit rate and
how many generations the fleet ran, not DynamoDB's latency.

    .venv/bin/python bench/shared_cache_fleet.py                 # tiny test model, K=8
    .venv/bin/python bench/shared_cache_fleet.py --model default --containers 4 --requests 300
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TABLE = "fleet-cache"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def container(model_path: str, cache_dir: str, table: str | None, max_tokens: int, inbox: Any, outbox: Any) -> None:
    """One container: answers prompts from its inbox until it gets None; reports X-Cache of each."""
    from mangum import Mangum

    from bench.common import FakeLambdaContext, lambda_event
    from handler.app import create_app
    from handler.core.config import load_settings

    settings = load_settings(
        environ={
            **os.environ,
            "CHAT_MODEL_PATH": model_path,
            "CHAT_MODEL_SHA256": "",
            "CHAT_CACHE_DIR": cache_dir,
            "CHAT_CACHE_TABLE": table or "",
            "CHAT_LOG_LEVEL": "WARNING",
        }
    )
    handler = Mangum(create_app(settings), lifespan="off")
    while (prompt := inbox.get()) is not None:
        response = handler(
            lambda_event("function-url", {"prompt": prompt, "max_tokens": max_tokens}), FakeLambdaContext()
        )
        outbox.put((response["statusCode"], response["headers"].get("x-cache")))


def zipf_prompts(distinct: int, count: int, exponent: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    weights = [1 / (rank**exponent) for rank in range(1, distinct + 1)]
    return [
        f"Question number {i}: what do you know about topic {i}?"
        for i in rng.choices(range(distinct), weights=weights, k=count)
    ]


def run_fleet(
    model_path: str, containers: int, prompts: list[str], table: str | None, max_tokens: int, seed: int
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    outbox = ctx.Queue()
    inboxes = [ctx.Queue() for _ in range(containers)]
    with tempfile.TemporaryDirectory() as tmp:
        workers = [
            ctx.Process(target=container, args=(model_path, f"{tmp}/c{i}", table, max_tokens, inboxes[i], outbox))
            for i in range(containers)
        ]
        for worker in workers:
            worker.start()
        rng = random.Random(seed)
        sources: Counter[str] = Counter()
        started = time.perf_counter()
        for prompt in prompts:  # one at a time: the router's choice, not concurrency, is what is measured
            rng.choice(inboxes).put(prompt)
            status, source = outbox.get(timeout=300)
            sources[source if status == 200 else f"HTTP {status}"] += 1
        elapsed = time.perf_counter() - started
        for inbox in inboxes:
            inbox.put(None)
        for worker in workers:
            worker.join(60)
    hits = sum(n for s, n in sources.items() if s.startswith("HIT"))
    return {
        "sources": dict(sources),
        "hit_rate": hits / len(prompts),
        "generations": sources["MISS"],
        "seconds": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="`tiny` (written here), `default` (config.yaml's), or a path")
    parser.add_argument("--containers", type=int, default=8)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--distinct", type=int, default=200, help="distinct prompts in the population")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of prompt popularity")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer

    os.environ.update(AWS_ENV)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request otherwise
    with tempfile.TemporaryDirectory() as tmp:
        if args.model == "tiny":
            from tests.tiny_gguf import write_tiny_gguf

            model_path = str(write_tiny_gguf(Path(tmp) / "tiny.gguf"))
        elif args.model == "default":
            from handler.core.config import load_settings

            model_path = load_settings().model_path
        else:
            model_path = args.model
        server = ThreadedMotoServer(port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = f"http://{host}:{port}"
        import boto3

        boto3.client("dynamodb").create_table(
            TableName=TABLE,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "key", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "key", "KeyType": "HASH"}],
        )
        prompts = zipf_prompts(args.distinct, args.requests, args.zipf, args.seed)
        print(
            f"{args.containers} containers, {args.requests} requests over {len(set(prompts))} distinct prompts "
            f"(Zipf {args.zipf} over {args.distinct}), model {Path(model_path).name}, max_tokens {args.max_tokens}"
        )
        results = {
            "local tiers only": run_fleet(model_path, args.containers, prompts, None, args.max_tokens, args.seed),
            "with shared table": run_fleet(model_path, args.containers, prompts, TABLE, args.max_tokens, args.seed),
        }
        server.stop()
    print(
        f"{'':20} {'hit rate':>9} {'generations':>12} {'HIT-MEMORY':>11} {'HIT-DISK':>9} {'HIT-SHARED':>11} "
        f"{'seconds':>8}"
    )
    for name, r in results.items():
        s = r["sources"]
        print(
            f"{name:20} {r['hit_rate']:9.1%} {r['generations']:12d} {s.get('HIT-MEMORY', 0):11d} "
            f"{s.get('HIT-DISK', 0):9d} {s.get('HIT-SHARED', 0):11d} {r['seconds']:8.1f}"
        )
    floor = len(set(prompts))
    print(f"(a fleet that shared everything perfectly would generate {floor} times: once per distinct prompt)")


if __name__ == "__main__":
    main()
