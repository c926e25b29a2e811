"""Bad input raises what PyTorch raises: the same exception type and message (with 'torch.' read as
'tracefuse.'). Where tracefuse must say something else (types it does not hold, no CUDA backend)
the message is asserted on its own."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import tracefuse


def _raise(fn, m):
    with pytest.raises(Exception) as info:
        fn(m)
    return info.value


CASES = {
    "tril_1d": lambda m: m.ones(3).tril(),
    "triu_1d": lambda m: m.triu(m.ones(3)),
    # broadcasting and elementwise
    "broadcast": lambda m: m.ones(2, 3) + m.ones(2, 4),
    "broadcast_1d": lambda m: m.ones(3) * m.ones(4),
    "broadcast_cmp": lambda m: m.ones(2, 3) < m.ones(3, 2),
    "broadcast_where": lambda m: m.where(m.ones(2) > 0, m.ones(2), m.zeros(3)),
    "inplace_broadcast": lambda m: m.ones(2).add_(m.ones(3)),
    "inplace_output_shape": lambda m: m.ones(1).add_(m.ones(2)),
    "inplace_float_into_int": lambda m: m.ones(2, dtype=m.int64).add_(1.5),
    "inplace_tensor_float_into_int": lambda m: m.ones(2, dtype=m.int64).mul_(m.ones(2)),
    "bool_neg": lambda m: -m.tensor([True]),
    "bool_sub": lambda m: m.tensor([True]) - m.tensor([False]),
    "bool_sub_scalar": lambda m: m.tensor([True]) - 1,
    "bool_abs": lambda m: m.tensor([True]).abs(),
    "bool_relu": lambda m: m.tensor([True]).relu(),
    "bool_floordiv": lambda m: m.tensor([True]) // m.tensor([True]),
    "int_pow_negative": lambda m: m.tensor([2]) ** -1,
    "int_floordiv_zero": lambda m: m.tensor([2]) // 0,
    "int_remainder_zero": lambda m: m.tensor([2]) % 0,
    "rounding_mode": lambda m: m.tensor([2.0]).div(2, rounding_mode="x"),
    "clamp_no_bounds": lambda m: m.ones(2).clamp(),
    "where_int_condition": lambda m: m.where(m.tensor([1, 0]), m.ones(2), m.zeros(2)),
    "masked_fill_int_mask": lambda m: m.ones(2, 3).masked_fill(m.tensor([1, 0, 1]), 1.0),
    "masked_fill_shape": lambda m: m.ones(2, 3).masked_fill(m.ones(4) > 0, 1.0),
    "masked_fill_value_dims": lambda m: m.ones(2).masked_fill(m.ones(2) > 0, m.ones(2)),
    # matmul
    "mm_mismatch": lambda m: m.ones(2, 3) @ m.ones(4, 2),
    "dot_mismatch": lambda m: m.ones(3) @ m.ones(4),
    "mv_mismatch": lambda m: m.ones(2, 3) @ m.ones(4),
    "vm_mismatch": lambda m: m.ones(3) @ m.ones(4, 2),
    "bmm_mismatch": lambda m: m.ones(2, 2, 3) @ m.ones(2, 4, 2),
    "batched_2d_mismatch": lambda m: m.ones(2, 2, 3) @ m.ones(4, 2),
    "batched_1d_mismatch": lambda m: m.ones(2, 2, 3) @ m.ones(5),
    "1d_batched_mismatch": lambda m: m.ones(5) @ m.ones(2, 4, 3),
    "batch_broadcast": lambda m: m.ones(2, 3, 4) @ m.ones(3, 4, 2),
    "matmul_dtypes": lambda m: m.ones(2, 3) @ m.ones(3, 2, dtype=m.float64),
    "matmul_int_float": lambda m: m.ones(2, 3) @ m.ones(3, 2, dtype=m.int64),
    "matmul_0d": lambda m: m.tensor(1.0) @ m.ones(3),
    "mm_not_matrix": lambda m: m.ones(3).mm(m.ones(3, 2)),
    "mm_mat2": lambda m: m.ones(2, 3).mm(m.ones(3)),
    "mm_shapes": lambda m: m.ones(2, 3).mm(m.ones(4, 2)),
    "bmm_not_3d": lambda m: m.ones(2, 2, 3).bmm(m.ones(2, 3)),
    "bmm_batches": lambda m: m.ones(2, 2, 3).bmm(m.ones(3, 3, 2)),
    "mv_not_vector": lambda m: m.ones(2, 3).mv(m.ones(2, 3)),
    "dot_not_1d": lambda m: m.ones(3, 1).dot(m.ones(3)),
    # dims
    "sum_dim": lambda m: m.ones(2, 3).sum(2),
    "sum_neg_dim": lambda m: m.ones(2, 3).sum(-3),
    "transpose_dim": lambda m: m.ones(2, 3).transpose(0, 2),
    "unsqueeze_dim": lambda m: m.ones(2, 3).unsqueeze(3),
    "squeeze_dim": lambda m: m.ones(2, 3).squeeze(2),
    "size_dim": lambda m: m.ones(2, 3).size(2),
    "max_dim": lambda m: m.ones(2, 3).max(2),
    "softmax_like_dim": lambda m: m.ones(2, 3).cumsum(5),
    "scalar_dim": lambda m: m.tensor(1.0).sum(1),
    "repeated_dims": lambda m: m.ones(2, 3).sum(dim=(0, -2)),
    "permute_length": lambda m: m.ones(2, 3).permute(0),
    "permute_repeat": lambda m: m.ones(2, 3).permute(0, 0),
    "flatten_order": lambda m: m.ones(2, 3).flatten(1, 0),
    "t_3d": lambda m: m.ones(2, 3, 4).t(),
    # view and reshape
    "view_size": lambda m: m.ones(2, 3).view(4),
    "view_infer": lambda m: m.ones(2, 3).view(-1, 4),
    "view_two_infers": lambda m: m.ones(2, 3).view(-1, -1),
    "view_stride": lambda m: m.ones(2, 3).t().view(6),
    "reshape_size": lambda m: m.ones(2, 3).reshape(5),
    "reshape_negative": lambda m: m.ones(2, 3).reshape(-2, 3),
    "unflatten": lambda m: m.ones(3, 4).unflatten(1, (2, 3)),
    "expand_dims": lambda m: m.ones(2, 3).expand(3),
    "expand_size": lambda m: m.ones(2, 3).expand(3, 3),
    "expand_leading_minus_one": lambda m: m.ones(3).expand(-1, 3),
    "repeat_dims": lambda m: m.ones(2, 3).repeat(2),
    "narrow": lambda m: m.ones(2, 3).narrow(1, 2, 2),
    "split_sizes": lambda m: m.ones(2, 3).split([1, 2]),
    "chunk_zero": lambda m: m.ones(2, 3).chunk(0),
    "select_index": lambda m: m.ones(2, 3).select(1, 5),
    # data and dtypes
    "tensor_str": lambda m: m.tensor("abc"),
    "tensor_list_with_str": lambda m: m.tensor([1, "a"]),
    "tensor_none": lambda m: m.tensor(None),
    "tensor_list_with_none": lambda m: m.tensor([1, None]),
    "tensor_dict": lambda m: m.tensor({1: 2}),
    "tensor_object": lambda m: m.tensor(object()),
    "ragged": lambda m: m.tensor([[1, 2], [3]]),
    "ragged_deep": lambda m: m.tensor([[[1, 2]], [[3]]]),
    "ragged_scalar_row": lambda m: m.tensor([[1, 2], 3]),
    "ragged_list_in_ints": lambda m: m.tensor([1, [2, 3]]),
    "ragged_list_in_floats": lambda m: m.tensor([1.5, [2]]),
    "tensor_of_tensors": lambda m: m.tensor([m.tensor([1.0, 2.0]), m.tensor([3.0, 4.0])]),
    "overflow_uint8": lambda m: m.tensor([300], dtype=m.uint8),
    "overflow_int8_float": lambda m: m.tensor([127.9], dtype=m.int8),
    "nan_to_int": lambda m: m.tensor([float("nan")], dtype=m.int64),
    "numpy_float_to_int": lambda m: m.tensor(np.float32(1.5), dtype=m.int64),
    "numpy_bool_to_uint8": lambda m: m.tensor([np.bool_(True)], dtype=m.uint8),
    "from_numpy_list": lambda m: m.from_numpy([1, 2]),
    "full_str": lambda m: m.full((2,), "a"),
    "requires_grad_int": lambda m: m.tensor([1, 2], requires_grad=True),
    "requires_grad_int_factory": lambda m: m.zeros(2, dtype=m.int64, requires_grad=True),
    "requires_grad_int_setter": lambda m: m.tensor([1, 2]).requires_grad_(),
    "requires_grad_non_leaf": lambda m: (m.ones(2, requires_grad=True) * 2).requires_grad_(False),
    "mean_int": lambda m: m.tensor([1, 2]).mean(),
    "mean_int_dtype": lambda m: m.ones(2, 3).mean(dtype=m.int64),
    "var_int": lambda m: m.tensor([1, 2]).var(),
    "std_int": lambda m: m.tensor([1, 2]).std(),
    "norm_int": lambda m: m.tensor([1, 2]).norm(),
    "argmax_bool": lambda m: m.tensor([True, False]).argmax(),
    # scalars and truth values
    "item_many": lambda m: m.tensor([1, 2]).item(),
    "item_empty": lambda m: m.tensor([]).item(),
    "bool_many": lambda m: bool(m.tensor([1, 2])),
    "bool_empty": lambda m: bool(m.tensor([])),
    "int_many": lambda m: int(m.tensor([1, 2])),
    "float_many": lambda m: float(m.tensor([1.0, 2.0])),
    "len_0d": lambda m: len(m.tensor(1.0)),
    "iter_0d": lambda m: iter(m.tensor(1.0)),
    "numpy_requires_grad": lambda m: m.ones(2, requires_grad=True).numpy(),
    # cat and stack
    "cat_sizes": lambda m: m.cat([m.ones(2, 3), m.ones(2, 4)]),
    "cat_dims": lambda m: m.cat([m.ones(2, 3), m.ones(2)]),
    "cat_dim_range": lambda m: m.cat([m.ones(2, 3), m.ones(3, 3)], dim=2),
    "cat_empty_list": lambda m: m.cat([]),
    "cat_0d": lambda m: m.cat([m.ones(2), m.tensor(1.0)]),
    "cat_not_tensor": lambda m: m.cat([m.ones(2), [1.0]]),
    "stack_sizes": lambda m: m.stack([m.ones(2, 3), m.ones(2, 4)]),
    "stack_dims": lambda m: m.stack([m.ones(2, 3), m.ones(3)]),
    "stack_empty": lambda m: m.stack([]),
    "stack_dim_range": lambda m: m.stack([m.ones(2), m.ones(2)], dim=2),
    # indexing
    "index_row": lambda m: m.ones(2, 3)[2],
    "index_col": lambda m: m.ones(2, 3)[0, 3],
    "index_negative": lambda m: m.ones(2, 3)[-3],
    "index_too_many": lambda m: m.ones(2, 3)[0, 0, 0],
    "index_list": lambda m: m.ones(2, 3)[[0, 2]],
    "index_list_second": lambda m: m.ones(2, 3)[:, [3]],
    "index_lists": lambda m: m.ones(2, 3)[[0], [5]],
    "index_third_dim": lambda m: m.ones(2, 3, 4)[:, :, [7]],
    "index_pair_in_3d": lambda m: m.ones(2, 3, 4)[:, [0], [9]],
    "index_float_tensor": lambda m: m.ones(2, 3)[m.tensor([1.0])],
    "index_mask_shape": lambda m: m.ones(2, 3)[m.tensor([True, False, True])],
    "index_mask_second": lambda m: m.ones(2, 3)[:, m.tensor([True, False])],
    "setitem_row": lambda m: m.ones(2, 3).__setitem__(2, 1.0),
    "setitem_shape": lambda m: m.ones(2, 3).__setitem__(0, m.ones(4)),
    "setitem_list": lambda m: m.ones(2, 3).__setitem__([0, 5], 1.0),
    "setitem_python_list": lambda m: m.ones(2, 3).__setitem__(0, [1.0, 2.0, 3.0]),
    "setitem_numpy": lambda m: m.ones(3).__setitem__(slice(None), np.ones(3)),
    "setitem_advanced_dtype": lambda m: m.ones(3).__setitem__([0], m.ones(1, dtype=m.float64)),
    "gather_bounds": lambda m: m.ones(2, 3).gather(1, m.tensor([[3]])),
    "gather_negative": lambda m: m.ones(3).gather(0, m.tensor([-1])),
    "gather_dtype": lambda m: m.ones(2, 3).gather(1, m.tensor([[1.0]])),
    "gather_dims": lambda m: m.ones(2, 3).gather(1, m.tensor([1])),
    "gather_sizes": lambda m: m.ones(2, 3).gather(0, m.ones(2, 4, dtype=m.int64)),
    "scatter_bounds": lambda m: m.ones(2, 3).scatter(1, m.tensor([[3]]), 1.0),
    "scatter_src_dtype": lambda m: m.zeros(2, 2).scatter(1, m.tensor([[0]]), m.tensor([[1]])),
    "index_select_bounds": lambda m: m.ones(2, 3).index_select(1, m.tensor([3])),
    "index_select_negative": lambda m: m.ones(3).index_select(0, m.tensor([-1])),
    "index_select_matrix": lambda m: m.ones(2, 3).index_select(1, m.tensor([[0]])),
    "index_select_dtype": lambda m: m.ones(2, 3).index_select(1, m.tensor([0.0])),
    "index_select_list": lambda m: m.ones(2).index_select(0, [0]),
    "max_empty": lambda m: m.zeros(0).max(),
    "max_empty_dim": lambda m: m.zeros(0, 3).max(0),
    "amax_empty": lambda m: m.zeros(0, 3).amax(0),
    "amax_empty_all": lambda m: m.zeros(0, 3).amax(),
    "argmax_empty": lambda m: m.zeros(0, 3).argmax(),
    # factories
    "arange_zero_step": lambda m: m.arange(0, 10, 0),
    "arange_sign": lambda m: m.arange(10, 0, 1),
    "arange_int_fraction_step": lambda m: m.arange(0, 1, 0.1, dtype=m.int64),
    "randint_range": lambda m: m.randint(5, 2, (3,)),
    "linspace_steps": lambda m: m.linspace(0, 1, -1),
    "eye_negative": lambda m: m.eye(-1),
    "eye_negative_m": lambda m: m.eye(2, -1),
    "randperm_negative": lambda m: m.randperm(-1),
    "zeros_negative": lambda m: m.zeros(-1),
    "ones_negative": lambda m: m.ones(2, -1),
    "full_negative": lambda m: m.full((-1,), 2.0),
    "rand_negative": lambda m: m.rand(-1),
    "zeros_no_size": lambda m: m.zeros(),
    # autograd
    "backward_non_scalar": lambda m: m.ones(2, requires_grad=True).exp().backward(),
    "backward_no_grad": lambda m: m.ones(2).sum().backward(),
    "backward_shape": lambda m: m.ones(3, requires_grad=True).exp().backward(m.ones(2)),
    "inplace_leaf": lambda m: m.ones(2, requires_grad=True).add_(1),
    "inplace_leaf_view": lambda m: m.ones(2, requires_grad=True)[0].mul_(2),
    "hook_no_grad": lambda m: m.ones(2).register_hook(lambda g: g),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_error_as_torch(name):
    fn = CASES[name]
    theirs = _raise(fn, torch)
    ours = _raise(fn, tracefuse)
    assert type(ours) is type(theirs), (type(ours), type(theirs), str(ours), str(theirs))
    expected = str(theirs).replace("torch.", "tracefuse.")
    assert str(ours) == expected


@pytest.mark.parametrize("fn,leading", [
    (lambda m: setattr(m.ones(2), "grad", m.ones(3)),
     "attempting to assign a gradient of size '[3]' to a tensor of size '[2]'. Please ensure that the gradient and "
     "the tensor are the same size"),
    (lambda m: setattr(m.ones(2), "grad", m.ones(2, dtype=m.float64)),
     "attempting to assign a gradient with dtype 'double' to a tensor with grad_dtype 'Float'. The gradient must "
     "match the tensor's grad_dtype (defaults to the tensor's dtype)."),
    (lambda m: m.ones(2, requires_grad=True)[1:].detach_(), "Can't detach views in-place. Use detach() instead."),
])
def test_same_leading_message_as_torch(fn, leading):
    """PyTorch goes on about features tracefuse lacks (grad_dtype, DDP buckets); the leading part matches."""
    for m in (tracefuse, torch):
        with pytest.raises(RuntimeError, match="^" + re.escape(leading)):
            fn(m)


def test_backward_twice():
    for m in (tracefuse, torch):
        y = m.ones(2, requires_grad=True).exp().sum()
        y.backward()
        with pytest.raises(RuntimeError, match=re.escape("Trying to backward through the graph a second time")):
            y.backward()


def test_leaf_view_in_place_error_text():
    for m in (tracefuse, torch):
        x = m.ones(3, requires_grad=True)
        with pytest.raises(RuntimeError, match=re.escape(
                "a view of a leaf Variable that requires grad is being used in an in-place operation.")):
            x[0] = 2.0


# --- messages that must differ from PyTorch's -------------------------------------------------------

SUPPORTED = ("The only supported types are: float64, float32, float16, bfloat16, int64, int32, int16, int8, uint8, "
             "and bool.")


@pytest.mark.parametrize("array,name", [(np.array([1 + 2j]), "complex128"), (np.array([1], dtype=np.uint16), "uint16"),
                                        (np.array([1], dtype=np.uint32), "uint32"), (np.array(["a"]), "str_"),
                                        (np.array([1.0], dtype=np.complex64), "complex64"),
                                        (np.array([1], dtype=object), "object_")])
def test_unsupported_numpy_dtypes(array, name):
    """PyTorch holds complex and wide unsigned types; tracefuse does not and says which it holds."""
    message = f"can't convert np.ndarray of type numpy.{name}. {SUPPORTED}"
    for fn in (tracefuse.tensor, tracefuse.from_numpy, tracefuse.as_tensor):
        with pytest.raises(TypeError, match=re.escape(message)):
            fn(array)


def test_unsupported_python_complex():
    with pytest.raises(RuntimeError, match="Could not infer dtype of complex"):
        tracefuse.tensor(1 + 2j)


NO_CUDA = ("Cannot use device 'cuda:0': no CUDA backend is available (the CUDA driver reports no GPU). Use the "
           "'cpu' device, or set TRACEFUSE_CUDA=interpret to run CUDA tensors on Triton's interpreter.")


@pytest.mark.parametrize("fn", [
    lambda: tracefuse.zeros(2, device="cuda"), lambda: tracefuse.zeros(2).cuda(), lambda: tracefuse.zeros(2).to("cuda"),
    lambda: tracefuse.tensor([1.0], device="cuda:0"), lambda: tracefuse.ones(2).to(tracefuse.device("cuda", 0)),
    lambda: tracefuse.arange(3, device="cuda"), lambda: tracefuse.randn(2, device="cuda"),
    lambda: tracefuse.ones(2).cuda(0), lambda: tracefuse.ones(2).copy_(tracefuse.ones(2)).to("cuda:0"),
])
def test_cuda_requests_raise_a_clear_error(fn):
    with pytest.raises(RuntimeError, match=re.escape(NO_CUDA)):
        fn()


def test_bad_device_strings():
    with pytest.raises(RuntimeError, match=re.escape(
            "Expected one of cpu, cuda device type at start of device string: tpu")):
        tracefuse.zeros(2, device="tpu")
    for m in (tracefuse, torch):
        with pytest.raises(RuntimeError, match=re.escape("Invalid device string: 'cuda:x'")):
            m.device("cuda:x")
