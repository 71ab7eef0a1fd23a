"""Plan, launch and track K-instance LoRA training jobs (standard library + boto3 only).

See docs/fanout.md. Nothing here imports torch, diffusers, `train` or `container`.
"""
