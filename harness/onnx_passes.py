"""The build's own ONNX graph passes, each with its reason. The build verifies outputs after them.

Only one problem needs passes: an opset below the exporter's own. PyTorch's dynamo exporter
writes opset 18+ graphs; asked for less it calls ONNX's version converter before constant
folding, which fails on this model, and ONNX's converter (1.23) cannot take Pad, Split or
ReduceMean below 18 at all.  So the build exports at opset 18, simplifies with onnxsim (axes and
split sizes become constants), and then :func:`convert_opset` rewrites the few ops whose
signature changed, op by op, and relabels the graph:

- opset < 18: Reduce* (not ReduceSum) take ``axes`` as an attribute, not an input; Pad has no
  ``axes`` input; Split has no ``num_outputs`` (it splits evenly by the number of outputs);
  ``noop_with_empty_axes`` must be 0 and is dropped.
- opset < 17: LayerNormalization does not exist: rewritten as ReduceMean / Sub / Mul / ReduceMean
  / Add / Sqrt / Div / Mul / Add (the same formula, :func:`decompose_layer_norm`).
- opset < 14: Reshape has no ``allowzero`` (dropped when 0, or when the constant shape has no 0).
- opset < 13: ReduceSum, Split, Squeeze, Unsqueeze take axes/split as attributes; Softmax
  is accepted only over the last axis (where opset 11's 2-D coercion gives the same result).

Anything else whose schema is newer than the target fails with a message; the checker and the
build's onnxruntime-vs-PyTorch verification confirm the result.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

# Kept in float32 by :func:`to_float16`: normalizations, softmax and reductions accumulate over
# many values (float16's 11-bit mantissa loses them), exp/pow/sqrt/erf overflow or lose range.
FLOAT32_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Erf", "Exp")

EXPORT_OPSET = 18     # the lowest opset the dynamo exporter writes without its own conversion


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def decompose_layer_norm(model: onnx.ModelProto) -> int:
    """Rewrite every LayerNormalization node (last-axis, single output) as elementary ops.

    Returns the number of nodes rewritten.  Reason: opsets below 17 have no LayerNormalization.
    """
    graph = model.graph
    out_nodes = []
    count = 0
    for node in graph.node:
        if node.op_type != "LayerNormalization" or node.domain not in ("", "ai.onnx"):
            out_nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis, eps = attrs.get("axis", -1), attrs.get("epsilon", 1e-5)
        if axis != -1 or len([o for o in node.output if o]) != 1:
            raise ValueError(f"LayerNormalization {node.name!r} with axis={axis} or extra outputs"
                             " is not supported by the opset<17 rewrite")
        x, scale = node.input[0], node.input[1]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        p = f"{node.name or 'ln'}_{count}"
        eps_name = f"{p}_eps"
        graph.initializer.append(numpy_helper.from_array(np.array(eps, np.float32), eps_name))
        scaled = f"{p}_scaled" if bias else node.output[0]
        out_nodes += [
            helper.make_node("ReduceMean", [x], [f"{p}_mean"], axes=[-1], keepdims=1),
            helper.make_node("Sub", [x, f"{p}_mean"], [f"{p}_d"]),
            helper.make_node("Mul", [f"{p}_d", f"{p}_d"], [f"{p}_d2"]),
            helper.make_node("ReduceMean", [f"{p}_d2"], [f"{p}_var"], axes=[-1], keepdims=1),
            helper.make_node("Add", [f"{p}_var", eps_name], [f"{p}_vareps"]),
            helper.make_node("Sqrt", [f"{p}_vareps"], [f"{p}_std"]),
            helper.make_node("Div", [f"{p}_d", f"{p}_std"], [f"{p}_norm"]),
            helper.make_node("Mul", [f"{p}_norm", scale], [scaled]),
        ]
        if bias:
            out_nodes.append(helper.make_node("Add", [scaled, bias], [node.output[0]]))
        count += 1
    del graph.node[:]
    graph.node.extend(out_nodes)
    return count


def _set_opset(model: onnx.ModelProto, version: int) -> None:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = version


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _input_to_attribute(node: onnx.NodeProto, index: int, attr: str, consts: dict) -> None:
    """Move constant input ``index`` of ``node`` into attribute ``attr`` (an int list)."""
    if len(node.input) <= index or not node.input[index]:
        return
    name = node.input[index]
    if name not in consts:
        raise ValueError(f"{node.op_type} {node.name!r}: input {name!r} is not a constant, so it"
                         f" cannot become the '{attr}' attribute of a lower opset")
    node.attribute.append(helper.make_attribute(attr, [int(v) for v in consts[name].reshape(-1)]))
    del node.input[index:]


def _drop_attribute(node: onnx.NodeProto, attr: str) -> None:
    for a in list(node.attribute):
        if a.name == attr:
            if helper.get_attribute_value(a) != 0:
                raise ValueError(f"{node.op_type} {node.name!r} uses {attr}="
                                 f"{helper.get_attribute_value(a)}, which the target opset cannot express")
            node.attribute.remove(a)


def convert_opset(model: onnx.ModelProto, target: int) -> tuple[onnx.ModelProto, list[str]]:
    """Convert a simplified opset-18 graph down to ``target`` (11..17) in place.

    Returns ``(model, names of the passes applied)``.  Raises ValueError for a graph it cannot convert.
    """
    source = _opset(model)
    passes: list[str] = []
    if target >= source:
        return model, passes
    if source != EXPORT_OPSET or target < 11:
        raise ValueError(f"conversion from opset {source} to {target} is not supported (11..17 from 18)")
    if target < 17:
        passes.append(f"decompose_layer_norm({decompose_layer_norm(model)})")
    consts = _constants(model)
    for node in model.graph.node:
        op = node.op_type
        if op.startswith("Reduce") and op != "ReduceSum":
            _input_to_attribute(node, 1, "axes", consts)
            _drop_attribute(node, "noop_with_empty_axes")
        elif op == "ReduceSum" and target < 13:
            _input_to_attribute(node, 1, "axes", consts)
            _drop_attribute(node, "noop_with_empty_axes")
        elif op == "Pad":
            if len(node.input) > 3 and node.input[3]:
                raise ValueError(f"Pad {node.name!r} uses the opset-18 'axes' input")
        elif op == "Split":
            for a in list(node.attribute):
                if a.name == "num_outputs":
                    node.attribute.remove(a)
            if target < 13:
                _input_to_attribute(node, 1, "split", consts)
        elif op in ("Squeeze", "Unsqueeze") and target < 13:
            _input_to_attribute(node, 1, "axes", consts)
        elif op == "Reshape" and target < 14:
            shape = consts.get(node.input[1])
            if shape is not None and not (shape == 0).any():   # allowzero only matters for 0 entries
                for a in list(node.attribute):
                    if a.name == "allowzero":
                        node.attribute.remove(a)
            _drop_attribute(node, "allowzero")
        elif op in ("Softmax", "LogSoftmax") and target < 13:
            axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), -1)
            if axis != -1:
                raise ValueError(f"{op} {node.name!r} over axis {axis}: opset {target} coerces to 2-D;"
                                 " only the last axis converts exactly")
    used = {name for node in model.graph.node for name in node.input}
    unused = [t for t in model.graph.initializer if t.name not in used]
    for t in unused:
        model.graph.initializer.remove(t)
    _set_opset(model, target)
    passes.append(f"relabel_opset({target})")
    # Every op must exist at the target with a compatible signature: the checker validates
    # each node against the target's schema.
    for node in model.graph.node:
        if node.domain in ("", "ai.onnx"):
            try:
                schema = onnx.defs.get_schema(node.op_type, target)
            except Exception:
                raise ValueError(f"op {node.op_type} does not exist at opset {target}") from None
            if schema.since_version > target:
                raise ValueError(f"op {node.op_type} needs opset {schema.since_version}")
    onnx.checker.check_model(model, full_check=True)
    return model, passes


def to_float16(source, target) -> list[str]:
    """Write ``source``'s graph with float16 weights and activations to ``target``, the ops of
    :data:`FLOAT32_OPS` kept in float32 (casts around them) and the inputs and outputs as they
    were (uint8 or float32 in, float32 logits out). Returns the kept op types present."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    present = sorted({n.op_type for n in model.graph.node} & set(FLOAT32_OPS))
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(FLOAT32_OPS))
    onnx.save(converted, str(target))
    return present

