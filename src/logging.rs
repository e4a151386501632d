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

/// Installs the global logger. Call once; later calls are ignored.
pub fn init(format: LogFormat, level: &str, default_node: &str) {
    let default_node = default_node.to_string();
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
    let throttled = Throttled { inner: logger, said: std::sync::Mutex::new(std::collections::HashMap::new()) };
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
}

impl Throttled {
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
            return self.inner.log(record);
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
        self.inner.log(
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
