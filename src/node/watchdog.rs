//! The node's watchdog: a heartbeat its event loop must touch, and a thread of its own that ends
//! the process when the loop has made no progress for `node.stall_timeout`, so that its supervisor
//! (systemd, Kubernetes, the container engine) starts it again and its sockets close (its agents
//! then reconnect elsewhere, or here once it is back). Under systemd (`Type=notify`) the loop also
//! says `READY=1` once the node serves and `WATCHDOG=1` every half of the unit's `WatchdogSec`, so
//! a stuck loop is also caught by systemd itself. `GET /health` answers 503 while the heartbeat is
//! late, so a liveness probe sees the loop, not just the process.

use log::{error, info, warn};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How often the loop touches the heartbeat.
const BEAT: Duration = Duration::from_millis(500);
/// A heartbeat later than this makes `GET /health` answer 503.
pub const LATE: Duration = Duration::from_secs(3);

fn monotonic_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// When the event loop last made progress.
#[derive(Clone, Debug)]
pub struct Heartbeat(Arc<AtomicU64>);

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat(Arc::new(AtomicU64::new(monotonic_ms())))
    }
}

impl Heartbeat {
    fn touch(&self) {
        self.0.store(monotonic_ms(), Ordering::Relaxed);
    }

    /// How long since the loop last touched it.
    pub fn age(&self) -> Duration {
        Duration::from_millis(monotonic_ms().saturating_sub(self.0.load(Ordering::Relaxed)))
    }
}

/// The process's heartbeat, once [`start`] made it (`wazuh-cluster run`; nodes run in a test's
/// process have none).
pub fn heartbeat() -> Option<&'static Heartbeat> {
    PROCESS.get()
}

static PROCESS: OnceLock<Heartbeat> = OnceLock::new();

/// Starts the heartbeat on the current (actix) event loop, and the watchdog thread when
/// `stall_timeout` is not zero.
pub fn start(node: &str, stall_timeout: Duration) -> Heartbeat {
    let beat = Heartbeat::default();
    let _ = PROCESS.set(beat.clone());
    let on_loop = beat.clone();
    let pings = systemd_watchdog_every();
    actix_rt::spawn(async move {
        let mut last_ping = Instant::now();
        loop {
            on_loop.touch();
            if let Some(every) = pings {
                if last_ping.elapsed() >= every {
                    notify("WATCHDOG=1");
                    last_ping = Instant::now();
                }
            }
            tokio::time::sleep(BEAT).await;
        }
    });
    if !stall_timeout.is_zero() {
        let (watched, name) = (beat.clone(), node.to_string());
        let spawned = std::thread::Builder::new().name("watchdog".into()).spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            let age = watched.age();
            if age >= stall_timeout {
                error!(node = name.as_str(); "the node's event loop has made no progress for {} s (node.stall_timeout): ending the process for its supervisor to start it again", age.as_secs());
                log::logger().flush();
                std::process::exit(1);
            }
        });
        if let Err(e) = spawned {
            warn!(node = node; "cannot start the watchdog thread: {e}; a stuck event loop will not end the process");
        }
    }
    beat
}

/// Half the unit's `WatchdogSec` when systemd watches this process (`WATCHDOG_USEC`, and
/// `WATCHDOG_PID` naming it when set).
fn systemd_watchdog_every() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok().and_then(|p| p.parse::<u32>().ok()) {
        if pid != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Tells systemd `state` (`READY=1`, `WATCHDOG=1`) on `NOTIFY_SOCKET`, when it is set. Best effort:
/// a failure is logged once.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let sent = notify_to(&path, state);
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    match sent {
        Ok(()) if state == "READY=1" => info!("told systemd the node is ready"),
        Ok(()) => {}
        Err(e) if !SAID.swap(true, Ordering::Relaxed) => warn!("cannot notify systemd ({state}): {e}"),
        Err(_) => {}
    }
}

/// Sends `state` to the notification socket `path` (`@name`: an abstract one).
fn notify_to(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    match path.as_encoded_bytes().strip_prefix(b"@") {
        #[cfg(target_os = "linux")]
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
        }
        _ => {
            socket.send_to(state.as_bytes(), path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_reaches_the_socket_systemd_names() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("notify");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        notify_to(path.as_os_str(), "WATCHDOG=1").expect("sent");
        let mut buf = [0u8; 64];
        listener.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let n = listener.recv(&mut buf).expect("a datagram");
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    #[test]
    fn a_heartbeat_ages_until_touched() {
        let beat = Heartbeat::default();
        std::thread::sleep(Duration::from_millis(30));
        let before = beat.age();
        assert!(before >= Duration::from_millis(30));
        beat.touch();
        assert!(beat.age() < before, "a touch makes it young again");
    }
}
