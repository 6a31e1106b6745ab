"""Crossing frameworks: PyTorch and safetensors checkpoints in, students out.

    pth_reader    a .pth read as data, never as code, without PyTorch
    torch_import  PyTorch names and layouts ↔ Flax variables; .pth → orbax teacher
    zoo           known pretrained teachers, downloaded, verified, converted
"""
