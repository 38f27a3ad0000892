// Event types, as core/events.py EVENT_TYPES lists them (a unit test keeps them equal).
export const EVENT_TYPES = [
  "task.created",
  "task.claimed",
  "task.progress",
  "task.cancel_requested",
  "task.requeued",
  "task.retried",
  "task.reprioritized",
  "task.done",
];
