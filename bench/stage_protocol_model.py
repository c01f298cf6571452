"""A model of the producer/consumer stage protocol of the sm_90a attention kernel (attention.cu: produce, consume).

Mbarriers with phase parities as PTX defines them, the producer's copies landing at random later times, random
interleavings: every tile must reach the consumer once, in order, after its copies landed, and no stage may be
refilled while its P V can still read it. Run: python bench/stage_protocol_model.py
"""

import random

STAGES = 3


class Barrier:
    def __init__(self, count: int) -> None:
        self.count, self.arrived, self.completed = count, 0, 0

    def arrive(self) -> None:
        self.arrived += 1
        if self.arrived == self.count:
            self.arrived, self.completed = 0, self.completed + 1

    def done(self, parity: int) -> bool:  # mbarrier.try_wait.parity
        return self.completed % 2 != parity


def run(tiles: int, rng: random.Random) -> None:
    full = [Barrier(2) for _ in range(STAGES)]  # per producer thread: copies landed, then stores released
    empty = [Barrier(1) for _ in range(STAGES)]
    content: list = [None] * STAGES
    desc: list = [None] * STAGES
    landing: list[int] = []
    seen: list[int] = []

    def producer():
        stage, phase = 0, 0
        for t in [*range(tiles), None]:
            while not empty[stage].done(phase ^ 1):
                yield
            desc[stage], content[stage] = t, ("writing", t)
            landing.append(stage)
            full[stage].arrive()
            if t is None:
                return
            stage += 1
            if stage == STAGES:
                stage, phase = 0, phase ^ 1

    def consumer():
        while not full[0].done(0):
            yield
        assert content[0] == ("landed", 0)
        seen.append(desc[0])
        pending, stage, phase = 0, 1, 0
        while True:
            if stage == 0:
                phase ^= 1
            while not full[stage].done(phase):
                yield
            tile = desc[stage]
            if tile is None:
                break
            assert content[stage] == ("landed", tile) and content[pending][0] == "landed"
            seen.append(tile)
            yield  # Q K^T, softmax, P V of the pending tile
            assert content[stage] == ("landed", tile) and content[pending][0] == "landed"
            empty[pending].arrive()
            pending, stage = stage, (stage + 1) % STAGES
        assert content[pending][0] == "landed"

    agents = {"producer": producer(), "consumer": consumer()}
    for _ in range(100_000):
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
        raise AssertionError("deadlock")
    assert seen == list(range(tiles)), seen


def main(schedules: int = 20000) -> None:
    rng = random.Random(0)
    for _ in range(schedules):
        run(rng.randint(1, 12), rng)
    print(f"{schedules} random schedules: every tile seen once, in order, landed; no stage refilled while in use")


if __name__ == "__main__":
    main()
