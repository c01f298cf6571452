"""A model of the stage protocol of the sm_90a attention kernel (attention.cu: produce, consume).

One producer fills a ring of stages with a work item's tiles (each for any non-empty set of its three blocks)
and three consumers, one per block, each compute their own tiles one at a time and give back the others'.
Mbarriers with phase parities as PTX defines them, the producer's copies landing at random later times, random
interleavings: every tile must reach each consumer that computes it once, in order, after its copies landed; no
stage may be refilled while a P V can still read it; no schedule may deadlock. A mutation of the consumer shows
that the checks catch what they are for: `early` gives a stage back before its P V (refilled under it); `keep`
never gives the other blocks' tiles back (the producer runs out of stages: deadlock).
Run: python bench/stage_protocol_model.py [--mutation early|keep]
"""

import argparse
import random

STAGES = 6
BLOCKS = 3  # consumers: the work item's query blocks
MUTATIONS = ("early", "keep")


class Barrier:
    def __init__(self, count: int) -> None:
        self.count, self.arrived, self.completed = count, 0, 0

    def arrive(self) -> None:
        self.arrived += 1
        if self.arrived == self.count:
            self.arrived, self.completed = 0, self.completed + 1

    def done(self, parity: int) -> bool:  # mbarrier.try_wait.parity
        return self.completed % 2 != parity


class Deadlock(AssertionError):
    pass


def run(uses: list[int], rng: random.Random, mutation: str | None) -> None:
    full = [Barrier(2) for _ in range(STAGES)]  # per producer thread: copies landed, then stores released
    empty = [Barrier(BLOCKS) for _ in range(STAGES)]  # one arrival per consumer
    content: list = [None] * STAGES
    desc: list = [None] * STAGES  # (tile number, uses); uses 0 ends the walk
    landing: list[int] = []
    seen: list[list[int]] = [[] for _ in range(BLOCKS)]

    def producer():
        stage, phase = 0, 0
        for t, u in [*enumerate(uses), (len(uses), 0)]:
            while not empty[stage].done(phase ^ 1):
                yield
            desc[stage], content[stage] = (t, u), ("writing", t)
            landing.append(stage)
            full[stage].arrive()
            if not u:
                return
            stage += 1
            if stage == STAGES:
                stage, phase = 0, phase ^ 1

    def consumer(block: int):
        mine = 1 << block
        stage, phase = 0, 0
        while True:  # this block's tiles one at a time, the others' given back
            while not full[stage].done(phase):
                yield
            t, u = desc[stage]
            if not u:
                break
            if u & mine:
                assert content[stage] == ("landed", t)
                seen[block].append(t)
                if mutation == "early":
                    empty[stage].arrive()
                yield  # Q K^T, softmax, P V
                assert content[stage] == ("landed", t), "a stage was refilled under its P V"
                if mutation != "early":
                    empty[stage].arrive()
            elif mutation != "keep":
                empty[stage].arrive()
            stage += 1
            if stage == STAGES:
                stage, phase = 0, phase ^ 1

    agents = {"producer": producer(), **{f"consumer {i}": consumer(i) for i in range(BLOCKS)}}
    for _ in range(200_000):
        if not agents and not landing:
            break
        choice = rng.choice([*agents, *(["landing"] if landing else [])])
        if choice == "landing":
            stage = landing.pop(rng.randrange(len(landing)))
            content[stage] = ("landed", content[stage][1])
            full[stage].arrive()
        else:
            try:
                next(agents[choice])
            except StopIteration:
                del agents[choice]
    else:
        raise Deadlock(f"deadlock: {sorted(agents)} still waiting")
    for block in range(BLOCKS):
        expected = [t for t, u in enumerate(uses) if u & (1 << block)]
        assert seen[block] == expected, (block, seen[block], expected)


def random_uses(rng: random.Random) -> list[int]:
    """An item's merged tile order: runs of chunks shared by some blocks and of one block's own tiles."""
    uses: list[int] = []
    target = rng.randint(1, 24)
    while len(uses) < target:
        uses += [rng.randrange(1, 1 << BLOCKS)] * rng.randint(1, 8)
    return uses


def first_failure(schedules: int, mutation: str | None = None) -> tuple[int, str] | None:
    """The first of `schedules` random schedules that breaks the protocol, with what broke; None if none does."""
    rng = random.Random(0)
    for i in range(schedules):
        try:
            run(random_uses(rng), rng, mutation)
        except AssertionError as failure:
            return i, str(failure)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=20000)
    parser.add_argument("--mutation", choices=MUTATIONS)
    args = parser.parse_args()
    if args.mutation is None:
        failure = first_failure(args.schedules)
        if failure is not None:
            raise SystemExit(f"schedule {failure[0]}: {failure[1]}")
        print(
            f"{args.schedules} random schedules of {BLOCKS} consumers: each saw its tiles once, in order, landed; "
            "no stage refilled under a P V; no deadlock"
        )
        return
    failure = first_failure(args.schedules, args.mutation)
    if failure is None:
        raise SystemExit(f"--mutation {args.mutation} was not caught in {args.schedules} schedules")
    else:
        print(f"--mutation {args.mutation} caught on schedule {failure[0]}: {failure[1]}")


if __name__ == "__main__":
    main()
