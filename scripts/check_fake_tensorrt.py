"""The fake TensorRT of the contract tests (tests/fake_tensorrt.py) against TensorRT's published API (tensorrt-stubs):
every public method of a fake class must exist on the real class with the same parameter names, every enum member
and class constant must exist there too. Run by scripts/typecheck_tensorrt.sh with the stubs' path:

    python scripts/check_fake_tensorrt.py STUBS.pyi tests/fake_tensorrt.py

Only the standard library: both files are read with ``ast``, nothing is imported.
"""

from __future__ import annotations

import ast
import sys

# fake classes that stand for TensorRT classes of the same name
API = ("DataType", "TensorIOMode", "ExecutionContextAllocationStrategy", "OnnxParserFlag",
       "NetworkDefinitionCreationFlag", "Logger", "Dims", "Builder", "Runtime", "ICudaEngine", "IExecutionContext")


def classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}


def members(cls: ast.ClassDef, all_classes: dict[str, ast.ClassDef]) -> tuple[dict[str, list[list[str]]], set[str]]:
    """method name -> parameter-name lists (one per overload), and class attribute names, bases included."""
    methods: dict[str, list[list[str]]] = {}
    attrs: set[str] = set()
    for node in cls.body:
        if isinstance(node, ast.FunctionDef):
            a = node.args
            methods.setdefault(node.name, []).append([x.arg for x in (*a.posonlyargs, *a.args)])
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            attrs.add(node.target.id)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                for name in (t.elts if isinstance(t, ast.Tuple) else [t]):
                    if isinstance(name, ast.Name):
                        attrs.add(name.id)
        elif isinstance(node, ast.ClassDef):  # nested enums (Logger.Severity): their members are reachable too
            attrs |= members(node, all_classes)[1]
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id in all_classes:
            m, at = members(all_classes[base.id], all_classes)
            for k, v in m.items():
                methods.setdefault(k, []).extend(v)
            attrs |= at
    return methods, attrs


def main(stubs_path: str, fake_path: str) -> int:
    stubs = classes(ast.parse(open(stubs_path, encoding="utf-8").read()))
    fake = classes(ast.parse(open(fake_path, encoding="utf-8").read()))
    problems = []
    for name in API:
        if name not in fake:
            continue
        if name not in stubs:
            problems.append(f"{name}: no such class in TensorRT")
            continue
        real_methods, real_attrs = members(stubs[name], stubs)
        fake_methods, fake_attrs = members(fake[name], {})
        for meth, sigs in fake_methods.items():
            if meth.startswith("_") and meth not in ("__init__", "__new__"):
                continue  # the fake's own helpers
            want = real_methods.get("__init__" if meth == "__new__" else meth)
            if want is None and meth == "__init__":
                continue  # TensorRT makes these objects itself (no public constructor); the fake's is internal
            if want is None:
                problems.append(f"{name}.{meth}: not part of TensorRT's {name}")
                continue
            params = [p for p in sigs[0] if p not in ("self", "cls")]
            if not any([p for p in w if p not in ("self", "cls")] == params for w in want):
                problems.append(f"{name}.{meth}({', '.join(params)}): TensorRT has "
                                + " | ".join(f"({', '.join(p for p in w if p != 'self')})" for w in want))
        for attr in fake_attrs:
            if not attr.startswith("_") and attr not in real_attrs and attr not in real_methods:
                problems.append(f"{name}.{attr}: not part of TensorRT's {name}")
    for p in problems:
        print(f"fake TensorRT differs from the stubs: {p}")
    checked = [n for n in API if n in fake]
    if not problems:
        print(f"fake TensorRT: {len(checked)} classes match tensorrt-stubs (methods, parameter names, constants)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
