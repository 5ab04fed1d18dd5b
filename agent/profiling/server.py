"""A small real model server for local trials: ``python -m agent.profiling.server --threads T --batch B``.

The "model" is a multi-layer perceptron in numpy (``layers`` dense layers of ``hidden`` units with ``tanh``): a
request is one input vector, a batch is a matrix product per layer. Requests arrive over TCP on 127.0.0.1 as
lines ``<id>\\n``; the server queues them, forms batches of up to ``--batch`` requests (waiting at most
``--max-wait-ms`` for a batch to fill), runs up to ``--threads`` batches at once on worker threads (numpy releases
the GIL in the matrix product; BLAS itself is kept to one thread per worker so ``threads`` is the parallelism),
and answers each request with ``<id>\\n`` when its batch is done.

On start it prints ``READY <port>`` on stdout. ``--memory-mb`` is the memory the server may use: a configuration
whose weights and batch activations need more exits with code 3 and ``out of memory`` on stderr (the trial
records a failed start). Any other configuration error exits with code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor

# one BLAS thread per worker: the worker threads are the parallelism the configuration sets
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402  (after the BLAS thread variables)
import numpy.typing as npt  # noqa: E402

from shadowscale.agent.profiling.batching import next_batch  # noqa: E402

EXIT_CONFIG = 2
EXIT_OOM = 3


class Model:
    """The MLP: ``layers`` weight matrices ``hidden × hidden`` (float32), deterministic from a seed."""

    def __init__(self, hidden: int, layers: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        scale = 1.0 / np.sqrt(hidden)
        self.weights = [(rng.standard_normal((hidden, hidden)) * scale).astype(np.float32) for _ in range(layers)]
        self.hidden = hidden

    def forward(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        for w in self.weights:
            x = np.tanh(x @ w)
        return x

    @staticmethod
    def memory_mb(hidden: int, layers: int, batch: int, threads: int) -> float:
        weights = layers * hidden * hidden * 4
        activations = threads * batch * hidden * 4 * 3
        return (weights + activations) / 2**20 + 40.0  # + the interpreter and numpy


class Server:
    def __init__(self, model: Model, batch: int, threads: int, max_wait_s: float) -> None:
        self.model = model
        self.batch = batch
        self.max_wait_s = max_wait_s
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="model")
        self.slots = asyncio.Semaphore(threads)
        self.queue: asyncio.Queue[tuple[bytes, asyncio.StreamWriter]] = asyncio.Queue()
        self.inputs = np.random.default_rng(1).standard_normal((batch, model.hidden)).astype(np.float32)
        self.running: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                await self.queue.put((line, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass

    async def batcher(self) -> None:
        while True:
            items = await next_batch(self.queue, self.batch, self.max_wait_s)
            await self.slots.acquire()
            task = asyncio.create_task(self.run(items))
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def run(self, items: list[tuple[bytes, asyncio.StreamWriter]]) -> None:
        try:
            x = self.inputs[: len(items)]
            await asyncio.get_running_loop().run_in_executor(self.pool, self.model.forward, x)
        finally:
            self.slots.release()
        for line, writer in items:
            if not writer.is_closing():
                writer.write(line)


async def serve(args: argparse.Namespace) -> None:
    model = Model(args.hidden, args.layers)
    server = Server(model, args.batch, args.threads, args.max_wait_ms / 1000.0)
    tcp = await asyncio.start_server(server.handle, "127.0.0.1", args.port)
    port = tcp.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    batcher = asyncio.create_task(server.batcher())
    async with tcp:
        await tcp.serve_forever()
    batcher.cancel()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m agent.profiling.server", description=__doc__)
    p.add_argument("--threads", type=int, required=True, help="batches computed at once (worker threads)")
    p.add_argument("--batch", type=int, required=True, help="largest batch")
    p.add_argument("--hidden", type=int, default=512, help="units per layer (default 512)")
    p.add_argument("--layers", type=int, default=4, help="dense layers (default 4)")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="longest wait for a batch to fill (default 2)")
    p.add_argument("--memory-mb", type=float, default=0.0, help="memory limit; 0 = none")
    p.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: any free one)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(argv)
    except SystemExit as e:
        return EXIT_CONFIG if e.code else 0
    if args.threads < 1 or args.batch < 1 or args.hidden < 1 or args.layers < 1 or args.max_wait_ms < 0:
        print("configuration error: threads, batch, hidden and layers must be >= 1", file=sys.stderr)
        return EXIT_CONFIG
    need = Model.memory_mb(args.hidden, args.layers, args.batch, args.threads)
    if args.memory_mb and need > args.memory_mb:
        print(f"out of memory: needs {need:.0f} MiB, limit {args.memory_mb:.0f} MiB", file=sys.stderr)
        return EXIT_OOM
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
