"""Train the demo's tiny Video Swin on the synthetic train split (deterministic).

    python -m harness.demo.train [--out harness/demo/swin_demo.pth] [--data DIR]

Generates the synthetic dataset (same generator and seed as the demo), decodes every
train video with the harness's own test-time pipeline (so training sees exactly the
views evaluation will), and trains on single views with AdamW. Everything is seeded
and runs on one thread, so a rerun writes the same weights on the same software
versions. The result is a checkpoint in the reference layout (``state_dict`` with
``backbone.*`` / ``cls_head.*``) that loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from harness import demo

log = logging.getLogger(__name__)


def decode_split(list_file: Path, videos: Path, cfg) -> tuple[np.ndarray, np.ndarray]:
    """All views of every listed video: uint8 ``[N*V, 3, T, H, W]`` and labels ``[N*V]``."""
    from harness.data import ViewDecoder, read_list

    decoder = ViewDecoder.from_config(cfg)
    entries = read_list(list_file, videos)
    views = np.stack([decoder(e.path) for e in entries])           # [N, V, 3, T, H, W]
    labels = np.repeat([e.label for e in entries], decoder.views)
    return views.reshape(-1, *views.shape[2:]), labels


def train(out: Path, data_dir: Path, epochs: int = 12, batch: int = 16, lr: float = 2e-3,
          seed: int = 0) -> dict:
    import torch

    from harness import config, model as swin

    torch.manual_seed(seed)
    torch.set_num_threads(1)  # determinism: reductions do not depend on the thread count
    torch.use_deterministic_algorithms(True)
    cfg = config.load_config(demo.DEMO_CONFIG)
    dataset = demo.make_demo_dataset(data_dir)
    started = time.perf_counter()
    views, labels = decode_split(dataset.train_list, dataset.videos, cfg)
    val_views, val_labels = decode_split(dataset.val_list, dataset.videos, cfg)
    log.info("decoded %d train and %d val views in %.1f s", len(views), len(val_views),
             time.perf_counter() - started)

    norm = config.normalization(cfg)

    def normalized(batch_u8: np.ndarray) -> torch.Tensor:
        # [N, 3, T, H, W] uint8 -> the model's [B=N, V=1, 3, T, H, W] float input
        return norm.apply(torch.from_numpy(batch_u8), channel_axis=1).unsqueeze(1)

    net = swin.build(config.model_section(cfg))
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.02)
    steps = epochs * ((len(views) + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    targets = torch.from_numpy(labels).long()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(views), generator=generator)
        losses = []
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            logits = net(normalized(views[idx.numpy()]))
            loss = torch.nn.functional.cross_entropy(logits, targets[idx])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)  # no blow-ups at peak lr
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        log.info("epoch %d: loss %.4f", epoch + 1, float(np.mean(losses)))

    net.eval()
    with torch.inference_mode():
        logits = torch.cat([net(normalized(val_views[i:i + 64])) for i in range(0, len(val_views), 64)])
    from harness.scores import average_views, top_k_accuracy

    views_per_video = config.clip_geometry(cfg).views
    scores = average_views(logits.numpy(), views_per_video, config.average_clips(cfg))
    val_top1 = top_k_accuracy(scores, val_labels[::views_per_video], 1)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save({"state_dict": state, "meta": {"trained_by": "harness.demo.train", "seed": seed,
                                              "epochs": epochs, "val_top1": val_top1}}, tmp)
    tmp.replace(out)
    result = {"val_top1": val_top1, "seconds": time.perf_counter() - started,
              "bytes": out.stat().st_size}
    log.info("wrote %s (%d bytes): held-out top-1 %.3f in %.0f s", out, result["bytes"], val_top1,
             result["seconds"])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.demo.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=demo.DEMO_CHECKPOINT)
    parser.add_argument("--data", type=Path, default=None,
                        help="where the synthetic dataset goes (default: the demo's cache)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train(args.out, args.data or demo.demo_data_dir(), epochs=args.epochs, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
