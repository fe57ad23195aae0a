"""Read the operator list of a ``.tflite`` flatbuffer without building an interpreter.

Used to check that an int8 export is really integer-only (the converter silently keeps ops
without an int8 kernel in float32), to report which ops a file contains, to tell whether the
output is probabilities (the last op is SOFTMAX / LOGISTIC) and whether the file keeps state
between invocations (variable tensors, e.g. the LSTM states of a fused recurrent op).
"""

import collections

from ai_edge_litert import schema_py_generated as schema

__all__ = ["list_ops", "op_counts", "float_ops", "output_kind", "has_state"]

_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_TYPE_NAMES = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
# Ops that convert between float and integer at the edges of a quantized graph.
_CONVERSION_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})
# Ops that end a classifier with probabilities, ops that only move or re-encode their input,
# and ops whose output is an affine / arithmetic score (logits).
_PROBABILITY_OPS = frozenset({"SOFTMAX", "LOGISTIC"})
_PASSTHROUGH_OPS = _CONVERSION_OPS | {"RESHAPE", "SQUEEZE", "CAST", "EXPAND_DIMS", "STRIDED_SLICE", "IDENTITY"}
_LOGIT_OPS = frozenset({"FULLY_CONNECTED", "ADD", "SUB", "MUL", "CONV_2D", "DEPTHWISE_CONV_2D", "BATCH_MATMUL",
                        "MEAN", "SUM", "CONCATENATION", "AVERAGE_POOL_2D", "MAX_POOL_2D", "REDUCE_MAX",
                        "UNIDIRECTIONAL_SEQUENCE_LSTM", "UNIDIRECTIONAL_SEQUENCE_RNN", "WHILE", "GATHER"})
_STATE_OPS = frozenset({"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE"})


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


def _graph(model_bytes):
    return schema.Model.GetRootAs(bytearray(model_bytes), 0)


def output_kind(model_bytes):
    """What the file's (first) output holds, read off the op that produces it.

    Returns:
        ``"probabilities"`` when the output comes from SOFTMAX or LOGISTIC (through
        quantize / reshape ops only), ``"logits"`` when it comes from an affine or arithmetic
        op, ``None`` when the op list does not say.
    """
    model = _graph(model_bytes)
    graph = model.Subgraphs(0)
    if not graph.OutputsLength():
        return None
    producers = {}
    for j in range(graph.OperatorsLength()):
        op = graph.Operators(j)
        for t in (op.OutputsAsNumpy() if op.OutputsLength() else []):
            producers[int(t)] = op
    tensor = int(graph.Outputs(0))
    for _ in range(graph.OperatorsLength() + 1):
        op = producers.get(tensor)
        if op is None:
            return None
        name = _op_name(model, op.OpcodeIndex())
        if name in _PROBABILITY_OPS:
            return "probabilities"
        if name in _PASSTHROUGH_OPS and op.InputsLength():
            tensor = int(op.Inputs(0))
            continue
        return "logits" if name in _LOGIT_OPS else None
    return None


def has_state(model_bytes):
    """True when the file keeps values between invocations (variable tensors or resource
    variables), so each independent run must start with ``interpreter.reset_all_variables()``."""
    model = _graph(model_bytes)
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        if any(graph.Tensors(i).IsVariable() for i in range(graph.TensorsLength())):
            return True
    return any(_op_name(model, i) in _STATE_OPS for i in range(model.OperatorCodesLength()))
