"""Decode speed per worker: videos from local files vs the same files from an S3 server.

    python benchmarks/storage.py [--videos 8] [--repeats 5] [--latency-ms 0 20] [--check]

Kinetics-like synthetic videos (profile k400: 340x256, 10 s, 30 fps H.264) are decoded to
the Swin-S views (configs/swin_small_k400.py: 4 clips x 3 crops x 32 frames) by one decode
worker (``stages.DecodeWorker``, in this process, one decode at a time) from the local files
and from the same files in a moto S3 server on 127.0.0.1 (tests/s3_support.py; a real HTTP
server in its own process, reached through pyarrow's S3 client as the decode workers reach
OBS or MinIO), in turns: files; S3 one call at a time; S3 with ``READ_AHEAD`` calls at once,
as a run's workers read object storage (the next read overlaps a decode). It prints the
median videos/s of each and their ratios to the files' (target for the run's way: >= 0.9).
The views from S3 must equal the files', else it fails. ``--check`` also fails when the target
is missed at the first ``--latency-ms`` (0: the local server as it is). Each further value
puts a relay in front of the server that holds every request that long (a store farther
away: each video costs a HEAD and a GET). Needs ``moto[server]`` (the test extras).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy/cv2 load their thread pools

import argparse  # noqa: E402
import contextlib  # noqa: E402
import platform  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from harness.config import load_config, test_pipeline  # noqa: E402
from harness.data import ViewDecoder, read_list, storage  # noqa: E402
from harness.data.storage import StorageOptions  # noqa: E402
from harness.data.synthetic import make_dataset  # noqa: E402
from harness.stages import READ_AHEAD, DecodeWorker  # noqa: E402
from s3_support import CREDENTIALS, S3Server  # noqa: E402

TARGET = 0.9


class DelayingRelay:
    """127.0.0.1:port -> the server, holding each chunk a client sends (a request) ``delay_s``."""

    def __init__(self, target_port: int, delay_s: float) -> None:
        self.target, self.delay_s = target_port, delay_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(client, server, self.delay_s), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, 0.0), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, delay_s: float) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                if delay_s:
                    time.sleep(delay_s)
                sink.sendall(data)
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


def measure(decoder: ViewDecoder, paths: list[str], remote: dict, repeats: int) -> dict[str, float]:
    """Videos/s of one decode worker (stages.DecodeWorker, in this process, 300 s timeout as
    in a run) over the videos: from the files; from the store one call at a time; from the
    store with READ_AHEAD calls at once (a run's worker on object storage). Medians."""
    for path in paths:   # correctness first (also warms caches and the connection pool)
        local = decoder(path).copy()
        if not np.array_equal(local, decoder(remote[path])):
            raise SystemExit(f"FAIL: views from S3 differ from the file's for {path}")
    worker = DecodeWorker(decoder, metrics=False)
    runs = {"file": ([p for p in paths], 1), "s3": ([remote[p] for p in paths], 1),
            "s3 read-ahead": ([remote[p] for p in paths], READ_AHEAD)}
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(repeats):
        for name in list(runs)[rep % 3:] + list(runs)[:rep % 3]:    # rotate who goes first
            videos, calls = runs[name]
            with ThreadPoolExecutor(calls) as pool:
                start = time.perf_counter()
                statuses = list(pool.map(lambda v: worker.decode(0, v, 300.0)[0], videos))
                rates[name].append(len(videos) / (time.perf_counter() - start))
            if not all(s.ok for s in statuses):
                raise SystemExit(f"FAIL: {name}: {[s for s in statuses if not s['ok']][:1]}")
    return {name: statistics.median(values) for name, values in rates.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=str(REPO / "build" / "bench" / "k400_videos"))
    parser.add_argument("--config", default=str(REPO / "configs" / "swin_small_k400.py"))
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 20.0],
                        help="added to each request by a relay (default: 0 20)")
    parser.add_argument("--check", action="store_true", help=f"exit 1 if the ratio is below {TARGET}")
    args = parser.parse_args(argv)

    cv2.setNumThreads(1)
    os.environ.update(CREDENTIALS)
    ds = make_dataset(args.dir, classes=min(args.videos, 16), per_class=-(-args.videos // min(args.videos, 16)),
                      seed=0, profile="k400", train_per_class=0)
    paths = [e.path for e in read_list(ds.val_list, ds.videos)][: args.videos]
    size = statistics.median(os.path.getsize(p) for p in paths) / 2**20
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs;"
          f" {len(paths)} videos ({size:.1f} MB median) x {args.repeats} repeats, one thread")
    print(f"{'added latency':>13} {'file':>7} {'S3':>7} {'S3 read-ahead':>14}   videos/s of one worker;"
          " ratios to file")
    ratios = []
    with S3Server() as server:
        uri = server.upload(ds.videos, "bench", "val")
        remote = {p: storage.join(uri, os.path.relpath(p, ds.videos)) for p in paths}
        for latency in args.latency_ms:
            relay = DelayingRelay(server.port, latency / 1000) if latency else None
            options = StorageOptions(endpoint_url=f"http://127.0.0.1:{relay.port if relay else server.port}")
            decoder = ViewDecoder(test_pipeline(load_config(args.config)), storage=options)
            rate = measure(decoder, paths, remote, args.repeats)
            if relay:
                relay.close()
            ratios.append(rate["s3 read-ahead"] / rate["file"])
            print(f"{latency:>10.0f} ms {rate['file']:>7.2f} {rate['s3']:>7.2f} {rate['s3 read-ahead']:>7.2f}"
                  f"   S3 {rate['s3'] / rate['file']:.3f}, read-ahead {ratios[-1]:.3f}")
    print(f"ratio S3 (read-ahead, as a run reads) / file videos/s at {args.latency_ms[0]:g} ms added:"
          f" {ratios[0]:.3f} (target >= {TARGET})")
    return 1 if args.check and ratios[0] < TARGET else 0


if __name__ == "__main__":
    sys.exit(main())
