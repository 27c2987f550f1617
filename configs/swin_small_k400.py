# Video Swin-S (patch 2x4x4, window 8x7x7) on Kinetics-400, 4 clips x 3 crops.
# A self-contained equivalent of the reference repository's
# configs/recognition/swin/swin_small_patch244_window877_kinetics400_1k.py
# (its _base_ files merged in; training settings left out), plus the harness's own section.
model = dict(
    type='Recognizer3D',
    backbone=dict(
        type='SwinTransformer3D',
        patch_size=(2, 4, 4),
        embed_dim=96,
        depths=[2, 2, 18, 2],
        num_heads=[3, 6, 12, 24],
        window_size=(8, 7, 7),
        mlp_ratio=4.,
        qkv_bias=True,
        qk_scale=None,
        drop_rate=0.,
        attn_drop_rate=0.,
        drop_path_rate=0.1,
        patch_norm=True),
    cls_head=dict(
        type='I3DHead',
        in_channels=768,
        num_classes=400,
        spatial_type='avg',
        dropout_ratio=0.5),
    test_cfg=dict(average_clips='prob', max_testing_views=4))

dataset_type = 'VideoDataset'
data_root_val = 'data/kinetics400/val'
ann_file_test = 'data/kinetics400/kinetics400_val_list.txt'
img_norm_cfg = dict(
    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_bgr=False)
test_pipeline = [
    dict(type='DecordInit'),
    dict(type='SampleFrames', clip_len=32, frame_interval=2, num_clips=4, test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 224)),
    dict(type='ThreeCrop', crop_size=224),
    dict(type='Flip', flip_ratio=0),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='Collect', keys=['imgs', 'label'], meta_keys=[]),
    dict(type='ToTensor', keys=['imgs'])
]
data = dict(
    test=dict(
        type=dataset_type,
        ann_file=ann_file_test,
        data_prefix=data_root_val,
        pipeline=test_pipeline))

# The harness's own section (reference configs have none and get these defaults).
harness = dict(
    build=dict(
        input_dtype='uint8',       # 'float32' gives the Ascend guide's normalized-input contract
        batch=1,
        views_per_call=None,       # None: all 12 views per call, like the guide's .om
        opset=17,
        soc_version='Ascend310P3',
        precision_mode=None),
    sampling='reference',          # 'mmaction2-1.x' for parity with mmaction2 1.2.0
)
