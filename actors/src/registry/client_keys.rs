//! `etc/client.keys`, byte-compatible with Wazuh's: one `ID NAME IP KEY` line per agent, mode 0640,
//! replaced atomically (temp file, fsync, rename, fsync of the directory) so that a reader (or a
//! crash) only ever sees the old or the new file.

use super::schema::fmt_id;
use super::store::StoreError;
use std::path::Path;
use wazuh_cluster_protocol::message::AgentEntry;

/// The file's text for `entries`.
pub fn render(entries: &[AgentEntry]) -> String {
    let mut text = String::with_capacity(entries.len() * 96);
    for e in entries {
        text.push_str(&format!("{} {} {} {}\n", fmt_id(e.id), e.name, e.ip, e.key));
    }
    text
}

/// Writes `<data_dir>/etc/client.keys` for `entries`, atomically.
pub fn write(data_dir: &Path, entries: &[AgentEntry]) -> Result<(), StoreError> {
    let etc = data_dir.join("etc");
    std::fs::create_dir_all(&etc).map_err(StoreError::io(&etc))?;
    let target = etc.join("client.keys");
    let tmp = etc.join(".client.keys.tmp");
    let text = render(entries);
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o640);
        }
        let mut f = opts.open(&tmp).map_err(StoreError::io(&tmp))?;
        f.write_all(text.as_bytes()).map_err(StoreError::io(&tmp))?;
        f.sync_all().map_err(StoreError::io(&tmp))?;
    }
    std::fs::rename(&tmp, &target).map_err(StoreError::io(&target))?;
    if let Ok(d) = std::fs::File::open(&etc) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_id_name_ip_key_and_the_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let e = |id, name: &str| AgentEntry {
            id,
            name: name.into(),
            ip: "any".into(),
            key: "ab".repeat(32),
            groups: vec!["default".into()],
        };
        write(dir.path(), &[e(1, "web"), e(12, "db")]).unwrap();
        let text = std::fs::read_to_string(dir.path().join("etc/client.keys")).unwrap();
        assert_eq!(text, format!("001 web any {k}\n012 db any {k}\n", k = "ab".repeat(32)));
        write(dir.path(), &[]).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("etc/client.keys")).unwrap(), "");
        assert!(!dir.path().join("etc/.client.keys.tmp").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("etc/client.keys")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o640);
        }
    }
}
