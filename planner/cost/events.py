"""The allocation and free sequence of a full-depth training step, composed from a traced one.

A trace of 2-3 layers keeps, per segment (embedding forward, each layer's forward and backward
per role, head forward/backward, the tail), a *template*: its allocations in order and its
frees, each free naming what it frees in a way that holds at any depth:

- ``["self", k]``: the k-th allocation of this segment;
- ``["fwd", k]``: the k-th allocation of this layer's forward (saved for its backward);
- ``["out"]``: the previous layer's output (this layer's input);
- ``["top"]``: the top layer's output (freed by the head's forward, or by its backward when the
  final norm saves its input, as LayerNorm does);
- ``["in", m]``: the m-th allocation the previous backward segment handed down (the gradient
  flowing to this layer);
- ``["seg", name, k]``: the k-th allocation of a segment outside the layers (rotary tables,
  masks, the loss's gradient...).

Allocations of a layer's forward that the forward's end releases (autocast's cast cache) are
listed as ``deferred``. :func:`step_ops` replays the templates in the order of one training
step at full depth and returns the operations :func:`planner.cost.allocator.replay_run` runs.
"""

from __future__ import annotations

from planner.cost.roles import FB, ROLES

NAMES = {
    "fwd:embed": "embed_fwd",
    "fwd:head": "head_fwd",
    "bwd:head": "head_bwd",
    "bwd:embed": "embed_bwd",
    "bwd:end": "tail",
    "end": "end",
}


def _layer(label: str) -> int | None:
    where = label.split(":")[1] if ":" in label else ""
    return int(where) if where.isdigit() else None


def templates(events, marks, roles, input_ids, last_output, grad_ids) -> dict:
    """Templates of every segment of one traced step, keyed ``fwd:ROLE``/``fwd0:ROLE``/... as the
    segments of :mod:`planner.cost.segments` are, and by name outside the layers."""
    n = len(roles)
    bounds = marks + [("<end>", len(events))]
    label_of: list[str | None] = []
    k = 0
    for i in range(len(events)):
        while k + 1 < len(bounds) and bounds[k + 1][1] <= i:
            k += 1
        # before the first mark: tensors that exist before the step (parameters, the batch)
        label_of.append(bounds[k][0] if i >= bounds[0][1] else None)
    order = [label for label, _ in marks]
    bwd_labels = [lab for lab in order if lab.startswith("bwd:") or lab == "end"]
    prev_bwd = {b: a for a, b in zip(bwd_labels, bwd_labels[1:])}
    outputs = {}  # traced layer -> alloc id of its output
    for i in range(n):
        aid = input_ids.get(i + 1) if i + 1 < n else last_output
        if aid is not None:
            outputs[i] = aid
    where: dict[int, tuple[str, int]] = {}
    count: dict[str, int] = {}
    for i, (aid, delta) in enumerate(events):
        lab = label_of[i]
        if delta > 0 and aid not in where and lab is not None:
            where[aid] = (lab, count.get(lab, 0))
            count[lab] = count.get(lab, 0) + 1
    out: dict[str, dict] = {lab: {"ev": [], "out": None, "deferred": [], "outgoing": []} for lab in order}
    for i, aid in outputs.items():
        loc = where.get(aid)
        if loc is not None and loc[0] == f"fwd:{i}":
            out[loc[0]]["out"] = loc[1]
    handed: dict[str, list[int]] = {}  # bwd label -> ordinals freed by the next backward segment
    for i, (aid, delta) in enumerate(events):
        if delta >= 0 or aid not in where:
            continue
        src, k = where[aid]
        cur = label_of[i]
        if src == prev_bwd.get(cur) and src != cur:
            handed.setdefault(src, [])
            if k not in handed[src]:
                handed[src].append(k)
    for lab, ks in handed.items():
        out[lab]["outgoing"] = sorted(ks)
    top_out = outputs.get(n - 1)
    x0 = input_ids.get(0)
    x0_freed_in = next((label_of[i] for i, (aid, delta) in enumerate(events) if delta < 0 and aid == x0), None)
    seen: set[int] = set()
    for i, (aid, delta) in enumerate(events):
        lab = label_of[i]
        if lab is None:
            continue
        if delta > 0:
            # a later positive change is a resize in place (out= ops): not a new block
            if aid not in seen and aid in where:
                seen.add(aid)
                out[lab]["ev"].append(["a", delta, int(aid in grad_ids)])
            continue
        if aid not in where:
            continue  # a tensor that existed before the step (a parameter, the batch)
        src, k = where[aid]
        cur_layer, src_layer = _layer(lab), _layer(src)
        if src == lab:
            ref = ["self", k]
        elif cur_layer is not None and src == f"fwd:{cur_layer}":
            ref = ["fwd", k]
        elif (
            cur_layer is not None
            and src_layer == cur_layer - 1
            and src.startswith("fwd:")
            and outputs.get(src_layer) == aid
        ):
            ref = ["out"]
        elif lab in ("fwd:head", "bwd:head") and aid == top_out:
            ref = ["top"]
        elif lab == "fwd:head" and src.startswith("fwd:") and src_layer is not None:
            out[src]["deferred"].append(k)
            continue
        elif src == prev_bwd.get(lab) and k in out[src]["outgoing"]:
            ref = ["in", out[src]["outgoing"].index(k)]
        elif src_layer is None:
            ref = ["seg", NAMES.get(src, src), k]
        else:  # no rule places it at another depth: the tensor is kept (an over-estimate, never an under-one)
            continue
        out[lab]["ev"].append(["f"] + ref)
    result: dict[str, dict] = {}
    for lab, tmpl in out.items():
        layer = _layer(lab)
        if layer is None:
            result[NAMES.get(lab, lab)] = tmpl
            continue
        phase = lab.split(":")[0]
        if layer == 0:
            result[f"{phase}0:{roles[0]}"] = tmpl
        if layer > 0:
            result[f"{phase}:{roles[layer]}"] = tmpl
        elif f"{phase}:{roles[layer]}" not in result:  # until a layer above position 0 has this role
            result[f"{phase}:{roles[layer]}"] = (
                _above_layer0(tmpl, where.get(x0), x0_freed_in) if phase == "fwd" else tmpl
            )
    return result


def _above_layer0(tmpl: dict, x0: tuple[str, int] | None, x0_freed_in: str | None) -> dict:
    """Layer 0's forward template as it runs above layer 0, where its input is the previous layer's
    output. Layer 0 frees its input (the embeddings output) through a reference to the embedding
    segment, or not at all when the model's forward holds it until it returns (then the head's
    forward frees it); above layer 0 only the model's loop variable holds the input besides the
    layer, so it goes as the layer returns, after the layer's own last free. Without this, a role
    traced at layer 0 only (FB below a T0) would keep every input at depth: a hidden state a layer."""
    if x0 is None or x0[0] != "fwd:embed":
        return tmpl
    ref = ["f", "seg", NAMES["fwd:embed"], x0[1]]
    if ref in tmpl["ev"]:  # freed inside layer 0's forward: at the same point above it
        return {**tmpl, "ev": [["f", "out"] if e == ref else e for e in tmpl["ev"]]}
    if x0_freed_in == "fwd:head":
        return {**tmpl, "ev": tmpl["ev"] + [["f", "out"]]}
    return tmpl  # kept for a backward: left as traced (such roles are traced above layer 0 too)


def step_ops(fam, roles: list[int], marks: list[int] | None = None) -> tuple[list[int], int, list[int]]:
    """One full-depth training step (forward and backward, no optimizer) as allocator operations:
    ``n >= 0`` allocates n bytes (ids count allocations from 0 in this step), ``-(id + 1)`` frees.
    Returns the operations, the number of allocations and the ids of the gradients left alive;
    anything else the step made is freed at its end (before the next step, in reality).
    ``marks`` receives the position in the operations where each layer's forward starts."""
    ev = fam.events
    ops: list[int] = []
    alive = bytearray()
    grads: list[int] = []
    seg_ids: dict[str, list[int]] = {}
    nid = 0

    def emit(t, own_fwd=None, out_gid=None, handed=None) -> list[int]:
        nonlocal nid
        ids: list[int] = []
        for e in t["ev"]:
            if e[0] == "a":
                ids.append(nid)
                ops.append(e[1])
                alive.append(1)
                if e[2]:
                    grads.append(nid)
                nid += 1
                continue
            kind = e[1]
            g = None
            if kind == "self":
                g = ids[e[2]]
            elif kind == "fwd":
                g = own_fwd[e[2]] if own_fwd is not None and e[2] < len(own_fwd) else None
            elif kind == "in":
                g = handed[e[2]] if handed is not None and e[2] < len(handed) else None
            elif kind == "seg":
                lst = seg_ids.get(e[2])
                g = lst[e[3]] if lst is not None and e[3] < len(lst) else None
            else:  # "out", "top"
                g = out_gid
            if g is not None and alive[g]:
                alive[g] = 0
                ops.append(-g - 1)
        return ids

    def tmpl(phase, i):
        key0 = f"{phase}0:{ROLES[roles[i]]}"
        return ev[key0] if i == 0 and key0 in ev else ev[f"{phase}:{ROLES[roles[i]]}"]

    def handed_down(t, ids):
        return [ids[k] for k in t["outgoing"] if k < len(ids)]

    n = len(roles)
    fwd_ids: list[list[int]] = []
    outputs: list[int | None] = []
    seg_ids["embed_fwd"] = emit(ev["embed_fwd"])
    for i in range(n):
        t = tmpl("fwd", i)
        if marks is not None:
            marks.append(len(ops))
        ids = emit(t, out_gid=outputs[i - 1] if i else None)
        fwd_ids.append(ids)
        outputs.append(ids[t["out"]] if t["out"] is not None and t["out"] < len(ids) else None)
    seg_ids["head_fwd"] = emit(ev["head_fwd"], out_gid=outputs[-1])
    for i in range(n):
        for k in tmpl("fwd", i)["deferred"]:
            g = fwd_ids[i][k]
            if alive[g]:
                alive[g] = 0
                ops.append(-g - 1)
    ids = seg_ids["head_bwd"] = emit(ev["head_bwd"], out_gid=outputs[-1])
    handed = handed_down(ev["head_bwd"], ids)
    for i in reversed(range(n)):
        if roles[i] == FB:
            continue
        t = tmpl("bwd", i)
        ids = emit(t, own_fwd=fwd_ids[i], out_gid=outputs[i - 1] if i else None, handed=handed)
        handed = handed_down(t, ids)
    for name in ("embed_bwd", "tail", "end"):
        if name in ev:
            ids = seg_ids[name] = emit(ev[name], handed=handed)
            handed = handed_down(ev[name], ids)
    is_grad = set(grads)
    for g in range(nid):
        if alive[g] and g not in is_grad:
            ops.append(-g - 1)
    return ops, nid, [g for g in grads if alive[g]]
