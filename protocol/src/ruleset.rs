//! What a rule, decoder or CDB list file must look like before the cluster distributes it.
//!
//! analysisd reads rules and decoders as XML fragments (several top-level elements, comments that
//! may hold `--`, a bare `&` taken as text) and CDB lists as `key:value` lines. A file that does
//! not parse would make every node's analysisd refuse its next reload, so the master checks each
//! one (taken through the API or found on its disk) and keeps a refused one out of sync:
//!
//! - rules and decoders (`*.xml` under `etc/rules`, `etc/decoders`): well-formed (every element
//!   closed in order, attributes quoted and not repeated), no text outside the elements, no
//!   document type or entity declarations (`<!DOCTYPE`, `<!ENTITY`, ...), at most
//!   [`MAX_XML_FILE`] bytes;
//! - CDB lists (any file under `etc/lists`): not empty, at most [`MAX_LIST_FILE`] bytes; taken
//!   through the API, every line `key:value` as Wazuh's API defines it (a key or value holding `:`
//!   is quoted); found on disk, as analysisd reads them (it compiles them, skipping blank lines):
//!   every other line holds a key before its first `:` (Wazuh's own lists have such lines, e.g.
//!   `TEMPLATE:# ... https://...`, which its API would refuse);
//! - all of them UTF-8 text without NUL bytes.
//!
//! Every refusal names the line (1-based) it was found on.

use crate::message::RulesetRoot;

/// Largest rule or decoder file (Wazuh's largest ships at 120 KB).
pub const MAX_XML_FILE: usize = 2 << 20;
/// Largest CDB list file (Wazuh's API takes uploads up to 10 MiB).
pub const MAX_LIST_FILE: usize = 10 << 20;
/// Largest other file under the rule and decoder roots (analysisd reads only `*.xml` there).
pub const MAX_OTHER_FILE: usize = 10 << 20;
/// Deepest element nesting accepted (Wazuh's rules nest three or four levels).
pub const MAX_DEPTH: usize = 64;

/// Why a ruleset file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{size} bytes, more than the {max} a file of this kind may hold")]
    TooLarge { size: usize, max: usize },
    #[error("empty file")]
    Empty,
    #[error("line {line}: not UTF-8 text")]
    NotText { line: usize },
    #[error("line {line}: NUL byte")]
    Nul { line: usize },
    #[error("line {line}: {why}")]
    Xml { line: usize, why: String },
    #[error("line {line}: document type and entity declarations are not allowed")]
    Dtd { line: usize },
    #[error("line {line}: not a CDB list line (key:value; a key or value holding ':' is quoted)")]
    List { line: usize },
}

/// How a file under the ruleset roots is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Xml,
    List,
    /// Not read by analysisd (not `*.xml` under rules or decoders): only the size is capped.
    Other,
}

/// The kind of the file at `rel` (a sync path), or `None` outside the ruleset roots.
pub fn kind_of(rel: &str) -> Option<Kind> {
    let under = |root: &str| rel.strip_prefix(root).is_some_and(|r| r.starts_with('/'));
    if under(RulesetRoot::Lists.dir()) {
        Some(Kind::List)
    } else if under(RulesetRoot::Rules.dir()) || under(RulesetRoot::Decoders.dir()) {
        Some(if rel.ends_with(".xml") { Kind::Xml } else { Kind::Other })
    } else {
        None
    }
}

/// Where a file comes from, which decides how strictly CDB lists are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Uploaded through the API: Wazuh's API rule for list lines.
    Api,
    /// Found on the master's disk: analysisd's own reading of list lines.
    Disk,
}

/// Checks the contents of the ruleset file found on disk at `rel`; files outside the ruleset
/// roots pass.
pub fn check_path(rel: &str, content: &[u8]) -> Result<(), Refused> {
    match kind_of(rel) {
        Some(kind) => check(kind, content, Source::Disk),
        None => Ok(()),
    }
}

/// The largest file of `kind` accepted.
pub fn max_size(kind: Kind) -> usize {
    match kind {
        Kind::Xml => MAX_XML_FILE,
        Kind::List => MAX_LIST_FILE,
        Kind::Other => MAX_OTHER_FILE,
    }
}

/// Checks `content` as a file of `kind` from `source`.
pub fn check(kind: Kind, content: &[u8], source: Source) -> Result<(), Refused> {
    let max = max_size(kind);
    if content.len() > max {
        return Err(Refused::TooLarge { size: content.len(), max });
    }
    if kind == Kind::Other {
        return Ok(());
    }
    if content.is_empty() {
        return Err(Refused::Empty);
    }
    let text =
        std::str::from_utf8(content).map_err(|e| Refused::NotText { line: line_at(content, e.valid_up_to()) })?;
    if let Some(at) = text.find('\0') {
        return Err(Refused::Nul { line: line_at(content, at) });
    }
    match kind {
        Kind::Xml => check_xml(text),
        Kind::List => check_list(text, source),
        Kind::Other => Ok(()),
    }
}

/// The 1-based line of byte offset `at`.
fn line_at(content: &[u8], at: usize) -> usize {
    1 + content[..at.min(content.len())].iter().filter(|b| **b == b'\n').count()
}

/// Checks CDB list lines as Wazuh's API does: `key:value`, where a key is either quoted (word
/// characters, `-`, `:` and spaces, at least one) or bare (no `:`, `"` or white space, at least
/// one character), and a value is either quoted (word characters, `-`, `:` and spaces) or bare
/// (no `:` or `"`, possibly empty).
fn check_list(text: &str, source: Source) -> Result<(), Refused> {
    // The file's final newline ends its last line; it does not start an empty one.
    let text = text.strip_suffix('\n').unwrap_or(text);
    let good = match source {
        Source::Api => list_line,
        Source::Disk => compiled_line,
    };
    for (i, line) in text.split('\n').enumerate() {
        if !good(line.strip_suffix('\r').unwrap_or(line)) {
            return Err(Refused::List { line: i + 1 });
        }
    }
    Ok(())
}

/// A line analysisd compiles into a CDB entry (or skips, being blank): a key (quoted, or text
/// without a quote) before the first `:` that follows it.
fn compiled_line(line: &str) -> bool {
    if line.trim().is_empty() {
        return true;
    }
    match line.strip_prefix('"') {
        Some(quoted) => quoted.find('"').is_some_and(|end| end > 0 && quoted[end + 1..].starts_with(':')),
        None => line.find(':').is_some_and(|colon| colon > 0 && !line[..colon].contains('"')),
    }
}

fn quotable(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '-' || c == ':' || c == ' '
}

fn list_line(line: &str) -> bool {
    let rest = if let Some(quoted) = line.strip_prefix('"') {
        let Some(end) = quoted.find('"') else { return false };
        let key = &quoted[..end];
        if key.is_empty() || !key.chars().all(quotable) {
            return false;
        }
        &quoted[end + 1..]
    } else {
        let end = line.find(':').unwrap_or(line.len());
        let key = &line[..end];
        if key.is_empty() || key.chars().any(|c| c == '"' || c.is_whitespace()) {
            return false;
        }
        &line[end..]
    };
    let Some(value) = rest.strip_prefix(':') else { return false };
    match value.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"').is_some_and(|v| v.chars().all(quotable)),
        None => !value.contains([':', '"']),
    }
}

/// A cursor over the text that knows its line.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
    line: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.at..]
    }

    fn error(&self, why: impl Into<String>) -> Refused {
        Refused::Xml { line: self.line, why: why.into() }
    }

    /// Moves `n` bytes on (a char boundary), counting lines.
    fn advance(&mut self, n: usize) {
        let end = (self.at + n).min(self.text.len());
        self.line += self.text[self.at..end].bytes().filter(|b| *b == b'\n').count();
        self.at = end;
    }

    /// Moves past the next `pat`, or fails with `why`.
    fn past(&mut self, pat: &str, why: &str) -> Result<(), Refused> {
        match self.rest().find(pat) {
            Some(i) => {
                self.advance(i + pat.len());
                Ok(())
            }
            None => Err(self.error(why)),
        }
    }

    fn skip_space(&mut self) {
        let n = self.rest().len() - self.rest().trim_start().len();
        self.advance(n);
    }

    /// An XML name (element or attribute).
    fn name(&mut self) -> Option<&'a str> {
        let rest = self.rest();
        let mut chars = rest.char_indices();
        chars.next().filter(|(_, c)| c.is_alphabetic() || *c == '_' || *c == ':')?;
        let end =
            chars.find(|(_, c)| !(c.is_alphanumeric() || "_:.-".contains(*c))).map(|(i, _)| i).unwrap_or(rest.len());
        let name = &rest[..end];
        self.advance(end);
        Some(name)
    }
}

/// Checks an XML fragment as analysisd reads rule and decoder files.
fn check_xml(text: &str) -> Result<(), Refused> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut c = Cursor { text, at: 0, line: 1 };
    // An XML declaration, only first.
    if c.rest().starts_with("<?xml") {
        c.past("?>", "unterminated XML declaration")?;
    }
    let mut open: Vec<(&str, usize)> = Vec::new();
    while !c.rest().is_empty() {
        let Some(lt) = c.rest().find('<') else {
            if open.is_empty() && !c.rest().trim().is_empty() {
                c.skip_space();
                return Err(c.error("text outside any element"));
            }
            break;
        };
        let before = &c.rest()[..lt];
        if open.is_empty() && !before.trim().is_empty() {
            c.skip_space();
            return Err(c.error("text outside any element"));
        }
        // analysisd's reader takes `\<` (an odd number of backslashes before it) as text.
        let backslashes = before.len() - before.trim_end_matches('\\').len();
        if !open.is_empty() && backslashes % 2 == 1 {
            c.advance(lt + 1);
            continue;
        }
        c.advance(lt);
        let rest = c.rest();
        if rest.starts_with("<!--") {
            // analysisd (and Wazuh's API) take "--" inside a comment.
            c.advance(4);
            c.past("-->", "unterminated comment")?;
        } else if rest.starts_with("<![CDATA[") {
            if open.is_empty() {
                return Err(c.error("a CDATA section outside any element"));
            }
            c.advance(9);
            c.past("]]>", "unterminated CDATA section")?;
        } else if let Some(declaration) = rest.strip_prefix("<!") {
            let word: String = declaration.chars().take_while(|ch| ch.is_ascii_alphabetic()).collect();
            if ["DOCTYPE", "ENTITY", "ELEMENT", "ATTLIST", "NOTATION"].contains(&word.to_ascii_uppercase().as_str()) {
                return Err(Refused::Dtd { line: c.line });
            }
            return Err(c.error("'<!' that starts no comment or CDATA section"));
        } else if rest.starts_with("<?") {
            return Err(c.error("a processing instruction after the start of the file"));
        } else if rest.starts_with("</") {
            c.advance(2);
            let Some(name) = c.name() else { return Err(c.error("a closing tag without a name")) };
            c.skip_space();
            if !c.rest().starts_with('>') {
                return Err(c.error(format!("closing tag </{name}> not ended by '>'")));
            }
            c.advance(1);
            match open.pop() {
                Some((top, _)) if top == name => {}
                Some((top, line)) => {
                    return Err(c.error(format!("</{name}> closes <{top}> (opened on line {line})")));
                }
                None => return Err(c.error(format!("</{name}> closes nothing"))),
            }
        } else {
            c.advance(1);
            let line = c.line;
            let Some(name) = c.name() else { return Err(c.error("'<' that starts no tag (write &lt;)")) };
            let mut attributes: Vec<&str> = Vec::new();
            loop {
                let spaced = c.rest().starts_with(|ch: char| ch.is_whitespace());
                c.skip_space();
                let rest = c.rest();
                if rest.starts_with("/>") {
                    c.advance(2);
                    break;
                }
                if rest.starts_with('>') {
                    c.advance(1);
                    if open.len() >= MAX_DEPTH {
                        return Err(c.error(format!("elements nested deeper than {MAX_DEPTH}")));
                    }
                    open.push((name, line));
                    break;
                }
                if rest.is_empty() {
                    return Err(Refused::Xml { line, why: format!("unterminated tag <{name}") });
                }
                if !spaced {
                    return Err(c.error(format!("in <{name}>: attributes are separated by white space")));
                }
                let Some(attribute) = c.name() else {
                    return Err(c.error(format!("in <{name}>: an attribute without a name")));
                };
                if attributes.contains(&attribute) {
                    return Err(c.error(format!("in <{name}>: attribute {attribute} given twice")));
                }
                attributes.push(attribute);
                c.skip_space();
                if !c.rest().starts_with('=') {
                    return Err(c.error(format!("in <{name}>: attribute {attribute} without '=\"value\"'")));
                }
                c.advance(1);
                c.skip_space();
                let Some(quote) = c.rest().chars().next().filter(|q| *q == '"' || *q == '\'') else {
                    return Err(c.error(format!("in <{name}>: the value of {attribute} is not quoted")));
                };
                c.advance(1);
                let Some(end) = c.rest().find(quote) else {
                    return Err(c.error(format!("in <{name}>: the value of {attribute} is not closed")));
                };
                if let Some(lt) = c.rest()[..end].find('<') {
                    c.advance(lt);
                    return Err(c.error(format!("in <{name}>: '<' in the value of {attribute}")));
                }
                c.advance(end + 1);
            }
        }
    }
    if let Some((name, line)) = open.last() {
        return Err(Refused::Xml { line: *line, why: format!("<{name}> is never closed") });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xml(text: &str) -> Result<(), Refused> {
        check(Kind::Xml, text.as_bytes())
    }

    fn check(kind: Kind, content: &[u8]) -> Result<(), Refused> {
        super::check(kind, content, Source::Api)
    }

    #[test]
    fn wazuh_shaped_rule_and_decoder_files_pass() {
        let rules = r#"<!-- Local rules -- with a double dash, as Wazuh's own files have -->
<group name="local,syslog,sshd,">
  <rule id="100001" level="5">
    <if_sid>5716</if_sid>
    <srcip>1.1.1.1</srcip>
    <description>sshd: authentication failed from IP 1.1.1.1 & more.</description>
    <match type="pcre2">^a<b</match>
    <group>authentication_failed,pci_dss_10.2.4,</group>
  </rule>
</group>
<group name='second'><rule id="100002" level="0" noalert="1"/></group>
"#;
        // '<' inside text must be a tag; the line above has one, so it is refused...
        assert!(xml(rules).is_err());
        // ...and written as Wazuh's files write it, it passes.
        assert_eq!(xml(&rules.replace("^a<b", "^a&lt;b")), Ok(()));
        let decoder =
            "<?xml version=\"1.0\"?>\n<decoder name=\"x\">\n  <prematch><![CDATA[a<b]]></prematch>\n</decoder>\n";
        assert_eq!(xml(decoder), Ok(()));
        assert_eq!(xml("\u{feff}<a/>"), Ok(()));
        // As analysisd reads them: an escaped '<' in text, a file of comments only.
        assert_eq!(xml("<prematch>^20\\d\\<;></prematch>\n<regex>a\\<\\w+\\></regex>"), Ok(()));
        assert!(xml("<regex>a\\\\<b</regex>").is_err(), "an escaped backslash escapes nothing");
        assert_eq!(xml("<!-- <rule id=\"1\"/> -->\n"), Ok(()));
    }

    #[test]
    fn malformed_xml_is_refused_with_its_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("<group name=\"g\">\n<rule id=\"1\">\n</group>\n", 3, "closes <rule>"),
            ("<group>\n  <rule id=\"1\" level=\"3\">\n", 2, "never closed"),
            ("<group name=\"g\"\n", 1, "unterminated tag"),
            ("<a/>\n</b>", 2, "closes nothing"),
            ("<a b=c/>", 1, "not quoted"),
            ("<a b=\"1\" b=\"2\"/>", 1, "twice"),
            ("<a b=\"1\"c=\"2\"/>", 1, "white space"),
            ("<a>\n<!-- x", 2, "unterminated comment"),
            ("hello <a/>", 1, "outside any element"),
            ("<a/>\n\naaaa", 3, "outside any element"),
            ("<a/><?pi x?>", 1, "processing instruction"),
            ("<a>< b</a>", 1, "starts no tag"),
            ("", 0, ""),
        ];
        for (text, line, words) in cases {
            match xml(text) {
                Err(Refused::Xml { line: l, why }) => {
                    assert_eq!((l, why.contains(words)), (*line, true), "{text:?}: {why}");
                }
                Err(Refused::Empty) => assert!(text.is_empty()),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn document_types_and_entities_are_refused() {
        let xxe = "<?xml version=\"1.0\"?>\n<!DOCTYPE d [ <!ENTITY x SYSTEM \"file:///etc/shadow\"> ]>\n<decoder name=\"&x;\"/>";
        assert_eq!(xml(xxe), Err(Refused::Dtd { line: 2 }));
        assert_eq!(xml("<a>\n<!ENTITY lol \"lol\">\n</a>"), Err(Refused::Dtd { line: 2 }));
        assert_eq!(xml("<!doctype a><a/>"), Err(Refused::Dtd { line: 1 }));
    }

    #[test]
    fn sizes_text_and_nul_bytes() {
        let big = vec![b'a'; MAX_XML_FILE + 1];
        assert_eq!(check(Kind::Xml, &big), Err(Refused::TooLarge { size: MAX_XML_FILE + 1, max: MAX_XML_FILE }));
        // Ten megabytes of "aaaa" named .xml: too large, and text outside any element anyway.
        assert!(matches!(check(Kind::Xml, &vec![b'a'; 10 << 20]), Err(Refused::TooLarge { .. })));
        assert!(matches!(check(Kind::Xml, &vec![b'a'; 1000]), Err(Refused::Xml { line: 1, .. })));
        assert_eq!(check(Kind::Xml, b"<a>\n\xff</a>"), Err(Refused::NotText { line: 2 }));
        assert_eq!(check(Kind::List, b"a:b\n\nc:d"), Err(Refused::List { line: 2 }));
        assert_eq!(check(Kind::List, b"a:b\nc\0:d"), Err(Refused::Nul { line: 2 }));
        assert_eq!(check(Kind::Other, &[0u8; 100]), Ok(()));
        assert!(check(Kind::Other, &vec![0u8; MAX_OTHER_FILE + 1]).is_err());
    }

    #[test]
    fn cdb_lines_follow_wazuhs_definition() {
        // Wazuh's own examples, then more.
        for good in [
            "test_key:test_value",
            "\"test:key\":test_value",
            "\"test:key\":\"test:value\"",
            "key:",
            "10.0.0.1:",
            "key:value with spaces",
            "audit-wazuh-w:write",
            "ключ:значение",
        ] {
            assert!(list_line(good), "{good}");
        }
        for bad in [
            "\"test:key\":test:value",
            "test:key:test_value",
            "",
            "novalue",
            ":value",
            "key with space:v",
            "\"\":v",
            "\"k\"x:v",
            "k:\"v",
            "\"k/ey\":v",
        ] {
            assert!(!list_line(bad), "{bad}");
        }
        assert_eq!(check(Kind::List, b"a:b\r\nc:d\n"), Ok(()));
        assert_eq!(check(Kind::List, b"a:b\nc:d"), Ok(()));
        assert_eq!(check(Kind::List, b"a:b\nbad line\n"), Err(Refused::List { line: 2 }));
        assert_eq!(check(Kind::List, b""), Err(Refused::Empty));
        assert_eq!(check(Kind::List, b"\n"), Err(Refused::List { line: 1 }));
    }

    #[test]
    fn lists_found_on_disk_are_read_as_analysisd_compiles_them() {
        let disk = |text: &str| check_path("etc/lists/x", text.as_bytes());
        let wazuh = "TEMPLATE:# AWS Cloudtrail event names - https://example.com/ used as reference\nAttachLoadBalancers:Autoscaling\n";
        assert_eq!(disk(wazuh), Ok(()));
        assert_eq!(check(Kind::List, wazuh.as_bytes()), Err(Refused::List { line: 1 }), "Wazuh's API refuses it");
        assert_eq!(disk("a:b\n\n\"k:1\":v:w\n"), Ok(()));
        assert_eq!(disk("a:b\nno key here\n"), Err(Refused::List { line: 2 }));
        assert_eq!(disk(":v\n"), Err(Refused::List { line: 1 }));
        assert_eq!(disk("\"open:v\n"), Err(Refused::List { line: 1 }));
        assert_eq!(disk(""), Err(Refused::Empty));
    }

    #[test]
    fn kinds_follow_the_path() {
        assert_eq!(kind_of("etc/rules/local_rules.xml"), Some(Kind::Xml));
        assert_eq!(kind_of("etc/decoders/sub/d.xml"), Some(Kind::Xml));
        assert_eq!(kind_of("etc/rules/README"), Some(Kind::Other));
        assert_eq!(kind_of("etc/lists/amazon/aws-eventnames"), Some(Kind::List));
        assert_eq!(kind_of("etc/shared/default/agent.conf"), None);
        assert_eq!(kind_of("etc/rulesx/a.xml"), None);
        assert_eq!(check_path("etc/shared/g/agent.conf", b"anything"), Ok(()));
    }
}
