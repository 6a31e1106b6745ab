"""Crossing frameworks: PyTorch and safetensors checkpoints in, students out.

    pth_reader         a .pth read as data, never as code, without PyTorch
    safetensors_reader a .safetensors read after its whole header is checked
    torch_import       PyTorch names and layouts ↔ Flax variables; a file → orbax teacher
    zoo                known pretrained teachers, downloaded, verified, converted
    export             a run's student (or any teacher) → a PyTorch state_dict file

`oracle_jax.torch_import`, `oracle_jax.zoo` and `oracle_jax.export` re-export the public
names of these modules under their documented names (`python -m` works for each).
"""
