"""A model of the stage protocol of the sm_90a attention kernel (attention.cu: produce, consume).

One producer fills a ring of stages with a pair's tiles (each for block 0, block 1 or both) and two consumers,
one per block, each compute their own tiles and give back the other's; at head_dim 128 two at a time where the
second is in the stage right after the first (not past the ring's end, so their K rows are one 128-row operand),
at head_dim 64 one at a time. Mbarriers with phase parities as PTX
defines them, the producer's copies landing at random later times, random interleavings: every tile must reach
each consumer that computes it once, in order, after its copies landed; no stage may be refilled while a P V
can still read it; two tiles computed together must sit in adjacent stages; no schedule may deadlock. A
mutation of the consumer shows that the checks catch what they are for: `early` gives a stage back before its
P V (refilled under it); `wrap` pairs the last stage with the first; `keep` never gives the other block's tiles
back (the producer runs out of stages: deadlock). (Looking one stage ahead, a consumer holding one stage never
waits for a stage the producer could fill only with it back.)
Run: python bench/stage_protocol_model.py [--mutation early|wrap|keep]
"""

import argparse
import random

STAGES = 6
FIRST, SECOND = 1, 2
MUTATIONS = ("early", "wrap", "keep")


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


def run(uses: list[int], rng: random.Random, mutation: str | None, pairs: bool = True) -> None:
    full = [Barrier(2) for _ in range(STAGES)]  # per producer thread: copies landed, then stores released
    empty = [Barrier(2) for _ in range(STAGES)]  # one arrival per consumer
    content: list = [None] * STAGES
    desc: list = [None] * STAGES  # (tile number, uses); uses 0 ends the walk
    landing: list[int] = []
    seen: list[list[int]] = [[], []]

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

    def consumer(half: int):
        mine = FIRST << half
        stage, phase = 0, 0

        def next_stage():
            nonlocal stage, phase
            stage += 1
            if stage == STAGES:
                stage, phase = 0, phase ^ 1

        def landed(s: int, tile: int) -> bool:
            return content[s] == ("landed", tile)

        def wait_full():
            while not full[stage].done(phase):
                yield

        while True:  # this block's tiles, two at a time where they sit in adjacent stages; the other's given back
            yield from wait_full()
            t, u = desc[stage]
            if not u:
                break
            if not u & mine:
                if mutation != "keep":
                    empty[stage].arrive()
                next_stage()
                continue
            held = [(stage, t)]
            next_stage()
            if pairs and (stage != 0 or mutation == "wrap"):
                yield from wait_full()
                t, u = desc[stage]
                if u & mine:
                    held.append((stage, t))
                    next_stage()
                # else the other block's tile or the end, met again above
            if len(held) == 2:
                assert held[1][0] == held[0][0] + 1, "a 128-key tile read two stages that are not adjacent"
            for s, t in held:
                assert landed(s, t)
                seen[half].append(t)
            if mutation == "early":
                for s, _ in held:
                    empty[s].arrive()
            yield  # both Q K^T, one softmax, both P V
            for s, t in held:
                assert landed(s, t), "a stage was refilled under its P V"
            if mutation != "early":
                for s, _ in held:
                    empty[s].arrive()

    agents = {"producer": producer(), "consumer 0": consumer(0), "consumer 1": consumer(1)}
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
    for half in range(2):
        expected = [t for t, u in enumerate(uses) if u & (FIRST << half)]
        assert seen[half] == expected, (half, seen[half], expected)


def random_uses(rng: random.Random) -> list[int]:
    """A pair's merged tile order: runs of shared chunks and of either block's own tiles."""
    uses: list[int] = []
    target = rng.randint(1, 24)
    while len(uses) < target:
        uses += [rng.choice([FIRST, SECOND, FIRST | SECOND])] * rng.randint(1, 8)
    return uses


def first_failure(schedules: int, mutation: str | None = None, pairs: bool = True) -> tuple[int, str] | None:
    """The first of `schedules` random schedules that breaks the protocol, with what broke; None if none does.
    pairs=False is the head_dim 64 consumer, one tile at a time."""
    rng = random.Random(0)
    for i in range(schedules):
        try:
            run(random_uses(rng), rng, mutation, pairs)
        except AssertionError as failure:
            return i, str(failure)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=20000)
    parser.add_argument("--mutation", choices=MUTATIONS)
    args = parser.parse_args()
    if args.mutation is None:
        for pairs in (True, False):
            failure = first_failure(args.schedules, None, pairs)
            if failure is not None:
                raise SystemExit(f"{'pairs' if pairs else 'single tiles'}, schedule {failure[0]}: {failure[1]}")
        print(
            f"{args.schedules} random schedules, with pairs and with single tiles: each consumer saw its tiles once, "
            "in order, landed; pairs in adjacent stages; no stage refilled under a P V; no deadlock"
        )
        return
    failure = first_failure(args.schedules, args.mutation)
    if failure is None:
        raise SystemExit(f"--mutation {args.mutation} was not caught in {args.schedules} schedules")
    else:
        print(f"--mutation {args.mutation} caught on schedule {failure[0]}: {failure[1]}")


if __name__ == "__main__":
    main()
