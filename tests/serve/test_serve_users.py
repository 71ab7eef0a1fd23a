"""Users' LoRAs (30 on SD, 12 on each other family) through one real server process per family (tiny SD, SDXL, FLUX.1, FLUX.2
Klein), over HTTP with a real client: a cache of 4, 8 requests in flight, users in random
order. Every image must equal the one that user's LoRA alone renders in a fresh pipeline (same
seed: bit-identical on the CPU), the cache must count its hits and misses, and users rendered
one after another must not take anything from each other."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from serving_helpers import CALL, decode

pytestmark = pytest.mark.slow
FAMILIES = ("sd", "sdxl", "flux", "flux2-klein")


def ask(url: str, model: str, **overrides) -> requests.Response:
    return requests.post(url + "/invocations", json={**CALL, "model": model, **overrides}, timeout=120)


@pytest.mark.parametrize("family", FAMILIES)
def test_thirty_users_in_random_order_each_get_exactly_their_own_lora(serve_family, family):
    served = serve_family(family)
    url, users = served.server.url, list(served.users)
    order = users + random.Random(family).choices(users, k=6)   # everyone once, some again
    random.Random(1).shuffle(order)
    before = served.server.stats()["memory_cache"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda u: (u, ask(url, served.names[u])), order))

    for user, answer in answers:
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"] == served.names[user] and body["adapter"]["family"] == family
        got = decode(body["images"][0])
        assert np.array_equal(got, served.references[user]), \
            f"{user}: not its own image ({(got != served.references[user]).sum()} values differ)"
    # users differ from each other: a leaked adapter would show
    distinct = {served.references[u].tobytes() for u in users}
    assert len(distinct) == len(users)

    after = served.server.stats()["memory_cache"]
    hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
    reported = [a.json()["cache"] for _, a in answers]
    assert hits + misses == len(order) and reported.count("hit") == hits and reported.count("miss") == misses
    assert misses >= len(users)                      # each user's first request missed
    assert after["entries"] <= 4 and after["evictions"] > before["evictions"]

    # One after another on one pipeline: A, B, A again draws A's image each time.
    a, b = users[0], users[1]
    for user in (a, b, a, b):
        assert np.array_equal(decode(ask(url, served.names[user]).json()["images"][0]), served.references[user])
    if family != "sd":          # only SD's server is used by the error tests too
        serve_family.stop(family)
