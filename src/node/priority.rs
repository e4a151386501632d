//! The event loop's share of the CPU (`node.event_loop_nice`).
//!
//! A node's event loop carries its agents' traffic, the cluster channel and the jobs; its other
//! threads answer the API, take enrollments (TLS), sign users in and write the registry. On Linux
//! the nice value is a thread's own, so raising it on the event loop's thread alone, once the other
//! threads are started, makes that loop wait for them (and for a master on the same host) when the
//! CPU is contended, and changes nothing when it is not. Threads the loop starts later (its pool for
//! blocking work) inherit its value, as work it hands off should. Raising one's own nice value needs
//! no privilege.

use log::{info, warn};

/// Adds `delta` to the calling thread's nice value (at most 19), and says so in the log. A failure
/// leaves the thread as it was and is logged: the node runs the same, only without yielding.
pub fn yield_this_thread(node: &str, delta: i32) {
    if delta == 0 {
        return;
    }
    match raise_nice(delta) {
        Ok((from, to)) => {
            info!(node = node; "the event loop runs at nice {to} (was {from}; node.event_loop_nice = {delta}): under CPU contention it waits for the API, enrollment and the registry's threads")
        }
        Err(e) => {
            warn!(node = node; "could not raise the event loop's nice value by {delta} (node.event_loop_nice): {e}; it keeps the process's")
        }
    }
}

/// The calling thread's nice value before and after adding `delta` (clamped to 19).
fn raise_nice(delta: i32) -> std::io::Result<(i32, i32)> {
    // `None`: the calling thread (Linux keeps a nice value per thread).
    let from = rustix::process::getpriority_process(None)?;
    let to = from.saturating_add(delta).min(19);
    rustix::process::setpriority_process(None, to)?;
    Ok((from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thread that asks yields, and only that thread: the one that started it (the API's, the
    /// registry's in a node) keeps its value.
    #[test]
    fn only_the_calling_thread_yields() {
        let ours = rustix::process::getpriority_process(None).unwrap();
        let (before, after, again) = std::thread::spawn(|| {
            let before = rustix::process::getpriority_process(None).unwrap();
            yield_this_thread("test", 5);
            let after = rustix::process::getpriority_process(None).unwrap();
            // Never past 19, however much is asked.
            yield_this_thread("test", 19);
            (before, after, rustix::process::getpriority_process(None).unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(before, ours);
        assert_eq!(after, (before + 5).min(19));
        assert_eq!(again, 19);
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), ours, "the other thread is unchanged");
    }

    #[test]
    fn zero_changes_nothing() {
        let (before, after) = std::thread::spawn(|| {
            let before = rustix::process::getpriority_process(None).unwrap();
            yield_this_thread("test", 0);
            (before, rustix::process::getpriority_process(None).unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(before, after);
    }
}
