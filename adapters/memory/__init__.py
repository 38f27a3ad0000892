"""In-memory implementations of the ports: no database, no broker, no shared folder.

For tests (the contract suites in ``tests/contract/`` run them beside the real
adapters) and for anyone embedding flowyard in one process. They keep the same
rules as the real ones: events fold through ``core.task.apply``, the log can
rebuild every row, claims lease, stale attempts are refused. One event loop.
"""

from flowyard.adapters.memory.files import MemoryFiles
from flowyard.adapters.memory.task_store import MemoryTaskStore
from flowyard.adapters.memory.webhook_store import MemoryWebhookStore
from flowyard.adapters.memory.work_queue import MemoryWorkQueue

__all__ = ["MemoryFiles", "MemoryTaskStore", "MemoryWebhookStore", "MemoryWorkQueue"]
