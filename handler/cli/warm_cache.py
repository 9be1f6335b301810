"""Fill the response cache ahead of time from a file of prompts, so an image can ship warm.

`python -m handler.cli.warm_cache PROMPTS [--max-tokens N]`: one prompt per line, or JSON lines
`{"prompt": ..., "max_tokens": ...}`. Answers go through the same path as `/chat` (same keys,
same stores), into the configured `cache_dir`; prompts already cached are skipped. Copy the
folder into the image and point `cache_seed_dir` at it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from handler.cache.policy import CachePolicy
from handler.cache.response_cache import ResponseCache
from handler.core.config import ConfigError, load_settings
from handler.core.errors import ServiceError
from handler.core.types import CacheSource
from handler.engine.model import ModelHolder
from handler.service.chat_service import ChatService
from handler.service.prompts import chat_input
from handler.service.served_models import ServedModels


def read_prompts(path: Path, default_max_tokens: int | None) -> list[tuple[str, int | None]]:
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                item = json.loads(line)
                prompts.append((str(item["prompt"]), item.get("max_tokens", default_max_tokens)))
            except (ValueError, KeyError) as exc:
                raise SystemExit(f"{path}:{number}: not a JSON object with a prompt ({exc})") from None
        else:
            prompts.append((line, default_max_tokens))
    return prompts


async def warm(service: ChatService, prompts: list[tuple[str, int | None]]) -> Counter[str]:
    outcomes: Counter[str] = Counter()  # cache sources, or the error type of a prompt that failed
    for prompt, max_tokens in tqdm(prompts, desc="warming cache", unit="prompt"):
        try:
            answer = await service.answer(
                chat_input(service.settings, prompt), service.params_for(max_tokens), CachePolicy()
            )
            outcomes[answer.source.value] += 1
        except ServiceError as exc:
            outcomes[exc.error_type] += 1
            tqdm.write(f"skipped {prompt[:40]!r}: {exc.public_message}")
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m handler.cli.warm_cache", description=__doc__.splitlines()[0])
    parser.add_argument("prompts", type=Path, help="text file, one prompt per line, or JSON lines")
    parser.add_argument("--max-tokens", type=int, default=None, help="for lines that do not say (config default)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if not settings.cache_dir:
        print("cache_dir is not set: there is no disk cache to warm", file=sys.stderr)
        return 2
    service = ChatService(
        settings, ServedModels(settings, ModelHolder(settings)), ResponseCache.from_settings(settings)
    )
    outcomes = asyncio.run(warm(service, read_prompts(args.prompts, args.max_tokens)))
    stats = service.cache.stats().get("disk", {})
    print(
        f"{dict(outcomes)}; disk cache {settings.cache_dir}: {stats.get('entries')} entries, {stats.get('bytes')} bytes"
    )
    return 0 if set(outcomes) <= {source.value for source in CacheSource} else 1


if __name__ == "__main__":
    sys.exit(main())
