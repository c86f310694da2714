"""A Gluon trainer's optimizer state in a checkpoint, without pickle.

MXNet's own `Trainer.save_states` pickles the updater's states and the optimizer
object, and `load_states` unpickles them: whoever can write a checkpoint could make
a resumed trial run any code. Here the state is data only:

    optimizer.params   the state arrays (mx.nd.save: MXNet's array format, the one the
                       weights are stored in), named '<parameter index>/<position>'
    optimizer.json     the optimizer's name, its update counters and the layout of each
                       parameter's state (an array, none, or a tuple/list of those)

and it is read back against an allow-list: the optimizer the recipe names, counters
that are counts, arrays shaped as their parameters, nothing else.

Checkpoints written before this format hold `trainer.states` (MXNet's pickle). Those
are read once more, as data: `read_legacy_states` walks the pickle's opcodes without
executing any (no class is looked up, no function is called), accepts only the
shapes MXNet writes for its Adam, SGD and NAG states, and refuses anything else with
one message saying how to retrain. The next checkpoint is written in the new format.
"""

from __future__ import annotations

import json
import pickletools
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np

from bench.errors import BenchError
from bench.fileio import read_json, write_json_atomic

STATE_ARRAYS = 'optimizer.params'
STATE_RECORD = 'optimizer.json'
from bench.trial.checkpoint import LEGACY_PICKLE_FILE as LEGACY_STATES  # noqa: E402

FORMAT = 1
# MXNet's optimizer classes by the recipe's names (the only ones a recipe can name).
OPTIMIZER_CLASSES = {'adam': 'Adam', 'sgd': 'SGD', 'nag': 'NAG'}
_MAX_NESTING = 4


class UnreadableOptimizerState(BenchError, RuntimeError):
    """The optimizer state of a checkpoint cannot be read safely; the message says how to
    go on."""


def _retrain_hint(folder: str | Path) -> str:
    return (
        f'it is never unpickled or executed. To train the trial again from its start, '
        f'delete the checkpoint folder {folder} (or run run_sweep.py with --fresh and '
        "--only naming the trial's cell); to resume it, restore the file from a backup"
    )


# ---------------------------------------------------------------- the trainer's state


def _updaters(trainer: mx.gluon.Trainer) -> list[mx.optimizer.Updater]:
    """The trainer's updaters, its kvstore and parameters set up as save/load_states do."""
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    if trainer._params_to_init:
        trainer._init_params()
    if trainer._update_on_kvstore:
        raise ValueError(
            "optimizer state is saved from the trainer's own updaters: build "
            'the trainer with update_on_kvstore=False'
        )
    return trainer._updaters


def _layout(
    state: mx.nd.NDArray | tuple[Any, ...] | list[Any] | None,
) -> str | dict[str, list[Any]]:
    """The shape of a state without its arrays: 'none', 'array', or a tuple/list of those."""
    if state is None:
        return 'none'
    if isinstance(state, mx.nd.NDArray):
        return 'array'
    return {'tuple' if isinstance(state, tuple) else 'list': [_layout(s) for s in state]}


def _flatten(
    state: object, name: str, arrays: dict[str, mx.nd.NDArray]
) -> str | dict[str, list[Any]]:
    """The layout of one parameter's state; its arrays go into `arrays` under `name`."""
    if state is None:
        return 'none'
    if isinstance(state, mx.nd.NDArray):
        arrays[name] = state.as_in_context(mx.cpu())
        return 'array'
    if isinstance(state, (tuple, list)):
        kind = 'tuple' if isinstance(state, tuple) else 'list'
        return {kind: [_flatten(part, f'{name}/{i}', arrays) for i, part in enumerate(state)]}
    raise TypeError(f'optimizer state of type {type(state).__name__} cannot be saved')


def save_optimizer_state(
    trainer: mx.gluon.Trainer, optimizer_name: str, folder: str | Path
) -> None:
    """Write the trainer's optimizer state into `folder` (optimizer.params, .json)."""
    updater = _updaters(trainer)[0]
    optimizer = updater.optimizer
    arrays, layouts = {}, {}
    for index, state in updater.states.items():
        layouts[str(index)] = _flatten(state, str(index), arrays)
    folder = Path(folder)
    mx.nd.save(str(folder / STATE_ARRAYS), arrays)
    write_json_atomic(
        folder / STATE_RECORD,
        {
            'format': FORMAT,
            'optimizer': optimizer_name,
            'num_update': int(optimizer.num_update),
            'index_update_counts': {
                str(device): {str(i): int(c) for i, c in counts.items()}
                for device, counts in optimizer._all_index_update_counts.items()
            },
            'states': layouts,
        },
    )


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**62:
        raise ValueError(f'{what} must be a count, found {value!r:.60}')
    return value


def _index(key: object, parameters: int) -> int:
    if not (isinstance(key, str) and key.isdigit()) or int(key) >= parameters:
        raise ValueError(f'parameter index {key!r:.60} is not one of the {parameters} parameters')
    return int(key)


def _unflatten(
    layout: object,
    name: str,
    arrays: dict[str, mx.nd.NDArray],
    shape: tuple[int, ...],
    depth: int = 0,
) -> mx.nd.NDArray | tuple[Any, ...] | list[Any] | None:
    """A parameter's state from its layout, each array checked against the parameter."""
    if depth > _MAX_NESTING:
        raise ValueError('state nested too deeply')
    if layout == 'none':
        return None
    if layout == 'array':
        if name not in arrays:
            raise ValueError(f'array {name} is missing')
        array = arrays[name]
        if array.shape != shape:
            raise ValueError(f'array {name} has shape {array.shape}, its parameter {shape}')
        return array
    if (
        isinstance(layout, dict)
        and len(layout) == 1
        and set(layout) <= {'tuple', 'list'}
        and isinstance(next(iter(layout.values())), list)
    ):
        kind, parts = next(iter(layout.items()))
        items = [
            _unflatten(part, f'{name}/{i}', arrays, shape, depth + 1)
            for i, part in enumerate(parts)
        ]
        return tuple(items) if kind == 'tuple' else items
    raise ValueError(f'state layout {layout!r:.60} is not one this project writes')


def _apply(
    trainer: mx.gluon.Trainer,
    optimizer_name: str,
    states: dict[int, mx.nd.NDArray | tuple[Any, ...] | list[Any] | None],
    num_update: int,
    counts: dict[int, dict[int, int]],
) -> None:
    """Give every updater of the trainer these states and counters."""
    updaters = _updaters(trainer)
    for updater in updaters:
        updater.states = {index: _copy(state) for index, state in states.items()}
        # Synced to the weights' devices at the next update, as MXNet's load does.
        updater.states_synced = dict.fromkeys(updater.states, False)
    optimizer = updaters[0].optimizer
    for updater in updaters:
        updater.optimizer = optimizer
    trainer._optimizer = optimizer
    optimizer.num_update = num_update
    optimizer._all_index_update_counts = {device: dict(c) for device, c in counts.items()}
    optimizer._index_update_count = optimizer._all_index_update_counts.setdefault(0, {})


def _copy(
    state: mx.nd.NDArray | tuple[Any, ...] | list[Any] | None,
) -> mx.nd.NDArray | tuple[Any, ...] | list[Any] | None:
    if isinstance(state, mx.nd.NDArray):
        return state.copy()
    if isinstance(state, (tuple, list)):
        return type(state)(_copy(part) for part in state)
    return state


def _expected_layouts(trainer: mx.gluon.Trainer) -> dict[str, str | dict[str, list[Any]]]:
    """The state layout the trainer's optimizer makes for each parameter it updates (what a
    resumed trial needs: Adam's two moments, SGD's momentum, ...), by asking it for fresh
    ones; BatchNorm's running statistics have none."""
    optimizer = _updaters(trainer)[0].optimizer
    return {
        str(index): _layout(optimizer.create_state_multi_precision(index, param.data()))
        for index, param in enumerate(trainer._params)
        if param.grad_req != 'null'
    }


def _checked(
    trainer: mx.gluon.Trainer,
    optimizer_name: str,
    record: dict[str, Any],
    arrays: dict[str, mx.nd.NDArray],
    source: Path,
) -> tuple[
    dict[int, mx.nd.NDArray | tuple[Any, ...] | list[Any] | None], int, dict[int, dict[int, int]]
]:
    """(states, num_update, counts) of a record read from `source`, each part checked
    against the trainer (ValueError says what does not fit): every parameter's state
    present, of the layout its optimizer makes, its arrays shaped as the parameter."""
    if record.get('optimizer') != optimizer_name:
        raise ValueError(
            f'holds the state of optimizer {record.get("optimizer")!r:.40}, the '
            f'trial trains with {optimizer_name}'
        )
    shapes = [param.shape for param in trainer._params]
    states = {}
    layouts = record.get('states')
    if not isinstance(layouts, dict):
        raise ValueError('has no state layouts')
    expected = _expected_layouts(trainer)
    missing = sorted(set(expected) - set(layouts), key=int)
    if missing:
        raise ValueError(
            f'has no state for parameter(s) {", ".join(missing[:5])}'
            f'{" ..." if len(missing) > 5 else ""}'
        )
    for key, layout in layouts.items():
        index = _index(key, len(shapes))
        if layout != expected.get(key):
            raise ValueError(
                f'the state of parameter {key} is {layout!r:.60}, its optimizer '
                f'keeps {expected.get(key, "none")!r:.60}'
            )
        states[index] = _unflatten(layout, key, arrays, shapes[index])
    counts_record = record.get('index_update_counts')
    if not isinstance(counts_record, dict):
        raise ValueError('has no update counts')
    counts = {}
    for device, per_index in counts_record.items():
        if not isinstance(per_index, dict):
            raise ValueError('update counts are not a mapping')
        counts[_index(device, 1 << 16)] = {
            _index(i, len(shapes)): _count(c, 'an update count') for i, c in per_index.items()
        }
    return states, _count(record.get('num_update'), 'num_update'), counts


def load_optimizer_state(
    trainer: mx.gluon.Trainer, optimizer_name: str, folder: str | Path
) -> str | None:
    """Restore the trainer's optimizer state from `folder`: the new format, or a legacy
    trainer.states read as data (see the module's docstring). Returns a note to show
    when a legacy file was converted, else None; UnreadableOptimizerState otherwise."""
    folder = Path(folder)
    if (folder / STATE_RECORD).is_file():
        source = folder / STATE_RECORD
        try:
            record = read_json(source)
            if not isinstance(record, dict) or record.get('format') != FORMAT:
                raise ValueError(f'is not format {FORMAT} of this project')
            arrays = (
                mx.nd.load(str(folder / STATE_ARRAYS)) if (folder / STATE_ARRAYS).is_file() else {}
            )
            if not isinstance(arrays, dict):
                raise ValueError(f'{STATE_ARRAYS} holds no named arrays')
            _apply(
                trainer, optimizer_name, *_checked(trainer, optimizer_name, record, arrays, source)
            )
        except (ValueError, OSError, mx.base.MXNetError) as error:
            raise UnreadableOptimizerState(
                f'{source}: cannot be restored ({str(error).splitlines()[0][:200]}); '
                + _retrain_hint(folder)
            ) from None
        return None
    legacy = folder / LEGACY_STATES
    if not legacy.is_file():
        raise UnreadableOptimizerState(
            f'{folder}: holds no optimizer state ({STATE_RECORD} '
            f'or {LEGACY_STATES}); ' + _retrain_hint(folder)
        )
    try:
        # No more array bytes than the parameters' optimizer state can take (Adam: two
        # float32 moments a weight), so a crafted file cannot make it allocate more.
        budget = 1 << 20
        for param in trainer._params:
            budget += 4 * 8 * int(np.prod(param.shape))
        if legacy.stat().st_size > budget:
            raise ValueError(
                f'{legacy.stat().st_size:,} bytes, more than the state of these parameters takes'
            )
        record, arrays = read_legacy_states(legacy.read_bytes(), optimizer_name, budget)
        _apply(trainer, optimizer_name, *_checked(trainer, optimizer_name, record, arrays, legacy))
    except (ValueError, OSError, mx.base.MXNetError) as error:
        raise UnreadableOptimizerState(
            f"{legacy}: optimizer state in MXNet's pickle format that is not the plain data "
            f'an earlier version wrote ({str(error).splitlines()[0][:200]}); '
            + _retrain_hint(folder)
        ) from None
    return (
        f"{legacy}: optimizer state of an earlier version (MXNet's pickle) read as data, "
        'never unpickled; the next checkpoint is written without pickle'
    )


# ---------------------------------------------------------------- the legacy pickle, as data


class _Global:
    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __repr__(self) -> str:
        return f'{self.module}.{self.name}'


class _Call:
    """What a REDUCE or NEWOBJ would have made: never made, only recorded."""

    def __init__(self, function: _Global, args: tuple[Any, ...]) -> None:
        self.function, self.args, self.state = function, args, None


_MARK = object()
_CONSTANTS = {
    'NONE': None,
    'NEWTRUE': True,
    'NEWFALSE': False,
    'EMPTY_DICT': dict,
    'EMPTY_LIST': list,
    'EMPTY_TUPLE': tuple,
}
_VALUES = {
    'BININT',
    'BININT1',
    'BININT2',
    'LONG1',
    'LONG4',
    'INT',
    'LONG',
    'BINFLOAT',
    'FLOAT',
    'SHORT_BINUNICODE',
    'BINUNICODE',
    'BINUNICODE8',
    'UNICODE',
    'SHORT_BINBYTES',
    'BINBYTES',
    'BINBYTES8',
    'BYTEARRAY8',
}
_MAX_OPCODES = 10_000_000


def _pop_to_mark(stack: list[Any]) -> list[Any]:
    for position in range(len(stack) - 1, -1, -1):
        if stack[position] is _MARK:
            items = stack[position + 1 :]
            del stack[position:]
            return items
    raise ValueError('pickle has no mark where one belongs')


def parse_pickle(blob: bytes) -> object:
    """The object a pickle describes, built from its opcodes as inert data: globals are
    names, calls are records of what would have been called. Nothing is imported, looked
    up or executed; an opcode outside plain data and object records is refused
    (ValueError)."""
    try:
        return _parse_pickle(blob)
    except (TypeError, IndexError, KeyError) as error:  # unhashable keys, empty stacks
        raise ValueError(f'malformed pickle ({type(error).__name__}: {error})') from None


def _parse_pickle(blob: bytes) -> object:
    stack, memo = [], {}
    for count, (opcode, arg, _) in enumerate(pickletools.genops(blob)):
        if count > _MAX_OPCODES:
            raise ValueError('pickle too long')
        name = opcode.name
        if name in ('PROTO', 'FRAME'):
            continue
        if name == 'STOP':
            if len(stack) != 1:
                raise ValueError('pickle ends with a malformed stack')
            return stack[0]
        if name in _CONSTANTS:
            value = _CONSTANTS[name]
            stack.append(value() if callable(value) else value)
        elif name in _VALUES:
            stack.append(bytearray(arg) if name == 'BYTEARRAY8' else arg)
        elif name == 'MARK':
            stack.append(_MARK)
        elif name in ('TUPLE1', 'TUPLE2', 'TUPLE3'):
            size = int(name[-1])
            if len(stack) < size:
                raise ValueError('pickle stack underflow')
            items = stack[-size:]
            del stack[-size:]
            stack.append(tuple(items))
        elif name == 'TUPLE':
            stack.append(tuple(_pop_to_mark(stack)))
        elif name == 'LIST':
            stack.append(list(_pop_to_mark(stack)))
        elif name == 'DICT':
            items = _pop_to_mark(stack)
            stack.append(dict(zip(items[::2], items[1::2])))
        elif name in ('APPEND', 'APPENDS'):
            items = [stack.pop()] if name == 'APPEND' else _pop_to_mark(stack)
            if not isinstance(stack[-1], list):
                raise ValueError('pickle appends to something that is not a list')
            stack[-1].extend(items)
        elif name in ('SETITEM', 'SETITEMS'):
            items = stack[-2:] if name == 'SETITEM' else _pop_to_mark(stack)
            if name == 'SETITEM':
                del stack[-2:]
            if not isinstance(stack[-1], dict):
                raise ValueError('pickle sets an item of something that is not a dict')
            for key, value in zip(items[::2], items[1::2]):
                stack[-1][key] = value
        elif name in ('MEMOIZE', 'BINPUT', 'LONG_BINPUT', 'PUT'):
            memo[len(memo) if name == 'MEMOIZE' else arg] = stack[-1]
        elif name in ('BINGET', 'LONG_BINGET', 'GET'):
            if arg not in memo:
                raise ValueError('pickle refers to a value it never stored')
            stack.append(memo[arg])
        elif name == 'GLOBAL':
            module, _, attribute = arg.partition(' ')
            stack.append(_Global(module, attribute))
        elif name == 'STACK_GLOBAL':
            attribute, module = stack.pop(), stack.pop()
            if not (isinstance(module, str) and isinstance(attribute, str)):
                raise ValueError('pickle names a global by something that is not text')
            stack.append(_Global(module, attribute))
        elif name in ('REDUCE', 'NEWOBJ'):
            args, function = stack.pop(), stack.pop()
            if not isinstance(function, _Global) or not isinstance(args, tuple):
                raise ValueError('pickle calls something that is not a named global')
            stack.append(_Call(function, args))
        elif name == 'BUILD':
            state = stack.pop()
            if not isinstance(stack[-1], _Call) or stack[-1].state is not None:
                raise ValueError('pickle sets the state of something that is not an object')
            stack[-1].state = state
        elif name == 'POP':
            stack.pop()
        elif name == 'POP_MARK':
            _pop_to_mark(stack)
        elif name == 'DUP':
            stack.append(stack[-1])
        else:
            raise ValueError(f'pickle opcode {name} is not one of plain data')
    raise ValueError('pickle has no end')


def _is(call: object, module: str, name: str) -> bool:
    return (
        isinstance(call, _Call)
        and isinstance(call.function, _Global)
        and (call.function.module, call.function.name) == (module, name)
    )


def _raw_array_bytes(call: object) -> bytes:
    """The bytes of an NDArray as MXNet pickles it: NDArray(None) with state
    {'handle': bytearray(raw bytes)}."""
    if not (
        _is(call, 'mxnet.ndarray.ndarray', 'NDArray')
        and call.args == (None,)
        and isinstance(call.state, dict)
        and set(call.state) == {'handle'}
    ):
        raise ValueError(
            'a state value is '
            f'{call.function if isinstance(call, _Call) else type(call).__name__}, '
            'not an MXNet array'
        )
    handle = call.state['handle']
    if (
        _is(handle, 'builtins', 'bytearray')
        and len(handle.args) == 1
        and isinstance(handle.args[0], bytes)
        and handle.state is None
    ):
        handle = handle.args[0]
    if not isinstance(handle, (bytes, bytearray)):
        raise ValueError('an array holds something other than bytes')
    return bytes(handle)


class _Budget:
    """The array bytes a legacy file may still decode, and the arrays already decoded: a
    pickle can name one array many times (its memo), MXNet's never does."""

    def __init__(self, limit: int) -> None:
        self.left, self.seen = limit, set()

    def take(self, call: _Call, raw: bytes) -> None:
        if id(call) in self.seen:
            raise ValueError('one array stands for several states: not what MXNet writes')
        self.seen.add(id(call))
        self.left -= len(raw)
        if self.left < 0:
            raise ValueError("more array data than the parameters' state takes")


def _legacy_layout(
    value: object, name: str, arrays: dict[str, mx.nd.NDArray], budget: _Budget, depth: int = 0
) -> str | dict[str, list[Any]]:
    if depth > _MAX_NESTING:
        raise ValueError('state nested too deeply')
    if value is None:
        return 'none'
    if isinstance(value, (tuple, list)):
        kind = 'tuple' if isinstance(value, tuple) else 'list'
        return {
            kind: [
                _legacy_layout(v, f'{name}/{i}', arrays, budget, depth + 1)
                for i, v in enumerate(value)
            ]
        }
    raw = _raw_array_bytes(value)
    budget.take(value, raw)
    array = mx.nd.NDArray(None)
    # MXNet's own parser of its array format: the one that reads every weight file.
    array.__setstate__({'handle': bytearray(raw)})
    arrays[name] = array
    return 'array'


def read_legacy_states(
    blob: bytes, optimizer_name: str, max_array_bytes: int = 1 << 30
) -> tuple[dict[str, Any], dict[str, mx.nd.NDArray]]:
    """(record, arrays) in the new format from the bytes of a legacy trainer.states, decoding
    at most `max_array_bytes` of arrays; ValueError for anything MXNet would not write."""
    parsed = parse_pickle(blob)
    if isinstance(parsed, tuple) and len(parsed) == 2:
        states, optimizer = parsed
    else:
        raise ValueError("not the (states, optimizer) pair Gluon's Trainer saves")
    expected = OPTIMIZER_CLASSES.get(optimizer_name)
    if not _is(optimizer, 'mxnet.optimizer.optimizer', expected or '?') or not isinstance(
        optimizer.state, dict
    ):
        raise ValueError(
            f"the optimizer saved is {getattr(optimizer, 'function', '?')}, not MXNet's {expected}"
        )
    if not isinstance(states, dict):
        raise ValueError('the states are not a mapping')
    arrays, layouts, budget = {}, {}, _Budget(max_array_bytes)
    for index, state in states.items():
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f'a state is keyed by {type(index).__name__}, not a parameter index')
        layouts[str(index)] = _legacy_layout(state, str(index), arrays, budget)
    counts = optimizer.state.get('_all_index_update_counts')
    if not isinstance(counts, dict) or not all(isinstance(c, dict) for c in counts.values()):
        raise ValueError('the optimizer has no update counts')
    record = {
        'format': FORMAT,
        'optimizer': optimizer_name,
        'num_update': optimizer.state.get('num_update'),
        'index_update_counts': {
            str(d): {str(i): c for i, c in per.items()} for d, per in counts.items()
        },
        'states': layouts,
    }
    try:
        json.dumps(record)  # plain data only
    except (TypeError, ValueError):
        raise ValueError("the optimizer's counters are not plain numbers") from None
    return record, arrays
