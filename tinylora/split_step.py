"""One training step split over two processes: data parallelism across the cores of a small machine.

A step of the default run is too small for a second intra-op thread to help: its products are a few hundred
thousand operations each, so two OpenMP threads mostly wait on each other. Two processes, each on its own
core with one thread, can split the batch instead. `HalfBatchHelper` forks a helper process that computes
the gradients of each batch's second half while the calling process computes the first half, then the caller
adds the two and updates. The weights that train and their gradients live in anonymous shared memory
(mmap with MAP_SHARED, made before the fork), so every step costs only two pipe messages and one addition
per parameter.

Each half's loss is its sum divided by the whole batch's size, so the two gradients add up to the whole
batch's mean gradient, with the float sums in another order than one process takes. The caller adds the
second half's gradient to the first's in a fixed order, so the same seed gives the same numbers. Like a
change of thread count, the split changes a run's last bits (see BENCHMARKS.md for what that does to
results).

The helper is a fork: it inherits the model, the data and the forward function as they are at the fork, and
receives later updates of the trained weights only. It exits when the pipe from its parent closes, so it never
outlives a parent that exits or is killed.
"""

import mmap
import os
import signal
import struct
from collections.abc import Callable

import torch

# Command to the helper: what to do (train or evaluate), the first and last position of its rows, and the
# batch size that a training half's loss sum is divided by. Training rows come through the shared index
# buffer, evaluation rows are a range of the validation data. Reply: 0 and two numbers (the half's loss and 0,
# or its correct count and loss sum), or 1, the length of an error message and 0, followed by the message.
_COMMAND = struct.Struct("<Biii")
_REPLY = struct.Struct("<Bdd")
_TRAIN, _EVALUATE = 0, 1
_MAX_ERROR_BYTES = 4096

_processes = 1  # processes per training step, set once per worker by `set_step_processes`

# The parent's ends of every live helper's pipes in this process. A new helper closes them at once: a copy
# of another helper's command pipe kept open in it would keep that helper from ever reading the end of it.
_open_ends: set[int] = set()


def set_step_processes(count: int) -> None:
    """Set how many processes share a training step on the fast path in this process: 1 or 2."""
    global _processes
    if count not in (1, 2):
        raise ValueError(f"step processes must be 1 or 2, got {count!r}")
    _processes = count


def step_processes() -> int:
    """Return the processes per training step that `set_step_processes` set (1 by default)."""
    return _processes


def _shared_tensor(like: list[torch.Tensor] | int, dtype: torch.dtype) -> tuple[mmap.mmap, torch.Tensor]:
    """Return anonymous shared memory and a flat tensor over it, with room for `like` (tensors or a count)."""
    numel = like if isinstance(like, int) else sum(t.numel() for t in like)
    size = max(1, numel) * torch.empty((), dtype=dtype).element_size()
    memory = mmap.mmap(-1, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    return memory, torch.frombuffer(memory, dtype=dtype, count=max(1, numel))


def _views(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """Split `flat` into views with the shapes of `like`, in order."""
    views, offset = [], 0
    for tensor in like:
        views.append(flat[offset:offset + tensor.numel()].view(tensor.shape))
        offset += tensor.numel()
    return views


def _read_exactly(fd: int, size: int) -> bytes:
    """Read `size` bytes from `fd`; return fewer only when the other end closed."""
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            break
        data += chunk
    return data


class HelperFailed(RuntimeError):
    """The helper process stopped or reported an error; the run cannot go on with a split step."""


class HalfBatchHelper:
    """A forked process that computes the second half of every batch's gradients.

    `params` are the trained parameters, in the optimizer's order. `half_loss(rows, batch_size)` returns the
    summed training loss of `rows` (a tensor of row indices) divided by `batch_size`. `half_evaluation(rows)`
    returns the correct count and the summed loss on the validation rows `rows` (a slice). Both processes call
    them. Use as a context manager: leaving it stops the helper and gives the parameters back their own memory
    (safetensors rejects tensors that share a buffer).
    """

    def __init__(self, params: list[torch.Tensor], half_loss: Callable[[torch.Tensor, int], torch.Tensor],
                 half_evaluation: Callable[[slice], tuple[float, float]], max_rows: int):
        if any(param.dtype != torch.float32 for param in params):
            raise ValueError("a split step shares float32 weights only; train in one process for other dtypes")
        self.params = params
        self.half_loss = half_loss
        self.half_evaluation = half_evaluation
        self._param_memory, flat = _shared_tensor(params, torch.float32)
        self._grad_memory, grad_flat = _shared_tensor(params, torch.float32)
        self._rows_memory, self._rows = _shared_tensor(max_rows, torch.int64)
        self._grads = _views(grad_flat, params)
        for param, view in zip(params, _views(flat, params)):
            view.copy_(param.detach())
            param.data = view
        command_read, self._command = os.pipe()
        self._reply, reply_write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the helper: never returns
            for fd in _open_ends | {self._command, self._reply}:
                os.close(fd)
            code = 0
            try:
                self._serve(command_read, reply_write)
            except BaseException:  # the parent reads the reply pipe's end as the failure
                code = 1
            os._exit(code)
        os.close(command_read)
        os.close(reply_write)
        _open_ends.update((self._command, self._reply))
        self._pending = False

    def _serve(self, command_read: int, reply_write: int) -> None:
        """Compute half-batch gradients on command until the parent closes the command pipe."""
        torch.set_num_threads(1)
        while True:
            command = _read_exactly(command_read, _COMMAND.size)
            if len(command) < _COMMAND.size:
                return
            kind, start, stop, batch_size = _COMMAND.unpack(command)
            try:
                if kind == _EVALUATE:
                    reply = _REPLY.pack(0, *self.half_evaluation(slice(start, stop)))
                else:
                    reply = _REPLY.pack(0, self._train_half(self._rows[start:stop], batch_size), 0.0)
            except Exception as error:
                message = f"{type(error).__name__}: {error}".encode()[:_MAX_ERROR_BYTES]
                reply = _REPLY.pack(1, float(len(message)), 0.0) + message
            os.write(reply_write, reply)

    def _train_half(self, rows: torch.Tensor, batch_size: int) -> float:
        """Compute the gradients of `rows` into the shared gradient buffers; return their loss."""
        with torch.enable_grad():
            for param in self.params:
                param.grad = None
            loss = self.half_loss(rows, batch_size)
            loss.backward()
        for grad, param in zip(self._grads, self.params):
            if param.grad is None:
                grad.zero_()
            else:
                grad.copy_(param.grad)
        return loss.item()

    def start(self, rows: torch.Tensor, split: int, batch_size: int) -> None:
        """Send rows `rows[split:]` to the helper; it starts on them while the caller computes `rows[:split]`."""
        self._rows[:len(rows)].copy_(rows)
        self._send(_TRAIN, split, len(rows), batch_size)

    def collect(self) -> float:
        """Wait for the helper's half, add its gradients to the parameters' and return its loss."""
        loss, _ = self._receive()
        for param, grad in zip(self.params, self._grads):
            if param.grad is None:
                param.grad = grad.clone()
            else:
                param.grad.add_(grad)
        return loss

    def evaluate(self, n: int) -> tuple[float, float]:
        """Return the correct count and summed loss on validation rows 0 to `n`, half of them in the helper."""
        split = n // 2
        self._send(_EVALUATE, split, n, 0)
        correct, loss_sum = self.half_evaluation(slice(0, split))
        helper_correct, helper_loss_sum = self._receive()
        return correct + helper_correct, loss_sum + helper_loss_sum

    def _send(self, kind: int, start: int, stop: int, batch_size: int) -> None:
        if self._pending:
            raise HelperFailed("the helper's last half was never collected")
        try:
            os.write(self._command, _COMMAND.pack(kind, start, stop, batch_size))
        except BrokenPipeError:
            raise self._exited() from None
        self._pending = True

    def _receive(self) -> tuple[float, float]:
        """Wait for the helper's reply to the last command; raise HelperFailed when it failed or exited."""
        self._pending = False
        reply = _read_exactly(self._reply, _REPLY.size)
        if len(reply) < _REPLY.size:
            raise self._exited()
        status, first, second = _REPLY.unpack(reply)
        if status != 0:
            message = _read_exactly(self._reply, int(first)).decode(errors="replace")
            raise HelperFailed(f"the training step's helper process failed: {message}")
        return first, second

    def _exited(self) -> HelperFailed:
        return HelperFailed(f"the training step's helper process {self.pid} exited; train again, or set "
                            f"TINYLORA_STEP_PROCESSES=1 to train in one process")

    def close(self) -> None:
        """Stop the helper and give every parameter its own memory again."""
        if self.pid == 0:
            return
        for fd in (self._command, self._reply):
            _open_ends.discard(fd)
            os.close(fd)
        # The helper keeps no state worth saving, so it is killed rather than trusted to see the pipe close.
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):  # already gone and waited for
            pass
        self.pid = 0
        # Give each parameter its own memory: the shared mappings go once no tensor views them.
        for param in self.params:
            param.data = param.data.clone()
        self._grads = []
        self._rows = torch.empty(0, dtype=torch.int64)
        self._param_memory = self._grad_memory = self._rows_memory = None

    def __enter__(self) -> "HalfBatchHelper":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
