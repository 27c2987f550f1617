"""``python -m harness.sweep``: the fastest build that keeps the accuracy, in one command.

    python -m harness.sweep --config configs/swin_small_k400.py --checkpoint swin_small.pth --npus 1 \\
        --vary precision_mode=force_fp16,allow_mix_precision,must_keep_origin_dtype

Each variant (a combination of build or torch options) is built (cached by hash), benchmarked
(bench loops: the device's videos/s) and evaluated on the same videos (``--subset 200``
stratified by default) with every evaluated video audited against the fp32 reference; the
fastest variant that keeps the accuracy is recommended, with the command that runs it.

- :mod:`harness.sweep.variants`: the keys, their values, the variants (``--vary``, ``--variants``).
- :mod:`harness.sweep.driver`: each variant a harness.run run in its own folder; resume.
- :mod:`harness.sweep.measure`: the numbers of a variant, pass or fail and why, the answer.
- :mod:`harness.sweep.page`: sweep.html (the table, speed against agreement).
- :mod:`harness.sweep.cli`: the command line and the terminal table.
"""
