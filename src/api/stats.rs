//! `GET /manager/stats[/hourly|/weekly]` and `GET /cluster/{node_id}/stats[...]`: the alert and
//! event totals that Wazuh's analysisd, running beside this node in the same installation
//! directory (the node's data directory), writes under `stats/`. They are read as Wazuh's API reads
//! them: the totals of one day by hour, and the hourly and weekly averages.

use super::*;
use serde_json::{json, Value};
use std::path::Path;

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

/// `GET /manager/stats` (Wazuh's parameters; any other is a 400 naming it).
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct TotalsQuery {
    pretty: Option<bool>,
    #[allow(dead_code)] // Read only to be accepted: every answer is complete.
    wait_for_complete: Option<bool>,
    /// `YYYY-MM-DD` (a full ISO 8601 time is read for its date); today, in this host's time
    /// zone as analysisd names its files, when absent.
    date: Option<String>,
}

/// Why a day's totals cannot be read, with Wazuh's codes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum StatsError {
    /// 1308: analysisd wrote no totals for that day.
    Missing(String),
    /// 1309: a line that is neither an alert nor an hour's totals.
    Damaged(usize),
}

/// The date asked for: `YYYY-MM-DD`, or an ISO 8601 time of which the date is taken.
fn parse_date(text: &str) -> Result<jiff::civil::Date, String> {
    let day = text.split_once('T').map_or(text, |(day, _)| day);
    day.parse::<jiff::civil::Date>().map_err(|e| format!("date: {:?} is not a date (YYYY-MM-DD): {e}", printable(text)))
}

fn printable(text: &str) -> String {
    wazuh_cluster_protocol::agent::enrollment::printable(text).into_owned()
}

/// `stats/totals/<year>/<Mon>/ossec-totals-<DD>.log` under `dir`.
fn totals_file(dir: &Path, date: jiff::civil::Date) -> std::path::PathBuf {
    let month = MONTHS[usize::from(date.month().unsigned_abs()).saturating_sub(1) % 12];
    dir.join("stats/totals")
        .join(date.year().to_string())
        .join(month)
        .join(format!("ossec-totals-{:02}.log", date.day()))
}

/// One day's totals file as Wazuh reads it: `hour-sigid-level-times` lines (the alerts of the
/// hour that follows) and `hour--alerts--events--syscheck--firewall` lines (an hour's totals),
/// one item per hour with that hour's alerts.
pub(super) fn totals(text: &str) -> Result<Vec<Value>, StatsError> {
    let number = |s: &str| s.trim().parse::<i64>().ok();
    let mut alerts = Vec::new();
    let mut hours = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let single: Vec<&str> = line.split('-').collect();
        if single.len() == 4 {
            let (Some(sigid), Some(level), Some(times)) = (number(single[1]), number(single[2]), number(single[3]))
            else {
                return Err(StatsError::Damaged(n + 1));
            };
            alerts.push(json!({ "sigid": sigid, "level": level, "times": times }));
            continue;
        }
        let double: Vec<Option<i64>> = line.split("--").map(number).collect();
        match double.as_slice() {
            [Some(hour), Some(total), Some(events), Some(syscheck), Some(firewall)] => hours.push(json!({
                "hour": hour,
                "alerts": std::mem::take(&mut alerts),
                "totalAlerts": total,
                "events": events,
                "syscheck": syscheck,
                "firewall": firewall,
            })),
            _ => return Err(StatsError::Damaged(n + 1)),
        }
    }
    Ok(hours)
}

/// The 24 numbers and the count in `<dir>/<0..=24>` (a missing or unreadable one is 0, as Wazuh
/// reads them).
fn averages(dir: &Path) -> (Vec<i64>, i64) {
    let read = |i: usize| {
        std::fs::read_to_string(dir.join(i.to_string())).ok().and_then(|t| t.trim().parse::<i64>().ok()).unwrap_or(0)
    };
    ((0..24).map(read).collect(), read(24))
}

fn stats_error(status: StatusCode, code: u16, detail: String, remediation: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({
        "title": status.canonical_reason().unwrap_or("Error"),
        "detail": detail,
        "remediation": remediation,
        "error": code,
    }))
}

/// `GET /manager/stats[?date=YYYY-MM-DD]`: the day's totals, hour by hour.
pub(super) async fn day(node: web::Data<NodeHandle>, query: web::Query<TotalsQuery>) -> HttpResponse {
    let q = query.into_inner();
    let date = match q.date.as_deref() {
        Some(text) => match parse_date(text) {
            Ok(date) => date,
            Err(why) => return agents::bad_request(&why),
        },
        None => jiff::ZonedDateTime::now().date(),
    };
    let path = totals_file(&node.data_dir(), date);
    let read = std::fs::read_to_string(&path).map_err(|_| StatsError::Missing(path.display().to_string()));
    match read.and_then(|text| totals(&text)) {
        Ok(hours) => agents::json_answer(
            &envelope(&hours, "Statistical information for each node was successfully read"),
            q.pretty.unwrap_or(false),
        ),
        Err(StatsError::Missing(_)) => stats_error(
            StatusCode::BAD_REQUEST,
            1308,
            format!("Stats file does not exist: no totals for {date} under stats/totals"),
            "analysisd writes a day's totals in this node's data directory as the day goes by",
        ),
        Err(StatsError::Damaged(line)) => {
            log::warn!("node {}: the totals file of {date} is damaged at line {line}", node.name());
            stats_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                1309,
                format!("Statistics file damaged: the totals of {date}, line {line}"),
                "check the file analysisd wrote under stats/totals",
            )
        }
    }
}

/// `GET /manager/stats/hourly`: the alerts per hour, averaged over the days seen.
pub(super) async fn hourly(node: web::Data<NodeHandle>, query: web::Query<overview::PlainParams>) -> HttpResponse {
    let (averages, interactions) = averages(&node.data_dir().join("stats/hourly-average"));
    let item = json!({ "averages": averages, "interactions": interactions });
    agents::json_answer(
        &envelope(&[item], "Statistical information per hour for each node was successfully read"),
        query.pretty.unwrap_or(false),
    )
}

/// `GET /manager/stats/weekly`: the same for each day of the week.
pub(super) async fn weekly(node: web::Data<NodeHandle>, query: web::Query<overview::PlainParams>) -> HttpResponse {
    let base = node.data_dir().join("stats/weekly-average");
    let items: Vec<Value> = DAYS
        .iter()
        .enumerate()
        .map(|(i, day)| {
            let (hours, interactions) = averages(&base.join(i.to_string()));
            json!({ *day: { "hours": hours, "interactions": interactions } })
        })
        .collect();
    agents::json_answer(
        &envelope(&items, "Statistical information per week for each node was successfully read"),
        query.pretty.unwrap_or(false),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_days_totals_read_as_wazuh_reads_them() {
        let text = "0-5501-3-2\n0-533-7-1\n0--3--120--4--0\n\n1--0--80--0--0\n";
        let hours = totals(text).expect("totals");
        assert_eq!(hours.len(), 2);
        assert_eq!(hours[0]["hour"], 0);
        assert_eq!(
            hours[0]["alerts"],
            json!([{ "sigid": 5501, "level": 3, "times": 2 }, { "sigid": 533, "level": 7, "times": 1 }])
        );
        assert_eq!((hours[0]["totalAlerts"].clone(), hours[0]["events"].clone()), (json!(3), json!(120)));
        assert_eq!(hours[1]["alerts"], json!([]), "an hour's alerts are the lines before it");
        assert_eq!(totals("0--1--2--3\n"), Err(StatsError::Damaged(1)));
        assert_eq!(totals("0-x-3-2\n"), Err(StatsError::Damaged(1)));
        assert_eq!(totals("").map(|h| h.len()), Ok(0));
    }

    #[test]
    fn dates_and_file_names() {
        let date = parse_date("2026-03-07").expect("date");
        assert_eq!(parse_date("2026-03-07T10:00:00Z"), Ok(date));
        assert!(parse_date("2026-13-01").is_err());
        assert!(parse_date("yesterday").is_err());
        let file = totals_file(Path::new("/var/ossec"), date);
        assert_eq!(file, Path::new("/var/ossec/stats/totals/2026/Mar/ossec-totals-07.log"));
    }

    #[test]
    fn missing_averages_are_zero() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("3"), "12\n").expect("write");
        std::fs::write(dir.path().join("24"), "5").expect("write");
        let (avg, n) = averages(dir.path());
        assert_eq!((avg.len(), avg[3], avg[4], n), (24, 12, 0, 5));
    }
}
