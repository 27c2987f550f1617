# The demo's model: a tiny Video Swin (same architecture and test pipeline steps as
# Swin-S, scaled down) for the 8-class synthetic action dataset that
# `python -m harness.run --demo` generates. Its weights, swin_demo.pth beside this file,
# come from `python -m harness.demo.train` (deterministic; see that module).
model = dict(
    type='Recognizer3D',
    backbone=dict(
        type='SwinTransformer3D',
        patch_size=(2, 4, 4),
        embed_dim=24,
        depths=[1, 1, 2, 1],
        num_heads=[1, 2, 3, 4],
        window_size=(4, 7, 7),
        mlp_ratio=2.,
        qkv_bias=True,
        qk_scale=None,
        drop_rate=0.,
        attn_drop_rate=0.,
        drop_path_rate=0.,
        patch_norm=True),
    cls_head=dict(
        type='I3DHead',
        in_channels=192,
        num_classes=8,
        spatial_type='avg',
        dropout_ratio=0.),
    test_cfg=dict(average_clips='prob'))

img_norm_cfg = dict(
    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_bgr=False)
test_pipeline = [
    dict(type='DecordInit'),
    dict(type='SampleFrames', clip_len=8, frame_interval=4, num_clips=2, test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 64)),
    dict(type='ThreeCrop', crop_size=64),
    dict(type='Flip', flip_ratio=0),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='Collect', keys=['imgs', 'label'], meta_keys=[]),
    dict(type='ToTensor', keys=['imgs'])
]
# The demo points these at the dataset it generates (see harness/demo/__init__.py).
data = dict(
    test=dict(
        type='VideoDataset',
        ann_file='val_list.txt',
        data_prefix='videos',
        pipeline=test_pipeline))

# The class names of the synthetic dataset (its label_map.txt), for reports of any run of
# this config, with or without --demo.
harness = dict(build=dict(input_dtype='uint8', batch=1),
               label_map='{{ fileDirname }}/label_map.txt')
