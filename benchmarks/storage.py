"""Decode speed per worker: videos from local files vs the same files from an S3 server.

    python benchmarks/storage.py [--videos 8] [--repeats 5] [--dir build/bench/k400_videos] [--check]

Kinetics-like synthetic videos (profile k400: 340x256, 10 s, 30 fps H.264) are decoded to
the Swin-S views (configs/swin_small_k400.py: 4 clips x 3 crops x 32 frames) by one
``ViewDecoder`` in this process, one thread, alternately from the local file and from a
moto S3 server on 127.0.0.1 (tests/s3_support.py; a real HTTP server in its own process,
reached through pyarrow's S3 client as the decode workers reach OBS or MinIO). It prints the
median seconds per video of each, the median read alone (the GET into memory), and the
ratio of videos/s (S3 / local; target >= 0.9). The views must be identical, else it fails.
``--check`` also fails when the target is missed. Needs ``moto[server]`` (the test extras).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy/cv2 load their thread pools

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from s3_support import CREDENTIALS, S3Server  # noqa: E402

from harness.config import load_config, test_pipeline  # noqa: E402
from harness.data import ViewDecoder, read_list, storage  # noqa: E402
from harness.data.storage import StorageOptions  # noqa: E402
from harness.data.synthetic import make_dataset  # noqa: E402

TARGET = 0.9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=str(REPO / "build" / "bench" / "k400_videos"))
    parser.add_argument("--config", default=str(REPO / "configs" / "swin_small_k400.py"))
    parser.add_argument("--check", action="store_true", help=f"exit 1 if the ratio is below {TARGET}")
    args = parser.parse_args(argv)

    cv2.setNumThreads(1)
    os.environ.update(CREDENTIALS)
    ds = make_dataset(args.dir, classes=min(args.videos, 16), per_class=-(-args.videos // min(args.videos, 16)),
                      seed=0, profile="k400", train_per_class=0)
    paths = [e.path for e in read_list(ds.val_list, ds.videos)][: args.videos]
    with S3Server() as server:
        uri = server.upload(ds.videos, "bench", "val")
        options = StorageOptions(endpoint_url=server.endpoint)
        decoder = ViewDecoder(test_pipeline(load_config(args.config)), storage=options)
        remote = {p: storage.join(uri, os.path.relpath(p, ds.videos)) for p in paths}
        for path in paths:   # correctness first (also warms caches and the connection pool)
            local = decoder(path).copy()
            if not np.array_equal(local, decoder(remote[path])):
                print(f"FAIL: views from S3 differ from the file's for {path}")
                return 1
        times: dict[str, list[float]] = {"local": [], "s3": [], "read": []}
        for rep in range(args.repeats):
            for i, path in enumerate(paths):
                order = [("local", path), ("s3", remote[path])]
                for name, where in order if (rep + i) % 2 == 0 else order[::-1]:
                    start = time.perf_counter()
                    decoder(where)
                    times[name].append(time.perf_counter() - start)
                start = time.perf_counter()
                storage.fetch(remote[path], options)
                times["read"].append(time.perf_counter() - start)
    med = {name: statistics.median(values) for name, values in times.items()}
    ratio = med["local"] / med["s3"]
    size = statistics.median(os.path.getsize(p) for p in paths) / 2**20
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs;"
          f" {len(paths)} videos ({size:.1f} MB median) x {args.repeats} repeats, one thread")
    print(f"local file   {med['local'] * 1000:7.1f} ms/video  {1 / med['local']:6.2f} videos/s")
    print(f"S3 (moto)    {med['s3'] * 1000:7.1f} ms/video  {1 / med['s3']:6.2f} videos/s"
          f"   (of which the GET into memory: {med['read'] * 1000:.1f} ms)")
    print(f"ratio S3/local videos/s: {ratio:.3f} (target >= {TARGET})")
    return 1 if args.check and ratio < TARGET else 0


if __name__ == "__main__":
    sys.exit(main())
