"""Steppers of one framework in a process of their own, timed in turn with the others.

MXNet and PyTorch in one process share one OpenMP runtime (both load `libgomp.so.1`;
the first one loaded serves both). MXNet's operators run on its engine's worker thread
and PyTorch's on the main thread, each with a team of OMP_NUM_THREADS threads: once
both teams exist, the runtime manages more threads than there are cores, and libgomp
then spins only briefly before putting a waiting thread to sleep ("throttled" spinning).
Each of PyTorch's parallel regions then starts by waking sleeping threads: on a 2-core
machine a ResNet-20 step took about 850 context switches instead of none, and the
torch backend trained about 20 % slower than in a process of its own, where every
trial runs. So where both frameworks are measured, PyTorch's steppers live in a child
process, and the rounds still alternate (bench.benchmark.timing.interleaved_rates):
each side idles in a blocking read while the other is timed.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import pickle
import signal
import traceback
from collections.abc import Callable, Hashable, Iterator, Mapping
from multiprocessing.connection import Connection
from typing import Any

from bench.benchmark.timing import round_seconds, warm_up
from bench.errors import BenchError

Steppers = Mapping[Hashable, Callable[[], object]]


class StepperProcess:
    """A spawned process holding the steppers `build(*arguments)` returns; `stepper(name)`
    gives a stand-in for interleaved_rates, `call(function, *arguments)` runs anything
    else there (module-level functions and picklable arguments, as spawn needs)."""

    def __init__(self, what: str, build: Callable[..., Steppers], *arguments: Any) -> None:
        self.what = what  # for messages: 'the torch steppers'
        context = multiprocessing.get_context('spawn')  # nothing of this process's runtimes
        self._connection, child_end = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child_end, build, arguments), name=what, daemon=True
        )
        # The child inherits a blocked Ctrl-C and ignores it from _serve on: loading its
        # arguments imports the framework, seconds in which a Ctrl-C (sent to the whole
        # process group) would print the child's traceback. This process gets it after.
        with _ctrl_c_blocked():
            self._process.start()
        child_end.close()
        self.names: list[Hashable] = self._answer()

    def stepper(self, name: Hashable) -> RemoteStepper:
        if name not in self.names:
            raise KeyError(f'{self.what} have no stepper {name!r}')
        return RemoteStepper(self, name)

    def call(self, function: Callable[..., Any], *arguments: Any) -> Any:
        return self._request('call', function, arguments)

    def close(self, wait: bool = True) -> None:
        """Stop the process: asked to, once it has answered (`wait`), else at once (an
        interrupt, an error: what it is doing is not wanted any more)."""
        if wait and self._process.is_alive():
            try:
                self._connection.send(('stop',))
            except (BrokenPipeError, OSError):
                pass
            self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()
        self._connection.close()

    def __enter__(self) -> StepperProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        self.close(wait=kind is None)

    def _request(self, *message: Any) -> Any:
        self._connection.send(message)
        return self._answer()

    def _answer(self) -> Any:
        try:
            status, value = self._connection.recv()
        except (EOFError, OSError):
            self._process.join(timeout=5)
            raise RuntimeError(
                f'the process measuring {self.what} ended without an answer (exit code '
                f'{self._process.exitcode}); its own output above says why'
            ) from None
        if status == 'error':
            error, child_traceback = value
            if isinstance(error, BenchError):  # a message for the user, as it stands
                raise error
            raise error from ChildTraceback(child_traceback)
        return value


class ChildTraceback(Exception):
    """Where an error of the child process was raised, as the child printed it."""

    def __init__(self, text: str) -> None:
        super().__init__(f'in the child process:\n{text}')


@contextlib.contextmanager
def _ctrl_c_blocked() -> Iterator[None]:
    if not hasattr(signal, 'pthread_sigmask'):  # not POSIX: nothing to inherit
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class RemoteStepper:
    """Stands in a stepper mapping for one stepper of a StepperProcess: interleaved_rates
    asks it for its warm-up and each round's seconds, which the child times itself."""

    def __init__(self, process: StepperProcess, name: Hashable) -> None:
        self._process, self.name = process, name

    def warm_up(self, steps: int) -> None:
        self._process._request('warm_up', self.name, steps)

    def round_seconds(self, steps: int) -> float:
        return self._process._request('round_seconds', self.name, steps)


def _serve(connection: Connection, build: Callable[..., Steppers], arguments: tuple) -> None:
    # Ctrl-C reaches the whole process group: the parent stops this process (close).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, 'pthread_sigmask'):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        steppers = build(*arguments)
    except BaseException as error:  # every failure goes back to the parent
        _send_error(connection, error)
        return
    connection.send(('ok', list(steppers)))
    handlers = {
        'warm_up': lambda name, steps: warm_up(steppers[name], steps),
        'round_seconds': lambda name, steps: round_seconds(steppers[name], steps),
        'call': lambda function, function_arguments: function(*function_arguments),
    }
    while True:
        try:
            kind, *message = connection.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if kind == 'stop':
            return
        try:
            connection.send(('ok', handlers[kind](*message)))
        except BaseException as error:
            _send_error(connection, error)


def _send_error(connection: Connection, error: BaseException) -> None:
    """The error and its traceback's text: the error itself where it survives pickling
    (a BenchError whole: message, hint, exit code; some exceptions pickle but cannot be
    rebuilt, their __init__ asking for more than their args), else a RuntimeError."""
    text = ''.join(traceback.format_exception(type(error), error, error.__traceback__))
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # any failure to pickle or to rebuild
        error = RuntimeError(f'{type(error).__name__}: {error}')
    connection.send(('error', (error, text)))
