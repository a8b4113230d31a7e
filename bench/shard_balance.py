"""How even are the shards?  `python3 bench/shard_balance.py [N]` (stdlib only).

Generates a suite with uneven recorded durations (deterministic: seeded),
splits it into N shards (default 3) with pytest-fast's own split (the
`_shard` function of src/glue.py, loaded with a stand-in for the C module)
and with pytest-split's two algorithms, and prints each shard's summed
duration and the slowest shard against total/N.  No test runs and no clock
is read: the figures are sums of the recorded durations.

pytest-split is not a dependency: its `least_duration` (the default) and
`duration_based_chunks` algorithms are re-implemented below from their
documentation and source (jerry-git/pytest-split, src/pytest_split/
algorithms.py): tests without a duration get the mean of the known ones;
least_duration hands tests, longest first (ties by node id), to the group
with the smallest sum; duration_based_chunks cuts the collection order into
consecutive runs of about total/N.  Neither keeps a module or an xdist
group together; pytest-fast does (unless a module alone is more than a
shard's share), which is why it cannot always be as even.
"""
from __future__ import annotations

import heapq
import importlib.util
import random
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_glue() -> types.ModuleType:
    sys.modules.setdefault("_pytest_fast", types.ModuleType("_pytest_fast"))
    spec = importlib.util.spec_from_file_location("pytest_fast_glue", ROOT / "src" / "glue.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Item:
    """What the split reads of a pytest item."""

    def __init__(self, nodeid: str, group: str | None = None) -> None:
        self.nodeid = nodeid
        self.group = group

    def get_closest_marker(self, name: str) -> types.SimpleNamespace | None:
        if name != "xdist_group" or self.group is None:
            return None
        return types.SimpleNamespace(args=(self.group,), kwargs={})


def uneven_suite(seed: int = 16) -> tuple[list[Item], dict[str, float]]:
    """60 modules of 1-40 tests, log-normal durations (most tests take
    milliseconds, a few seconds), one heavy integration module and two
    xdist groups."""
    rng = random.Random(seed)
    items: list[Item] = []
    durations: dict[str, float] = {}
    for m in range(60):
        module = f"tests/test_mod{m:02d}.py"
        scale = rng.choice([0.2, 0.5, 1.0, 1.0, 2.0, 5.0])
        for t in range(rng.randint(1, 40)):
            group = "db" if m % 17 == 3 and t < 3 else "net" if m % 23 == 5 and t < 2 else None
            item = Item(f"{module}::test_{t}", group)
            items.append(item)
            durations[item.nodeid] = round(min(rng.lognormvariate(-2.5, 1.4) * scale, 30.0), 4)
    for t in range(25):
        nodeid = f"tests/test_integration.py::test_flow[{t}]"
        items.append(Item(nodeid))
        durations[nodeid] = round(rng.uniform(2.0, 9.0), 4)
    return items, durations


def with_mean(items: list[Item], durations: dict[str, float]) -> list[float]:
    known = [durations[i.nodeid] for i in items if i.nodeid in durations]
    mean = sum(known) / len(known) if known else 1.0
    return [durations.get(i.nodeid, mean) for i in items]


def split_least_duration(items: list[Item], durations: dict[str, float], n: int) -> list[list[Item]]:
    weights = with_mean(items, durations)
    by_name = sorted(range(len(items)), key=lambda i: items[i].nodeid)
    order = sorted(by_name, key=lambda i: weights[i], reverse=True)   # stable: ties by name
    heap = [(0.0, g) for g in range(n)]
    groups: list[list[int]] = [[] for _ in range(n)]
    for i in order:
        total, g = heapq.heappop(heap)
        groups[g].append(i)
        heapq.heappush(heap, (total + weights[i], g))
    return [[items[i] for i in sorted(g)] for g in groups]


def split_duration_based_chunks(items: list[Item], durations: dict[str, float],
                                n: int) -> list[list[Item]]:
    weights = with_mean(items, durations)
    per_group = sum(weights) / n
    groups: list[list[Item]] = [[] for _ in range(n)]
    sums = [0.0] * n
    g = 0
    for item, w in zip(items, weights):
        if sums[g] >= per_group and g < n - 1:
            g += 1
        groups[g].append(item)
        sums[g] += w
    return groups


def report(name: str, shards: list[list[Item]], durations: dict[str, float], items: list[Item]) -> float:
    weights = dict(zip((i.nodeid for i in items), with_mean(items, durations)))
    sums = [sum(weights[i.nodeid] for i in shard) for shard in shards]
    ideal = sum(weights.values()) / len(shards)
    ratio = max(sums) / ideal
    # Modules whose tests (those of xdist groups aside) run in more than one shard.
    split_modules = sum(1 for m in {i.nodeid.split("::")[0] for i in items}
                        if len({k for k, s in enumerate(shards) for i in s
                                if i.nodeid.split("::")[0] == m and i.group is None}) > 1)
    print(f"{name:34s} " + "  ".join(f"{s:8.2f}" for s in sums)
          + f"   max/ideal {ratio:.3f}   modules split: {split_modules}")
    return ratio


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    glue = load_glue()
    items, durations = uneven_suite()
    total = sum(durations.values())
    print(f"{len(items)} tests in {len({i.nodeid.split('::')[0] for i in items})} modules, "
          f"{total:.2f} s recorded; {n} shards, ideal {total / n:.2f} s each\n")
    ours_shards = [glue._shard(items, k, n, durations) for k in range(1, n + 1)]
    assert sorted(i.nodeid for s in ours_shards for i in s) == sorted(i.nodeid for i in items)
    ours = report("pytest-fast --shard", ours_shards, durations, items)
    theirs = report("pytest-split least_duration", split_least_duration(items, durations, n),
                    durations, items)
    report("pytest-split duration_based_chunks", split_duration_based_chunks(items, durations, n),
           durations, items)
    # A fifth of the tests are new (no recorded duration): they weigh the mean.
    rng = random.Random(7)
    partial = {k: v for k, v in durations.items() if rng.random() > 0.2}
    print("\nwith 20 % of the durations missing (they weigh the mean):")
    report("pytest-fast --shard", [glue._shard(items, k, n, partial) for k in range(1, n + 1)],
           partial, items)
    report("pytest-split least_duration", split_least_duration(items, partial, n), partial, items)
    print(f"\nslowest shard: pytest-fast {ours:.3f} x total/{n}, pytest-split {theirs:.3f} x "
          f"({'within' if ours <= 1.10 else 'NOT within'} 10 % of total/{n})")
    return 0 if ours <= 1.10 else 1


if __name__ == "__main__":
    sys.exit(main())
