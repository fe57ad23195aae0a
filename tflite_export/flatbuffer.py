"""Read the operator list of a ``.tflite`` flatbuffer without building an interpreter.

Used to check that an int8 export is really integer-only (the converter silently keeps ops
without an int8 kernel in float32) and to report which ops a file contains.
"""

import collections

from ai_edge_litert import schema_py_generated as schema

__all__ = ["list_ops", "op_counts", "float_ops"]

_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_TYPE_NAMES = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
# Ops that convert between float and integer at the edges of a quantized graph.
_CONVERSION_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})


def _op_name(model, opcode_index):
    code = model.OperatorCodes(opcode_index)
    # Builtin codes above 127 live in BuiltinCode(); older files only fill the deprecated field.
    builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    if builtin == schema.BuiltinOperator.CUSTOM:
        return f"CUSTOM:{code.CustomCode().decode()}"
    return _OP_NAMES.get(builtin, f"OP_{builtin}")


def list_ops(model_bytes):
    """Operators of the main subgraph, in execution order.

    Args:
        model_bytes: the content of a ``.tflite`` file (trusted: produced by the converter).

    Returns:
        A list of dicts ``{"op", "inputs", "outputs"}`` where inputs and outputs are lists of
        ``(tensor_name, dtype_name)`` (optional inputs are left out).

    Example:
        >>> ops = list_ops(open("model.tflite", "rb").read())  # doctest: +SKIP
        >>> ops[0]["op"]  # doctest: +SKIP
        'CONV_2D'
    """
    model = schema.Model.GetRootAs(bytearray(model_bytes), 0)
    graph = model.Subgraphs(0)

    def tensors(indices):
        out = []
        for i in indices:
            if i < 0:
                continue
            t = graph.Tensors(int(i))
            out.append((t.Name().decode(errors="replace"), _TYPE_NAMES.get(t.Type(), str(t.Type()))))
        return out

    ops = []
    for j in range(graph.OperatorsLength()):
        op = graph.Operators(j)
        ops.append({
            "op": _op_name(model, op.OpcodeIndex()),
            "inputs": tensors(op.InputsAsNumpy() if op.InputsLength() else []),
            "outputs": tensors(op.OutputsAsNumpy() if op.OutputsLength() else []),
        })
    return ops


def op_counts(model_bytes):
    """``{op_name: count}`` over the main subgraph."""
    return dict(collections.Counter(op["op"] for op in list_ops(model_bytes)))


def float_ops(model_bytes):
    """Ops (other than QUANTIZE/DEQUANTIZE) that read or write float tensors.

    In a full-integer model this list is empty; anything in it runs in float32 on the CPU.
    """
    found = []
    for op in list_ops(model_bytes):
        if op["op"] in _CONVERSION_OPS:
            continue
        if any(dtype.startswith("float") for _, dtype in op["inputs"] + op["outputs"]):
            found.append(op)
    return found
