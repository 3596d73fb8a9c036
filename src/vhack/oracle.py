"""The ground-truth oracle: the candidate's process only reports answers; the verdict is decided elsewhere.

Two halves, running the problem's own tests (`setup_code`, then `tests`) twice:
- in the sandbox child (`run_oracle`): setup, the candidate code, then the tests, where every
  candidate function, class or object the tests touch is a `_Proxy`. Each operation on a proxy
  (call, attribute read or write) runs the candidate and is *recorded*: the value it returned as
  plain data (builtin types and the setup's classes, one flat JSON table), a new proxy for an
  object with behaviour (a `Solution()` instance), or the exception's builtin type and message;
  plus the new state of every argument the call mutated. The tests there already see decoded
  copies, never candidate objects. The record, a file, is all the child reports.
- in the grader's process (`judge`): the same tests run again in a fresh namespace, with proxies
  that *replay* the record; their asserts decide. No candidate code ever runs there, so the verdict
  lives in no frame, object or fd the candidate can reach: frame walking, `gc`, `sys.modules` or
  builtins tampering, writing to every fd or a fake record file can only change the answers the
  candidate claims, which the trusted tests then check. Always-equal objects cannot be encoded.

`error` is a timeout, a resource limit (CPU, memory, record size) or a crash (a signal, a sandbox
failure); `correct` / `wrong` are the tests' verdict. A record that does not follow the tests' own
sequence of operations, or lacks the run's nonce, is `wrong`. When the tests import `random`, both halves seed it identically and the child
shields the tests' stream from the candidate's own draws.
Defence in depth inside the child: code naming frame/GC introspection, function internals or
ctypes is rejected statically (never run), and an audit hook refuses frames (`sys._getframe`,
`sys._current_frames`, `tb_frame`, ...), `gc` object walks, tracing and ctypes at run time.
"""

from __future__ import annotations

import ast
import builtins
import collections
import functools
import gc
import json
import marshal
import operator
import os
import re
import signal
import sys
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Sequence

from vhack.sandbox import ExecRequest, ExecResult

if TYPE_CHECKING:  # only for annotations: keeps vhack.problems out of the fork-server's heap
    from vhack.problems import Problem

ORACLE_PROGRAM = "from vhack.oracle import run_oracle\nrun_oracle()\n"
RECORD_FILE = ".oracle_record"
CORRECT, WRONG, ERROR = "correct", "wrong", "error"
ORACLE_STATUSES = (CORRECT, WRONG, ERROR)
RANDOM_SEED = 0              # the tests' `random` in both halves
_MAX_ITERATOR_ITEMS = 1 << 16
_BIG_INT_BITS = 62           # larger ints travel as hex (JSON readers differ beyond)
_RESOURCE_SIGNALS = frozenset({signal.SIGKILL, signal.SIGXCPU, signal.SIGXFSZ})


@dataclass(frozen=True)
class OracleVerdict:
    status: str   # correct | wrong | error
    reason: str   # "" when correct


# ----------------------------------------------------------------------------- static check, compilation

_BANNED_MODULES = frozenset({"gc", "inspect", "ctypes", "_ctypes", "cffi", "_testcapi", "_testinternalcapi"})
_BANNED_NAMES = re.compile(
    r"\b(_getframe|_current_frames|_current_exceptions|f_back|f_locals|f_globals|f_builtins|tb_frame|gi_frame|"
    r"cr_frame|ag_frame|walk_stack|walk_tb|settrace|setprofile|get_referrers|get_referents|get_objects|"
    r"__globals__|__code__|__closure__|__defaults__|__kwdefaults__)\b")


@functools.lru_cache(maxsize=256)
def parse_code(code: str) -> ast.Module | None:
    """Parsed once per code string (static flags, the introspection check, compilation); None if unparsable."""
    try:
        return ast.parse(code)
    except Exception:  # noqa: BLE001 - SyntaxError, ValueError (NUL bytes), RecursionError, MemoryError
        return None


def introspection_use(code: str) -> str | None:
    """What in `code` the oracle refuses to run (frame/GC introspection, function internals, ctypes)."""
    found = _BANNED_NAMES.search(code)
    if found:
        return found.group(1)
    tree = parse_code(code)
    if tree is None:
        return None  # unparsable code fails to compile anyway
    nodes = list(ast.walk(tree))
    modules = [alias.name for node in nodes if isinstance(node, ast.Import) for alias in node.names]
    modules += [node.module for node in nodes if isinstance(node, ast.ImportFrom) and node.module]
    modules += [n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)]  # __import__("gc")
    return next((m for m in modules if m.split(".")[0] in _BANNED_MODULES), None)


def compile_candidate(code: str) -> tuple[types.CodeType | None, str]:
    """(code object, "") or (None, why it does not compile)."""
    tree = parse_code(code)
    try:
        return compile(code if tree is None else tree, "<candidate>", "exec", dont_inherit=True), ""
    except Exception as exc:  # noqa: BLE001 - SyntaxError, ValueError, RecursionError, MemoryError
        return None, f"{type(exc).__name__}: {exc}"


class _StrictComparisons(ast.NodeTransformer):
    """Inside assert statements: `a == b` -> `__oracle_eq__(a, b)`, `a != b` -> `not __oracle_eq__(a, b)`."""

    def visit_Assert(self, node: ast.Assert) -> ast.Assert:
        node.test = _EqRewriter().visit(node.test)
        return node


class _EqRewriter(ast.NodeTransformer):
    def visit_Compare(self, node: ast.Compare) -> ast.expr:
        self.generic_visit(node)
        if len(node.ops) != 1 or not isinstance(node.ops[0], (ast.Eq, ast.NotEq)):
            return node
        call = ast.Call(ast.Name("__oracle_eq__", ast.Load()), [node.left, node.comparators[0]], [])
        return call if isinstance(node.ops[0], ast.Eq) else ast.UnaryOp(ast.Not(), call)


@dataclass(frozen=True)
class _CompiledProblem:
    setup: types.CodeType           # as written, run before the candidate code
    strict_setup: types.CodeType    # assert comparisons made strict, run fresh for the tests
    strict_tests: types.CodeType
    test_imports: tuple[str, ...]   # modules the setup/tests import: restored before the tests run


@functools.lru_cache(maxsize=4096)
def _compile_problem(setup_code: str, tests: tuple[str, ...]) -> _CompiledProblem:
    setup_tree, tests_tree = ast.parse(setup_code), ast.parse("\n".join(tests))
    setup = _compile(setup_tree, "<setup>")  # before the rewrite below, which works in place
    strict = [_StrictComparisons().visit(tree) for tree in (setup_tree, tests_tree)]
    imports = {name for tree in strict for node in ast.walk(tree) for name in _imported_modules(node)}
    return _CompiledProblem(setup, _compile(strict[0], "<setup>"), _compile(strict[1], "<tests>"),
                            tuple(sorted(imports)))


def compiled_problem(problem: Problem) -> _CompiledProblem:
    try:
        return _compile_problem(problem.setup_code, tuple(problem.tests))
    except SyntaxError as exc:
        raise ValueError(f"problem {problem.id}: setup_code or tests do not parse ({exc}); fix the problem set") from exc


def _compile(tree: ast.Module, filename: str) -> types.CodeType:
    # dont_inherit: this module's `from __future__ import annotations` must not leak into the code
    return compile(ast.fix_missing_locations(tree), filename, "exec", dont_inherit=True)


def _imported_modules(node: ast.AST) -> list[str]:
    """`import a.b` -> ["a", "a.b"]; `from a.b import c` -> ["a", "a.b"]."""
    if isinstance(node, ast.Import):
        dotted = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        dotted = [node.module]
    else:
        return []
    return [".".join(name.split(".")[:i]) for name in dotted for i in range(1, name.count(".") + 2)]


# ----------------------------------------------------------------------------- types: data, behaviour, equality

_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a class statement
_NUMBERS = frozenset({bool, int, float, complex})
_SCALARS = _NUMBERS | {str, bytes, type(None)}
_SEQUENCES = frozenset({list, tuple, collections.deque})
_MAPPINGS = frozenset({dict, collections.Counter, collections.defaultdict, collections.OrderedDict})
_SETS = frozenset({set, frozenset})
_CONTAINERS = _SEQUENCES | _MAPPINGS | _SETS
_JSON_SCALARS = frozenset({type(None), bool, int, float, str})
_CALLABLES = (types.FunctionType, types.MethodType, types.BuiltinFunctionType, types.BuiltinMethodType,
              functools.partial, type)
_SAFE_CLASS_ATTRS = frozenset({
    "__module__", "__qualname__", "__doc__", "__dict__", "__weakref__", "__slots__", "__annotations__",
    "__init__", "__new__", "__repr__", "__str__", "__init_subclass__", "__class_getitem__", "__match_args__",
    "__orig_bases__", "__parameters__", "__firstlineno__", "__static_attributes__", "__classcell__",
})
_mro, _type_dict = type.__dict__["__mro__"].__get__, type.__dict__["__dict__"].__get__
_flags, _qualname = type.__dict__["__flags__"].__get__, type.__dict__["__qualname__"].__get__


def _is_heap(t: type) -> bool:
    return bool(_flags(t) & _HEAP_TYPE)


def _custom_special_methods(t: type) -> bool:
    """Does a class statement in `t`'s MRO define special methods (__eq__, __hash__, __float__, ...)?"""
    for klass in _mro(t):
        if _is_heap(klass):
            for name, value in _type_dict(klass).items():
                if name.startswith("__") and name.endswith("__") and name not in _SAFE_CLASS_ATTRS:
                    if not (name == "__hash__" and value is None):
                        return True
    return False


def _state(obj: object) -> dict:
    """Instance attributes (dict and slots), read without the instance's own __getattr__."""
    found: dict = {}
    try:
        attrs = object.__getattribute__(obj, "__dict__")
        if type(attrs) is dict:
            found.update(attrs)
    except AttributeError:
        pass
    for klass in _mro(type(obj)):
        slots = _type_dict(klass).get("__slots__", ())
        for name in (slots,) if type(slots) is str else slots:
            try:
                found[name] = object.__getattribute__(obj, name)
            except AttributeError:
                pass
    return found


def strict_eq(a: object, b: object) -> bool:
    """`a == b` of the tests: exact builtin types (numbers compare by value, as in Python), recursive
    over builtin containers and over instances' attributes; never an object's own __eq__ but a C type's."""
    pending, seen = [(a, b)], set()
    while pending:
        x, y = pending.pop()
        tx, ty = type(x), type(y)
        if tx in _NUMBERS and ty in _NUMBERS:
            if not x == y:
                return False
        elif tx in _SCALARS or ty in _SCALARS:
            if tx is not ty or not x == y:
                return False
        elif (id(x), id(y)) not in seen:
            seen.add((id(x), id(y)))
            if not _expand(x, y, tx, ty, pending):
                return False
    return True


def _expand(x: Any, y: Any, tx: type, ty: type, pending: list) -> bool:
    """Push the parts of x and y still to compare; False when they already differ."""
    if tx in _SEQUENCES or ty in _SEQUENCES:
        if tx is not ty or len(x) != len(y):
            return False
        pending.extend(zip(x, y))
    elif tx in _MAPPINGS and ty in _MAPPINGS:
        if len(x) != len(y) or set(x) != set(y):
            return False
        pending.extend((x[k], y[k]) for k in x)
    elif tx in _SETS and ty in _SETS:
        return frozenset(x) == frozenset(y)
    elif tx in _CONTAINERS or ty in _CONTAINERS:
        return False
    elif _is_heap(tx) and _is_heap(ty):
        if _qualname(tx) != _qualname(ty):
            return False
        sx, sy = _state(x), _state(y)
        if set(sx) != set(sy):
            return False
        pending.extend((sx[k], sy[k]) for k in sx)
    else:
        return tx is ty and not _is_heap(tx) and x == y  # C types (datetime, Decimal): no Python __eq__
    return True


# ----------------------------------------------------------------------------- the record's data encoding

class _Corrupt(BaseException):
    """The record does not decode: only tampering produces one."""


def _set_key(value: object) -> str:
    """An order for set elements that does not depend on the process's hash seed."""
    t = type(value)
    if t is tuple:
        return "t(" + ",".join(map(_set_key, value)) + ")"
    if t is frozenset:
        return "f(" + ",".join(sorted(map(_set_key, value))) + ")"
    return t.__name__ + ":" + (repr(value) if t in _SCALARS else _qualname(t))


def encode(value: object, data_classes: frozenset[str]) -> list:
    """[root cell, node table] for plain data. A cell is a JSON scalar (None, bool, small int, float,
    str) or [k], node k of the table: [tag, *fields]. Shared and cyclic structures keep their shape;
    candidate objects with special methods (always-equal objects, fake numbers) raise TypeError."""
    nodes: list = []
    index: dict[int, int] = {}
    todo: list[tuple[int, object]] = []
    keep_alive = [value]

    def cell(x: object) -> object:
        t = type(x)
        if t is str or t is float or t is bool or x is None or (t is int and x.bit_length() <= _BIG_INT_BITS):
            return x
        k = index.get(id(x))
        if k is None:
            k = index[id(x)] = len(nodes)
            nodes.append(None)
            todo.append((k, x))
            keep_alive.append(x)
        return [k]

    root = cell(value)
    while todo:
        k, x = todo.pop()
        nodes[k] = _node(x, cell, data_classes)
    return [root, nodes]


def _node(x: Any, cell: Callable[[object], object], data_classes: frozenset[str]) -> list:
    t = type(x)
    if t is int:
        return ["n", hex(x)]
    if t is complex:
        return ["c", x.real, x.imag]
    if t is bytes or t is bytearray:
        return ["b" if t is bytes else "B", x.hex()]
    if t is list or t is tuple:
        return ["l" if t is list else "t", [cell(v) for v in x]]
    if t is set or t is frozenset:
        return ["s" if t is set else "f", [cell(v) for v in sorted(x, key=_set_key)]]
    if t is collections.deque:
        return ["q", x.maxlen, [cell(v) for v in x]]
    if t in _MAPPINGS:
        tag = {dict: "d", collections.Counter: "C", collections.OrderedDict: "O", collections.defaultdict: "D"}[t]
        factory = getattr(x, "default_factory", None)
        return [tag, [[cell(k), cell(v)] for k, v in dict.items(x)],
                factory.__name__ if t is collections.defaultdict and factory in _FACTORIES.values() else None]
    if t is _Proxy:
        return ["h", object.__getattribute__(x, "_hid")]
    if _is_heap(t) and _qualname(t) in data_classes:
        return ["o", _qualname(t), [[name, cell(v)] for name, v in _state(x).items()]]
    if _is_heap(t) and _custom_special_methods(t):
        raise TypeError(f"returned a {_qualname(t)} with custom special methods")
    if not _is_heap(t) and hasattr(t, "__next__"):  # generators, map objects: their items
        items = []
        for item in x:
            if len(items) == _MAX_ITERATOR_ITEMS:
                raise TypeError(f"returned an iterator of more than {_MAX_ITERATOR_ITEMS} items")
            items.append(cell(item))
        return ["i", items]
    raise TypeError(f"returned a {_qualname(t)}, which is not plain data")


_FACTORIES = {f.__name__: f for f in (int, float, str, list, dict, set, tuple, bool, frozenset)}
_SHELLS: dict[str, Callable[[list], object]] = {
    "l": lambda n: [], "d": lambda n: {}, "s": lambda n: set(), "C": lambda n: collections.Counter(),
    "O": lambda n: collections.OrderedDict(), "D": lambda n: collections.defaultdict(_FACTORIES.get(n[2])),
    "q": lambda n: collections.deque(maxlen=n[1]), "n": lambda n: int(n[1], 16), "c": lambda n: complex(n[1], n[2]),
    "b": lambda n: bytes.fromhex(n[1]), "B": lambda n: bytearray.fromhex(n[1]),
}


def decode(data: object, data_classes: dict[str, type], handles: Callable[[int], object]) -> object:
    """The value `encode` produced, rebuilt from trusted types only; _Corrupt for anything else."""
    try:
        root, nodes = data  # type: ignore[misc]
        if not nodes and type(root) in _JSON_SCALARS:
            return root  # a scalar answer: most of them
        built: list = [None] * len(nodes)
        done = [False] * len(nodes)

        def cell(c: object) -> object:
            if type(c) is list:
                (k,) = c
                if not done[k]:
                    raise ValueError("a tuple that contains itself")
                return built[k]
            if type(c) in _JSON_SCALARS:
                return c
            raise ValueError(f"bad cell {c!r:.40}")

        for k, node in enumerate(nodes):  # containers and objects first, empty: cycles close through them
            tag = node[0]
            if tag in _SHELLS:
                built[k] = _SHELLS[tag](node)
            elif tag == "o":
                cls = data_classes[node[1]]
                built[k] = cls.__new__(cls)
            elif tag == "h":
                built[k] = handles(node[1])
            else:
                continue
            done[k] = True
        for k in _immutables_in_order(nodes, done):
            items = [cell(c) for c in nodes[k][1]]
            built[k] = {"t": tuple, "f": frozenset, "i": iter}[nodes[k][0]](items)
            done[k] = True
        for k, node in enumerate(nodes):  # objects before containers: a set may hash them
            if node[0] == "o":
                for name, c in node[2]:
                    if type(name) is not str or name.startswith("__"):
                        raise ValueError(f"bad attribute {name!r:.40}")
                    object.__setattr__(built[k], name, cell(c))
        for k, node in enumerate(nodes):
            tag, target = node[0], built[k]
            if tag in ("l", "q"):
                target.extend(cell(c) for c in node[-1])
            elif tag == "s":
                target.update(cell(c) for c in node[1])
            elif tag in ("d", "C", "O", "D"):
                for kc, vc in node[1]:
                    target[cell(kc)] = cell(vc)
        return cell(root)
    except _Corrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - any malformed record
        raise _Corrupt(f"undecodable value ({type(exc).__name__}: {exc})"[:200]) from None


def _immutables_in_order(nodes: list, done: list[bool]) -> list[int]:
    """Tuple/frozenset/iterator nodes, children before parents (no recursion: lists may nest deep)."""
    order, state = [], {}
    for start in range(len(nodes)):
        if done[start] or start in state:
            continue
        stack = [(start, False)]
        while stack:
            k, expanded = stack.pop()
            if nodes[k][0] not in ("t", "f", "i"):
                raise ValueError(f"unknown tag {nodes[k][0]!r:.20}")
            if expanded:
                state[k] = "done"
                order.append(k)
                continue
            if state.get(k) == "open":
                raise ValueError("a tuple that contains itself")
            if state.get(k) == "done":
                continue
            state[k] = "open"
            stack.append((k, True))
            stack.extend((c[0], False) for c in nodes[k][1]
                         if type(c) is list and not done[c[0]] and state.get(c[0]) != "done")
    return order


_dumps = json.JSONEncoder(separators=(",", ":")).encode  # one encoder: json.dumps builds one per call


# ----------------------------------------------------------------------------- proxies, recording, replay

class _Proxy:
    """What the tests hold instead of a candidate function, class or object; every use is an operation."""
    __slots__ = ("_engine", "_hid")

    def __init__(self, engine: _Engine, hid: int) -> None:
        object.__setattr__(self, "_engine", engine)
        object.__setattr__(self, "_hid", hid)

    def __call__(self, *args: object, **kwargs: object) -> object:
        return object.__getattribute__(self, "_engine").call(object.__getattribute__(self, "_hid"), args, kwargs)

    def __getattr__(self, name: str) -> object:
        return object.__getattribute__(self, "_engine").get(object.__getattribute__(self, "_hid"), name)

    def __setattr__(self, name: str, value: object) -> None:
        object.__getattribute__(self, "_engine").set(object.__getattribute__(self, "_hid"), name, value)


class CandidateExit(BaseException):
    """A candidate call ended in SystemExit, KeyboardInterrupt or another non-Exception: tests cannot catch it
    as an Exception, as in one process, and the judge never raises the real thing."""


class _Engine:
    """What recording and replay share: the tests' view of every operation's outcome."""

    def __init__(self, data_classes: dict[str, type]) -> None:
        self.data_classes = data_classes
        self.class_names = frozenset(data_classes)
        self.proxies: dict[int, _Proxy] = {}

    def proxy(self, hid: int) -> _Proxy:
        if type(hid) is not int:
            raise _Corrupt(f"bad handle {hid!r:.40}")
        if hid not in self.proxies:
            self.proxies[hid] = _Proxy(self, hid)
        return self.proxies[hid]

    def encoding(self, value: object) -> str:
        """A value's encoding as text, comparable across processes."""
        try:
            return _dumps(encode(value, self.class_names))
        except TypeError:  # a test's own function or object as an argument: only its type can be compared
            return "?" + _qualname(type(value))

    def apply(self, outcome: object, mutations: object, args: tuple, kwargs: dict) -> object:
        """Write mutated arguments back, then return the value, a proxy, or raise the exception."""
        try:
            for key, table in mutations:  # type: ignore[union-attr]
                _write_back(args[key] if type(key) is int else kwargs[key], self.decode(table))
            kind = outcome[0]  # type: ignore[index]
            if kind == "v":
                return self.decode(outcome[1])  # type: ignore[index]
            if kind == "h":
                return self.proxy(outcome[1])  # type: ignore[index]
            if kind == "x":
                name, message = outcome[1], outcome[2]  # type: ignore[index]
                if type(name) is not str or type(message) is not str:
                    raise ValueError("bad exception")
            else:
                raise ValueError(f"bad outcome {kind!r:.20}")
        except (_Corrupt, CandidateExit):
            raise
        except Exception as exc:  # noqa: BLE001
            raise _Corrupt(f"bad operation ({type(exc).__name__}: {exc})"[:200]) from None
        raise _rebuild_exception(name, message)

    def decode(self, table: object) -> object:
        return decode(table, self.data_classes, self.proxy)


def _write_back(target: object, new: object) -> None:
    """Give `target` (the tests' argument) the state the candidate left it in."""
    t = type(target)
    if t is list or t is bytearray:
        target[:] = new  # type: ignore[index]
    elif t in _MAPPINGS or t is set or t is collections.deque:
        target.clear()  # type: ignore[attr-defined]
        (target.extend if t is collections.deque else target.update)(new)  # type: ignore[attr-defined]
    elif t is tuple and type(new) is tuple and len(new) == len(target):  # type: ignore[arg-type]
        for old_item, new_item in zip(target, new):  # type: ignore[call-overload]
            _write_back(old_item, new_item)
    elif _is_heap(t) and type(new) is t:
        state = _state(new)
        for name in _state(target):
            if name not in state:
                object.__delattr__(target, name)
        for name, value in state.items():
            object.__setattr__(target, name, value)
    elif not strict_eq(target, new):
        raise ValueError(f"a {_qualname(t)} argument cannot change")


def _exception_kind(exc: BaseException) -> tuple[str, str]:
    """(the nearest builtin class of `exc`, its message): all of a candidate's exception that travels."""
    name = next(k.__name__ for k in _mro(type(exc)) if k.__module__ == "builtins")
    try:
        text = BaseException.__str__(exc).splitlines() if type(exc).__module__ in ("builtins", __name__) else []
    except BaseException:  # noqa: BLE001 - an argument with a hostile __str__
        text = []
    return name, text[0][:200] if text else ""


def _kind_text(exc: BaseException) -> str:
    name, message = _exception_kind(exc)
    return f"{name}: {message}" if message else name


def _rebuild_exception(name: str, message: str) -> BaseException:
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:  # noqa: BLE001 - UnicodeDecodeError & co. take other arguments
            pass
    return CandidateExit(f"{name}: {message}" if message else name)


class _Recorder(_Engine):
    """In the sandbox child: runs each operation on the candidate's object and records its outcome."""

    def __init__(self, data_classes: dict[str, type], uses_random: bool) -> None:
        super().__init__(data_classes)
        self.targets: dict[int, object] = {}
        self.ops: list[list] = []
        self.depth = 0  # > 0 while candidate code runs: its own uses of proxies are not the tests'
        self.random = sys.modules["random"] if uses_random else None

    def root(self, target: object) -> int:
        hid = len(self.targets)
        self.targets[hid] = target
        return hid

    def call(self, hid: int, args: tuple, kwargs: dict) -> object:
        target = self.targets[hid]
        if self.depth:
            return target(*args, **kwargs)  # type: ignore[operator]
        keys: list[int | str] = [*range(len(args)), *kwargs]
        values = [*args, *kwargs.values()]
        before = [self.snapshot(v) for v in values]
        plain = [self.targets[object.__getattribute__(v, "_hid")] if type(v) is _Proxy else v for v in values]
        outcome = self.run(lambda: target(*plain[:len(args)], **dict(zip(kwargs, plain[len(args):]))))  # type: ignore[operator]
        mutations = [[key, encode(value, self.class_names)] for key, value, old in zip(keys, values, before)
                     if old is not None and self.changed(value, old)]
        self.ops.append(["call", hid, "", outcome, mutations])
        return self.apply(outcome, mutations, args, kwargs)

    def get(self, hid: int, name: str) -> object:
        if self.depth:
            return getattr(self.targets[hid], name)
        outcome = self.run(lambda: getattr(self.targets[hid], name))
        self.ops.append(["get", hid, name, outcome, []])
        return self.apply(outcome, [], (), {})

    def set(self, hid: int, name: str, value: object) -> None:
        if self.depth:
            return setattr(self.targets[hid], name, value)
        outcome = self.run(lambda: (setattr(self.targets[hid], name, value), None)[1])
        self.ops.append(["set", hid, name, outcome, []])
        self.apply(outcome, [], (), {})

    def run(self, operation: Callable[[], object]) -> list:
        """Run candidate code; its outcome as the record carries it. The tests' random stream is kept."""
        self.depth += 1
        state = self.random.getstate() if self.random else None
        try:
            value = operation()
            if type(value) in _JSON_SCALARS and (type(value) is not int or value.bit_length() <= _BIG_INT_BITS):
                return ["v", [value, []]]  # most answers: no table
            if isinstance(value, _CALLABLES) or self.has_behaviour(value):
                return ["h", self.root(value)]
            return ["v", encode(value, self.class_names)]
        except BaseException as exc:  # noqa: BLE001 - whatever it raised, the tests see its builtin kind
            return ["x", *_exception_kind(exc)]
        finally:
            self.depth -= 1
            if state is not None:
                self.random.setstate(state)

    def snapshot(self, value: object) -> tuple[bool, object] | None:
        """What tells whether a call changed this argument; None for an immutable one. A list of scalars
        (most arguments) is copied, anything else encoded."""
        t = type(value)
        if t in _SCALARS:
            return None
        if t is list and all(type(item) in _SCALARS for item in value):  # type: ignore[attr-defined]
            return True, list(value)  # type: ignore[call-overload]
        return False, self.encoding(value)

    def changed(self, value: object, old: tuple[bool, object]) -> bool:
        shallow, state = old
        if shallow:  # same length, same (immutable) items
            return len(value) != len(state) or not all(map(operator.is_, value, state))  # type: ignore[arg-type]
        return self.encoding(value) != state

    def has_behaviour(self, value: object) -> bool:
        """An object the tests use through its methods (a Solution instance), not data."""
        t = type(value)
        return (_is_heap(t) and _qualname(t) not in self.class_names and t is not _Proxy
                and not isinstance(value, (list, tuple, dict, set, frozenset)) and not _custom_special_methods(t))


class _Diverged(BaseException):
    """The replayed tests asked for an operation the record does not have next."""


class _Replayer(_Engine):
    """In the grader's process: answers each operation from the record, in order."""

    def __init__(self, data_classes: dict[str, type], ops: object) -> None:
        super().__init__(data_classes)
        if type(ops) is not list:
            raise _Corrupt("no operations list")
        self.ops, self.position, self.diverged = ops, 0, ""

    def next(self, kind: str, hid: int, key: str) -> list:
        op = self.ops[self.position] if self.position < len(self.ops) else None
        if type(op) is not list or len(op) != 5:
            if op is None:
                self.diverged = f"the tests' {kind} #{self.position + 1} is not in the record"
                raise _Diverged(self.diverged)
            raise _Corrupt(f"bad operation #{self.position + 1}")
        if op[:3] != [kind, hid, key]:
            self.diverged = f"operation #{self.position + 1}: the tests did {kind} {key[:40]!r}, the record {op[:3]!r:.60}"
            raise _Diverged(self.diverged)
        self.position += 1
        return op

    def call(self, hid: int, args: tuple, kwargs: dict) -> object:
        op = self.next("call", hid, "")
        return self.apply(op[3], op[4], args, kwargs)

    def get(self, hid: int, name: str) -> object:
        return self.apply(self.next("get", hid, name)[3], [], (), {})

    def set(self, hid: int, name: str, value: object) -> None:
        self.apply(self.next("set", hid, name)[3], [], (), {})


def _run_tests(compiled: _CompiledProblem, namespace: dict, entry: str,
               bind: Callable[[dict[str, type]], tuple[_Engine, Sequence[tuple[object, object]], object]]) -> _Engine:
    """The tests, identically in both halves: strict setup, then the candidate's names as proxies, then the
    tests. `bind(the setup's classes)` gives the engine, the (name, handle) roots and the entry's handle;
    the engine is also left in namespace["__engine__"] for a caller whose tests raised."""
    if "random" in compiled.test_imports:
        import random
        random.seed(RANDOM_SEED)
    exec(compiled.strict_setup, namespace)
    data_classes = {_qualname(v): v for v in namespace.values() if isinstance(v, type) and _is_heap(v)}
    engine, roots, entry_hid = bind(data_classes)
    namespace["__engine__"] = engine
    for name, hid in roots:  # the candidate's helpers the tests may call (HumanEval's poly); setup wins
        if _exposable_name(name) and name not in namespace:
            namespace[name] = engine.proxy(hid)  # type: ignore[arg-type]
    namespace[entry] = engine.proxy(entry_hid)  # type: ignore[arg-type]
    exec(compiled.strict_tests, namespace)
    return engine


def _exposable_name(name: object) -> bool:
    """A candidate's name the tests may see: not a builtin (a candidate's `abs` must not judge itself)."""
    return type(name) is str and name.isidentifier() and not name.startswith("__") and not hasattr(builtins, name)


# ----------------------------------------------------------------------------- the sandbox child

def oracle_request(problem: Problem, candidate: types.CodeType, record_bytes: int, nonce: str) -> ExecRequest:
    """The oracle run of compiled candidate code; setup and tests travel compiled (marshal) on stdin. The
    record carries `nonce`, which only the driver's locals hold: a record file the candidate wrote is not one."""
    compiled = compiled_problem(problem)
    payload = {"nonce": nonce, "setup": compiled.setup, "candidate": candidate, "strict_setup": compiled.strict_setup,
               "strict_tests": compiled.strict_tests, "test_imports": compiled.test_imports,
               "entry_point": problem.entry_point.split(".")[0], "record_bytes": record_bytes}
    return ExecRequest(ORACLE_PROGRAM, stdin=marshal.dumps(payload), read_files=(RECORD_FILE,),
                       read_back_bytes=record_bytes)


def run_oracle() -> NoReturn:
    """The oracle program inside the sandbox child: setup, candidate code, the tests; then the record."""
    payload = marshal.loads(_read_all(0))
    record_fd = os.open(RECORD_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    record: dict[str, Any] = {"nonce": payload.pop("nonce"), "roots": [], "entry": None, "ops": [], "fail": None,
                              "resource": False}
    try:
        _record(payload, record)
    except BaseException as exc:  # noqa: BLE001 - the record says how it ended; the judge decides
        record["fail"] = record["fail"] or "the oracle's driver failed: " + _kind_text(exc)
        record["resource"] = isinstance(exc, MemoryError)
    try:
        text = _dumps(record)
    except BaseException as exc:  # noqa: BLE001 - e.g. MemoryError
        text = _dumps({"nonce": record["nonce"], "fail": "the record did not encode: " + type(exc).__name__,
                       "resource": True})
    if len(text) > payload["record_bytes"]:
        text = _dumps({"nonce": record["nonce"], "fail": f"the record exceeds {payload['record_bytes']} bytes",
                       "resource": True})
    data = text.encode()
    while data:
        data = data[os.write(record_fd, data):]
    os._exit(0)


def _record(payload: dict, record: dict) -> None:
    pristine_builtins = dict(builtins.__dict__)
    sys.addaudithook(_audit_hook)
    candidate_ns = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(payload["setup"], candidate_ns)
    except BaseException as exc:  # noqa: BLE001
        record["fail"] = "setup code raised " + _kind_text(exc)
        return
    # After the (trusted) setup: what it imported is snapshotted as is, not re-imported for the tests.
    restore_modules = _module_restorer(("builtins", *payload["test_imports"]))
    try:
        exec(payload["candidate"], candidate_ns)
    except SystemExit:
        pass  # exiting ends the module early; the tests still decide
    except BaseException as exc:  # noqa: BLE001
        record["fail"] = "candidate code raised " + _kind_text(exc)
        record["resource"] = isinstance(exc, MemoryError)
        return
    restore_modules()
    gc.disable()  # no cyclic collection, so no candidate __del__ at a moment of its choosing
    entry = payload["entry_point"]
    target = candidate_ns.get(entry)
    if not (isinstance(target, _CALLABLES) or (_is_heap(type(target)) and not _custom_special_methods(type(target)))):
        record["fail"] = f"entry point {entry} not defined" if target is None else f"entry point {entry} is not a function or class"
        return
    helpers = [(name, value) for name, value in candidate_ns.items() if _exposable_name(name) and name != entry
               and (type(value) is types.FunctionType or (isinstance(value, type) and _is_heap(value)))]
    uses_random = "random" in payload["test_imports"]

    def bind(data_classes: dict[str, type]) -> tuple[_Engine, list, int]:
        recorder = _Recorder(data_classes, uses_random)
        roots = [(name, recorder.root(value)) for name, value in helpers]
        record.update(roots=roots, entry=recorder.root(target), ops=recorder.ops)
        return recorder, roots, record["entry"]

    namespace = {"__name__": "__oracle__", "__builtins__": pristine_builtins, "__oracle_eq__": strict_eq}
    try:
        compiled = _CompiledProblem(payload["setup"], payload["strict_setup"], payload["strict_tests"],
                                    tuple(payload["test_imports"]))
        _run_tests(compiled, namespace, entry, bind)
    except BaseException:  # noqa: BLE001 - a failing test: the judge will see it fail too
        pass


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


_DENIED_EVENTS = frozenset({"sys._getframe", "sys._current_frames", "sys._current_exceptions", "gc.get_objects",
                            "gc.get_referrers", "gc.get_referents", "sys.settrace", "sys.setprofile"})
_FRAME_ATTRS = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame"})
_FUNCTION_INTERNALS = frozenset({"__code__", "__defaults__", "__kwdefaults__", "__globals__", "__closure__"})


class IntrospectionDenied(ValueError):
    """A ValueError, as for a frame that does not exist: namedtuple, typing and enum, which ask for their
    caller's module name, carry on without it."""


def _audit_hook(event: str, args: tuple) -> None:
    """Defence in depth in the child: no frames, object walks, tracing or ctypes once candidate code exists."""
    if (event in _DENIED_EVENTS or event.startswith(("ctypes.", "sys.monitoring"))
            or (event == "object.__getattr__" and args[1] in _FRAME_ATTRS)
            or (event == "object.__setattr__" and args[1] in _FUNCTION_INTERNALS)):
        raise IntrospectionDenied(f"the oracle does not allow {event}")


def _module_restorer(names: Sequence[str]) -> Callable[[], None]:
    """Snapshot the namespaces of modules `names`; the returned function puts them back, and drops
    those not yet imported so the tests import them fresh. Only these modules, not all of
    sys.modules: copying every module dict would touch (copy-on-write) most of the forked heap."""
    modules = sys.modules
    saved = {name: (modules[name], dict(modules[name].__dict__)) for name in names if name in modules}
    absent = [name for name in names if name not in saved]
    keep_alive: list[object] = []  # what the candidate put there: no __del__ may run mid-restore

    def restore() -> None:
        for name in absent:
            keep_alive.append(modules.pop(name, None))
        for name, (module, snapshot) in saved.items():
            keep_alive.append(modules.get(name))
            modules[name] = module
            namespace = module.__dict__
            if len(namespace) != len(snapshot) or not all(map(lambda a, b: a is b, namespace.values(), snapshot.values())):
                keep_alive.append(dict(namespace))
                namespace.clear()
                namespace.update(snapshot)
    return restore


# ----------------------------------------------------------------------------- the judge (grader's process)

def judge(problem: Problem, result: ExecResult, nonce: str) -> OracleVerdict:
    """The verdict on one oracle run, from its record alone: the tests replayed against the answers."""
    text = result.files.get(RECORD_FILE, "")
    try:
        record = json.loads(text) if text else None
    except ValueError:
        record = None
    if type(record) is not dict:
        return _without_record(result, "a corrupt record" if text else "no record")
    if record.get("nonce") != nonce:
        return OracleVerdict(WRONG, "oracle: a record the oracle did not write")
    if record.get("fail"):
        return OracleVerdict(ERROR if record.get("resource") is True else WRONG, "oracle: " + str(record["fail"])[:200])
    roots = [pair for pair in record.get("roots", ()) if type(pair) is list and len(pair) == 2]
    namespace = {"__name__": "__oracle__", "__builtins__": dict(builtins.__dict__), "__oracle_eq__": strict_eq}
    random_state = _random_state(problem)
    try:
        engine = _run_tests(compiled_problem(problem), namespace, problem.entry_point.split(".")[0],
                            lambda classes: (_Replayer(classes, record.get("ops")), roots, record.get("entry")))
        failure: BaseException | None = None
    except (Exception, SystemExit, CandidateExit, _Corrupt, _Diverged) as exc:
        failure, engine = exc, namespace.get("__engine__")
    finally:
        if random_state is not None:
            sys.modules["random"].setstate(random_state)
    if isinstance(failure, _Corrupt):
        return OracleVerdict(WRONG, f"oracle: a corrupt record: {failure}"[:200])
    if isinstance(engine, _Replayer) and (engine.diverged or (failure is None and engine.position != len(engine.ops))):
        # an honest record diverges only where the tests are nondeterministic; a forged one may do anything
        return OracleVerdict(WRONG, f"oracle: the tests diverged from the record "
                                    f"({engine.diverged or 'operations left over'})"[:200])
    if isinstance(failure, MemoryError):
        return OracleVerdict(ERROR, "oracle: MemoryError (the memory limit)")
    if failure is not None:
        return OracleVerdict(WRONG, f"oracle: {_describe(failure)}"[:200])
    return OracleVerdict(CORRECT, "")


def _random_state(problem: Problem) -> object:
    """This process's `random` state, when the tests (which seed it) will touch it; restored after."""
    if "random" not in compiled_problem(problem).test_imports:
        return None
    import random
    return random.getstate()


def _without_record(result: ExecResult, what: str) -> OracleVerdict:
    if result.error:
        return OracleVerdict(ERROR, f"oracle: crash ({result.error})"[:200])
    if result.timed_out:
        return OracleVerdict(ERROR, "oracle: timed out")
    if result.signal in _RESOURCE_SIGNALS:
        return OracleVerdict(ERROR, f"oracle: killed by {signal.Signals(result.signal).name} (a resource limit)")
    if result.signal is not None:
        return OracleVerdict(ERROR, f"oracle: crash (signal {result.signal})")
    return OracleVerdict(WRONG, f"oracle: {what} (exit {result.exit_code})")


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines() if type(exc).__module__ in ("builtins", __name__) else []
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _warm_up() -> None:
    """Record a small test run a few times at import, i.e. in the fork-server before it forks: Python 3.11
    specialises bytecode as it runs it, and a child doing that itself would copy those pages (~0.3 ms)."""
    compiled = _compile_problem("class Node:\n    def __init__(self, v):\n        self.v = v\n",
                                ("assert f(1, [2.5], 'a') == [1, 2.5, 'a']", "assert f(0, [], '') != [1]",
                                 "assert g(Node(3)).v == 3", "assert h(x=(1, 2)) == {(1, 2): {3}}"))
    targets = {"f": lambda x, xs, s: [x, *xs, s], "g": lambda node: node, "h": lambda x: {x: {3}}}
    for _ in range(12):
        def bind(data_classes: dict[str, type]) -> tuple[_Engine, list, int]:
            recorder = _Recorder(data_classes, False)
            return recorder, [(name, recorder.root(target)) for name, target in targets.items()], 0
        namespace = {"__name__": "__oracle__", "__oracle_eq__": strict_eq}
        json.loads(_dumps({"ops": _run_tests(compiled, namespace, "f", bind).ops}))  # type: ignore[attr-defined]


_warm_up()
