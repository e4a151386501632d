//! `log` + `env_logger`: every line names the node, as text or as JSON lines.
//!
//! Library code passes the node as the `node` key-value (`info!(node = name; "...")`), so several
//! nodes in one process (the demo, the tests) stay distinguishable. Lines without it are stamped
//! with the process's default node name. `RUST_LOG` wins over the configured level.

use crate::config::LogFormat;
use log::kv::{Key, VisitSource};
use std::io::Write;

struct Fields {
    node: Option<String>,
    extra: Vec<(String, String)>,
}

impl<'kvs> VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: Key<'kvs>, value: log::kv::Value<'kvs>) -> Result<(), log::kv::Error> {
        if key.as_str() == "node" {
            self.node = Some(value.to_string());
        } else {
            self.extra.push((key.as_str().to_string(), value.to_string()));
        }
        Ok(())
    }
}

/// One line the node logged, kept for the API's `/manager/logs`.
#[derive(Debug, Clone)]
pub struct LogLine {
    pub at_ms: u64,
    /// `error`, `warning`, `info`, `debug` or `debug2` (Wazuh's names).
    pub level: &'static str,
    /// Where it comes from (the module).
    pub tag: String,
    pub node: String,
    pub description: String,
}

/// Lines kept, for all the nodes of the process together; older ones go first.
const KEPT_LINES: usize = 5_000;
/// Longest description kept (a longer one is cut there).
const KEPT_LINE_BYTES: usize = 2_048;

fn recent_lines() -> &'static std::sync::Mutex<std::collections::VecDeque<LogLine>> {
    static RECENT: std::sync::OnceLock<std::sync::Mutex<std::collections::VecDeque<LogLine>>> =
        std::sync::OnceLock::new();
    RECENT.get_or_init(Default::default)
}

/// Keeps `record` among the recent lines (as node `default_node` when it names none). The logger
/// calls it for every line it writes; a test's own logger may too.
pub fn remember(record: &log::Record, default_node: &str) {
    let mut fields = Fields { node: None, extra: Vec::new() };
    let _ = record.key_values().visit(&mut fields);
    let mut description = record.args().to_string();
    if description.len() > KEPT_LINE_BYTES {
        let mut cut = KEPT_LINE_BYTES;
        while !description.is_char_boundary(cut) {
            cut -= 1;
        }
        description.truncate(cut);
    }
    let level = match record.level() {
        log::Level::Error => "error",
        log::Level::Warn => "warning",
        log::Level::Info => "info",
        log::Level::Debug => "debug",
        log::Level::Trace => "debug2",
    };
    let line = LogLine {
        at_ms: wazuh_cluster_actors::clock::now_ms(),
        level,
        tag: record.target().to_string(),
        node: fields.node.unwrap_or_else(|| default_node.to_string()),
        description,
    };
    let mut lines = recent_lines().lock().unwrap_or_else(|p| p.into_inner());
    if lines.len() >= KEPT_LINES {
        lines.pop_front();
    }
    lines.push_back(line);
}

/// The recent lines of `node`, oldest first.
pub fn recent(node: &str) -> Vec<LogLine> {
    let lines = recent_lines().lock().unwrap_or_else(|p| p.into_inner());
    lines.iter().filter(|l| l.node == node).cloned().collect()
}

/// Installs the global logger. Call once; later calls are ignored.
pub fn init(format: LogFormat, level: &str, default_node: &str) {
    let default_node = default_node.to_string();
    let default_node_for_ring = default_node.clone();
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(level);
    // actix-server announces its worker threads and accept loop at info; that is noise here.
    builder.parse_filters("actix_server=warn");
    // openraft logs every failed RPC to a member that is down (several lines a second, some at
    // error): the node says what matters itself (who leads, a member it cannot reach, once in a
    // while; a stopped member). RUST_LOG=openraft=debug brings them back.
    builder.parse_filters("openraft=off");
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    builder.format(move |buf, record| {
        let mut fields = Fields { node: None, extra: Vec::new() };
        let _ = record.key_values().visit(&mut fields);
        let node = fields.node.as_deref().unwrap_or(&default_node);
        let ts = buf.timestamp_millis();
        match format {
            LogFormat::Text => {
                write!(buf, "{ts} {:<5} [{node}] {}", record.level(), record.args())?;
                for (k, v) in &fields.extra {
                    write!(buf, " {k}={v}")?;
                }
                writeln!(buf)
            }
            LogFormat::Json => {
                let mut obj = serde_json::Map::new();
                obj.insert("ts".into(), ts.to_string().into());
                obj.insert("level".into(), record.level().as_str().to_ascii_lowercase().into());
                obj.insert("node".into(), node.into());
                obj.insert("target".into(), record.target().into());
                obj.insert("msg".into(), record.args().to_string().into());
                for (k, v) in fields.extra {
                    obj.insert(k, v.into());
                }
                writeln!(buf, "{}", serde_json::Value::Object(obj))
            }
        }
    });
    let logger = builder.build();
    let max = logger.filter();
    let throttled = Throttled {
        inner: logger,
        said: std::sync::Mutex::new(std::collections::HashMap::new()),
        default_node: default_node_for_ring,
    };
    if log::set_boxed_logger(Box::new(throttled)).is_ok() {
        log::set_max_level(max);
    }
}

/// How often the HTTP stack may say the same kind of thing (see [`Throttled`]).
const HTTP_STACK_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The logger, with what the HTTP stack says about its clients held to one line per 10 s per
/// source: actix-http writes an ERROR line for every malformed request ("stream error: ..."), and
/// actix-server one for every failed accept, so without this a stranger decides how much the node
/// logs. Such a line is a client's doing, so it is said as a warning, with how many like it went
/// unsaid since the last one.
struct Throttled {
    inner: env_logger::Logger,
    said: std::sync::Mutex<std::collections::HashMap<String, wazuh_cluster_actors::throttle::Throttle>>,
    default_node: String,
}

impl Throttled {
    /// Writes `record` and keeps it among the recent lines.
    fn write(&self, record: &log::Record) {
        remember(record, &self.default_node);
        log::Log::log(&self.inner, record);
    }

    /// Whether `record` comes from the HTTP stack's handling of clients.
    fn from_http_stack(record: &log::Record) -> bool {
        let t = record.target();
        record.level() <= log::Level::Warn && (t.starts_with("actix_http") || t.starts_with("actix_server"))
    }
}

impl log::Log for Throttled {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        if !self.inner.matches(record) {
            return;
        }
        if !Self::from_http_stack(record) {
            return self.write(record);
        }
        let unsaid = {
            let mut said = self.said.lock().unwrap_or_else(|p| p.into_inner());
            // A handful of sources (actix's modules): the map stays that small.
            let throttle = said
                .entry(record.target().to_string())
                .or_insert_with(|| wazuh_cluster_actors::throttle::Throttle::new(HTTP_STACK_EVERY));
            throttle.allow()
        };
        let Some(unsaid) = unsaid else { return };
        let suffix = wazuh_cluster_actors::throttle::suppressed(unsaid);
        self.write(
            &log::Record::builder()
                .level(log::Level::Warn)
                .target(record.target())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .args(format_args!("API: {}{suffix}", record.args()))
                .build(),
        );
    }

    fn flush(&self) {
        self.inner.flush()
    }
}
