#!/usr/bin/env python3
"""HTCondor's own ClassAd library as a test oracle, spoken to as JSON lines on stdin/stdout.

Each request is one JSON object with "op"; each answer is one JSON object. Used by the
classad crate's integration tests (tests/it/oracle.rs). Needs `pip install 'htcondor==24.0.*'`.
"""
import json
import math
import os
import sys

os.environ.setdefault("CONDOR_CONFIG", "/dev/null")
import htcondor  # noqa: F401,E402  (registers HTCondor's extra functions, e.g. stringListMember)
import classad  # noqa: E402


def value_json(v, scope=None, path=None):
    """A Python value from ClassAd.eval() as tagged JSON; list items are evaluated in
    `scope` through the subscript expression `path[i]`."""
    # classad.Value is an int enum: test it before int.
    if v is classad.Value.Undefined:
        return {"t": "undefined"}
    if v is classad.Value.Error:
        return {"t": "error"}
    if isinstance(v, bool):
        return {"t": "bool", "v": v}
    if isinstance(v, int):
        return {"t": "int", "v": str(v)}
    if isinstance(v, float):
        if math.isnan(v):
            return {"t": "real", "v": "nan"}
        if math.isinf(v):
            return {"t": "real", "v": "inf" if v > 0 else "-inf"}
        return {"t": "real", "v": repr(v)}
    if isinstance(v, str):
        return {"t": "str", "v": v}
    if v is classad.Value.Undefined:
        return {"t": "undefined"}
    if v is classad.Value.Error:
        return {"t": "error"}
    if isinstance(v, (classad.ClassAd, dict)) or hasattr(v, "keys"):
        return {"t": "ad"}
    if isinstance(v, list):
        items = []
        for i in range(len(v)):
            item_path = "%s[%d]" % (path, i)
            scope["__oracle_item"] = classad.ExprTree(item_path)
            try:
                item = scope.eval("__oracle_item")
            except Exception:  # noqa: BLE001
                item = classad.Value.Error
            items.append(value_json(item, scope, item_path))
        return {"t": "list", "v": items}
    return {"t": "other", "v": repr(v)}


def handle(req):
    op = req["op"]
    if op == "print_old":
        # Parse old-syntax text as one ad, answer printOld() lines.
        ad = classad.parseOne(req["text"], classad.Parser.Old)
        return {"ok": True, "lines": ad.printOld().splitlines()}
    if op == "new_to_old":
        # Parse a new-syntax ad, answer printOld() lines.
        ad = classad.parseOne(req["text"], classad.Parser.New)
        return {"ok": True, "lines": ad.printOld().splitlines()}
    if op == "parse_line":
        # Parse one old-syntax line on its own, as the JobRouter does with hook stdout.
        try:
            ad = classad.parseOne(req["line"], classad.Parser.Old)
        except Exception as e:  # noqa: BLE001
            return {"ok": False, "error": str(e)}
        return {"ok": len(ad) == 1, "lines": ad.printOld().splitlines()}
    if op == "expr_old":
        # Parse an expression (new or old syntax) into attribute x; answer its printOld line.
        parser = classad.Parser.Old if req.get("old") else classad.Parser.New
        try:
            ad = classad.parseOne("x = " + req["expr"] if req.get("old") else "[ x = " + req["expr"] + " ]", parser)
        except Exception as e:  # noqa: BLE001
            return {"ok": False, "error": str(e)}
        if "x" not in ad:
            return {"ok": False, "error": "no attribute parsed"}
        return {"ok": True, "lines": ad.printOld().splitlines()}
    if op == "eval":
        scope = classad.parseOne(req.get("ad", ""), classad.Parser.Old) if req.get("ad") else classad.ClassAd()
        try:
            expr = classad.ExprTree(req["expr"])
        except Exception as e:  # noqa: BLE001
            return {"ok": False, "error": str(e)}
        scope["__oracle_x"] = expr
        try:
            value = scope.eval("__oracle_x")
        except Exception:  # noqa: BLE001
            # The bindings raise instead of returning some error values.
            return {"ok": True, "value": {"t": "error"}}
        return {"ok": True, "value": value_json(value, scope, "__oracle_x")}
    if op == "match":
        # Is `expr`, as the Requirements of ad `my`, true against ad `target`? HTCondor's
        # MatchClassAd (what EvalBool(expr, my, target) uses): MY, TARGET and the
        # alternate scope.
        my = classad.parseOne(req["my"], classad.Parser.Old)
        target = classad.parseOne(req["target"], classad.Parser.Old)
        try:
            my["Requirements"] = classad.ExprTree(req["expr"])
        except Exception as e:  # noqa: BLE001
            return {"ok": False, "error": str(e)}
        target["Requirements"] = True
        # `a.matches(b)` evaluates b's Requirements with b as MY and a as TARGET.
        return {"ok": True, "value": {"t": "bool", "v": bool(target.matches(my))}}
    raise ValueError("unknown op " + op)


def main():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            answer = handle(json.loads(line))
        except Exception as e:  # noqa: BLE001
            answer = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
