"""A convolution computed as one matrix product of image patches with the kernel.

Why: a population vmaps the student over members, each with its own kernels. `vmap` of
`lax.conv_general_dilated` with a batched kernel becomes a grouped convolution, which
XLA's CPU backend runs far slower than the members' convolutions one by one. Written
as patches × kernel, the member axis becomes the batch axis of a batched matrix product
(`dot_general`), which XLA runs at full speed; its gradients are matrix products and
pads too. For the small kernels (3×3, 1×1) and images (8×8–32×32) it is meant for, the
patch matrix is at most 9× the input.

`patch_conv` has `lax.conv_general_dilated`'s signature, so `models.create(...,
conv_impl=patch_conv)` uses it in every `flax.linen.Conv` (same parameters); anything
but a plain NHWC/HWIO convolution (dilation, groups) goes to `lax` unchanged.
"""
import jax.numpy as jnp
from jax import lax

_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                 out_spec=(0, 3, 1, 2))


def patch_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
               dimension_numbers=None, feature_group_count=1, batch_group_count=1,
               precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` as patches [B, H', W', kh·kw·C] @ kernel [kh·kw·C, O]."""
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  plain = (dn == _NHWC and lhs.ndim == 4 and feature_group_count == 1
           and batch_group_count == 1 and set(lhs_dilation or (1,)) == {1}
           and set(rhs_dilation or (1,)) == {1})
  if not plain:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    batch_group_count, precision, preferred_element_type)
  kh, kw, c_in, c_out = rhs.shape
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), window_strides, padding)
  x = jnp.pad(lhs, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  sh, sw = window_strides
  oh, ow = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
  # Patch features in (row, column, channel) order: the kernel's HWIO order reshaped.
  patches = jnp.concatenate(
      [x[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]
       for i in range(kh) for j in range(kw)], axis=-1)
  return jnp.dot(patches, rhs.reshape(kh * kw * c_in, c_out), precision=precision,
                 preferred_element_type=preferred_element_type)
