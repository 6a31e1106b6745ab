"""oracle_jax: oracle knowledge distillation (Lee et al., BMVC 2023) in JAX/Flax."""
__version__ = '0.1.0'
