"""What redaction costs, in-process: `python scripts/bench_redact.py`.

Times `Redactor.redact` on a small (~200 B) and a 10 MB JSON-RPC result, with and without the
secret in it, and the alternatives weighed for the check that runs when nothing matches: one `in`
per anchor (what the Redactor does), one compiled alternation of the anchors, and an `in` per form
and one alternation of all forms. Prints µs per call, best of a few repeats.
"""

from __future__ import annotations

import base64
import functools
import re
import secrets
import string
import timeit
from collections.abc import Callable

import orjson

from mcpshield.policy.redact import Redactor

# A GitHub-token-shaped secret: 4 + 36 characters.
SECRET = "ghp_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(36))
LARGE_BYTES = 10_000_000
# Calls per timing: enough for the small message to take milliseconds, few for 10 MB.
SMALL_CALLS = 100_000
LARGE_CALLS = 3
REPEATS = 5


def result_line(text: str) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": text}]}})


def messages() -> dict[str, tuple[bytes, int]]:
    """name -> (message, calls per timing)."""
    prose = "The quick brown fox jumps over the lazy dog, 0123456789 times. "
    small = prose * 2
    large_text = (prose * (LARGE_BYTES // len(prose) + 1))[:LARGE_BYTES]
    large_b64 = base64.b64encode(secrets.token_bytes(LARGE_BYTES * 3 // 4)).decode()
    return {
        "200 B, no match": (result_line(small), SMALL_CALLS),
        "200 B, match": (result_line(small[:60] + SECRET + small[100:]), SMALL_CALLS),
        "10 MB text, no match": (result_line(large_text), LARGE_CALLS),
        "10 MB base64, no match": (result_line(large_b64), LARGE_CALLS),
        "10 MB 'x', no match": (result_line("x" * LARGE_BYTES), LARGE_CALLS),
        "10 MB text, match": (result_line(large_text[:5_000_000] + SECRET + large_text[5_000_000:]), LARGE_CALLS),
    }


def alternatives(redactor: Redactor) -> dict[str, Callable[[bytes], object]]:
    anchors: tuple[bytes, ...] = redactor._json_anchors
    needles = sorted({n.text for f in redactor._json for n in f.needles}, key=len, reverse=True)
    anchor_pattern = re.compile(b"|".join(re.escape(a) for a in anchors))
    needle_pattern = re.compile(b"|".join(re.escape(n) for n in needles))

    def each_in(data: bytes, patterns: list[bytes]) -> bool:
        return any(p in data for p in patterns)

    return {
        "redact (in per anchor)": lambda data: redactor.redact(data, json_context=True),
        "regex of anchors": anchor_pattern.search,
        "in per form": lambda data: each_in(data, needles),
        "regex of forms": needle_pattern.search,
    }


def main() -> None:
    redactor = Redactor({"GITHUB_TOKEN": SECRET})
    ways = alternatives(redactor)
    print(
        f"secret of {len(SECRET)} chars: {len(redactor._json_anchors)} anchors, "
        f"{sum(len(f.needles) for f in redactor._json)} forms in JSON context"
    )
    for name, (data, calls) in messages().items():
        for way, call in ways.items():
            if "match" in name and "no match" not in name and way != "redact (in per anchor)":
                continue
            best = min(timeit.repeat(functools.partial(call, data), number=calls, repeat=REPEATS)) / calls
            print(f"{name:24} {way:24} {best * 1e6:12,.2f} µs")


if __name__ == "__main__":
    main()
