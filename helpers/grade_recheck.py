"""What the grader runs inside a submission's kernel, right after each check cell.

The grader never trusts the verdicts a notebook recorded or printed. After every cell that calls
``ex.qN.check(...)``, it runs this program in the same kernel (appended to that cell, so it sees
the same answers at the same moment). The program

1. builds a fresh copy of ``helpers.checks`` and ``helpers.exercises`` from source text that the
   grader read from its **own** files before the submission started (never from the kernel's
   modules or from the files in the grading copy, which the submission could have changed);
2. evaluates each check call's arguments again in the notebook's namespace and judges them with
   that fresh copy;
3. lists functions of the kernel's ``helpers`` modules that were replaced from the notebook
   (``Exercise.evaluate = lambda ...``, a patched ``record_verdict`` or checker function);
4. sends the result back as one display message of its own MIME type, tagged with a random
   token the grader chose for this run.

The grader itself loads this file as text and sends it with the arguments in
``__course_grader_args__``; nothing here is imported by a notebook. It is not a sandbox: a
determined submission can still fool it, but not by copying a two-line snippet.
"""

from __future__ import annotations

import ast
import importlib
import importlib.abc
import importlib.util
import sys
import types

MIME_TYPE = "application/x-course-grader+json"
"""The display MIME type the grader listens for."""

PRISTINE_PREFIXES = ("helpers.checks", "helpers.exercises")
"""The modules judged from the grader's own copy: the checks and every lesson's checkers."""


class _PristineFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the pristine modules from source text, ahead of every other finder."""

    def __init__(self, sources: dict[str, str]):
        self.sources = sources  # module name -> source; packages end with ".__init__"

    def _lookup(self, name: str):
        if name in self.sources:
            return self.sources[name], False
        if name + ".__init__" in self.sources:
            return self.sources[name + ".__init__"], True
        return None, False

    def find_spec(self, name, path=None, target=None):
        source, is_package = self._lookup(name)
        if source is None:
            return None
        origin = "<course grader>/" + name.replace(".", "/") + ("/__init__.py" if is_package else ".py")
        spec = importlib.util.spec_from_loader(name, self, origin=origin, is_package=is_package)
        if is_package:
            spec.submodule_search_locations = []
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        source, _ = self._lookup(module.__name__)
        module.__file__ = module.__spec__.origin
        exec(compile(source, module.__file__, "exec"), module.__dict__)


def _pristine(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in PRISTINE_PREFIXES)


def fresh_lesson_module(sources: dict[str, str], lesson_module: str):
    """Import ``lesson_module`` from ``sources``, then put the kernel's own modules back."""
    saved = {name: module for name, module in sys.modules.items() if _pristine(name)}
    for name in saved:
        del sys.modules[name]
    finder = _PristineFinder(sources)
    sys.meta_path.insert(0, finder)
    try:
        module = importlib.import_module(lesson_module)
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if _pristine(n)]:
            del sys.modules[name]
        sys.modules.update(saved)
    return module


def check_calls(source: str) -> list[ast.Call]:
    """The ``NAME.qN.check(...)`` calls in a cell's source, in the order they appear."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "check"
        and isinstance(node.func.value, ast.Attribute)
        and isinstance(node.func.value.value, ast.Name)
    ]
    return sorted(calls, key=lambda node: (node.lineno, node.col_offset))


def _evaluate(node: ast.expr, namespace: dict):
    return eval(compile(ast.Expression(node), "<course grader>", "eval"), namespace)


def call_arguments(call: ast.Call, namespace: dict) -> tuple[list, dict]:
    """Evaluate a check call's arguments again, in the notebook's namespace."""
    args: list = []
    for node in call.args:
        if isinstance(node, ast.Starred):
            args.extend(_evaluate(node.value, namespace))
        else:
            args.append(_evaluate(node, namespace))
    kwargs: dict = {}
    for keyword in call.keywords:
        if keyword.arg is None:
            kwargs.update(_evaluate(keyword.value, namespace))
        else:
            kwargs[keyword.arg] = _evaluate(keyword.value, namespace)
    return args, kwargs


def _defined_in_notebook(function) -> bool:
    code = getattr(function, "__code__", None)
    if code is None:
        return False
    filename = code.co_filename
    # Notebook cells run as the module __main__, from files named /tmp/ipykernel_<pid>/<n>.py.
    # (Methods that dataclasses write have "<string>" as their file, and the helpers' module name.)
    return (
        getattr(function, "__module__", None) in (None, "__main__")
        or filename.startswith("<ipython")
        or "ipykernel_" in filename
    )


def replaced_helpers() -> list[str]:
    """Functions of the kernel's ``helpers`` modules that code in the notebook put there."""
    found = []
    for module_name, module in sorted(sys.modules.items()):
        if module is None or not (module_name == "helpers" or module_name.startswith("helpers.")):
            continue
        for attribute, value in list(vars(module).items()):
            candidates = []
            if isinstance(value, types.FunctionType):
                candidates.append((attribute, value))
            elif isinstance(value, type) and value.__module__ == module_name:
                candidates += [
                    (f"{attribute}.{name}", member)
                    for name, member in vars(value).items()
                    if isinstance(member, (types.FunctionType, staticmethod, classmethod))
                ]
            elif callable(getattr(value, "checker", None)):  # an Exercise: its checker function
                candidates.append((f"{attribute}.checker", value.checker))
            for name, function in candidates:
                function = getattr(function, "__func__", function)
                if _defined_in_notebook(function):
                    found.append(f"{module_name}.{name}")
    return found


def recheck(args: dict, namespace: dict) -> dict:
    """Judge every check call of one cell with fresh checks; what the grader receives."""
    results = []
    calls = check_calls(args["source"])
    lesson = None
    if calls:
        try:
            lesson = fresh_lesson_module(args["sources"], args["lesson_module"])
        except Exception as e:
            return {"token": args["token"], "cell": args["cell"], "results": [],
                    "replaced": [], "problem": f"the grader's checks could not be loaded: {type(e).__name__}: {e}"}
    for call in calls:
        name = call.func.value.attr
        exercise = getattr(lesson, name, None)
        if not hasattr(exercise, "evaluate"):
            results.append({"exercise": name, "status": None, "message": f"{name} is not an exercise of this lesson"})
            continue
        try:
            call_args, call_kwargs = call_arguments(call, namespace)
        except Exception as e:
            results.append({"exercise": name, "status": None,
                            "message": f"its arguments could not be evaluated again: {type(e).__name__}: {e}"})
            continue
        verdict = exercise.evaluate(*call_args, **call_kwargs)
        results.append({"exercise": name, "status": verdict.status, "message": verdict.message})
    return {"token": args["token"], "cell": args["cell"], "results": results,
            "replaced": replaced_helpers(), "problem": None}


def main() -> None:
    """Entry point when the grader runs this text in a kernel."""
    import json

    from IPython import get_ipython
    from IPython.display import display

    args = globals()["__course_grader_args__"]
    shell = get_ipython()
    namespace = shell.user_ns if shell is not None else {}
    try:
        report = recheck(args, namespace)
    except Exception as e:  # never let the grader's own code end the run
        report = {"token": args["token"], "cell": args["cell"], "results": [], "replaced": [],
                  "problem": f"the grader's re-check failed: {type(e).__name__}: {e}"}
    display({MIME_TYPE: json.dumps(report)}, raw=True)


if __name__ == "__course_grader__":
    main()
