//! RabbitMQ task payloads of the persister and the hydrator: a checked task or poison.
#![no_main]
use huddle_broker::{TaskError, TaskQueue};
use huddle_persister::Task;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for queue in [TaskQueue::Flush, TaskQueue::PersistChunk, TaskQueue::Hydrate] {
        match huddle_persister::decode_task(queue, data) {
            Ok(Task::PersistChunk { from, to, .. }) => assert!(from >= 1 && from <= to),
            Ok(Task::Flush { .. }) | Err(TaskError::Poison(_)) => {}
            Err(other) => panic!("not poison: {other:?}"),
        }
    }
    match huddle_hydrator::decode_rewarm_task(data) {
        Ok(_) | Err(TaskError::Poison(_)) => {}
        Err(other) => panic!("not poison: {other:?}"),
    }
});
