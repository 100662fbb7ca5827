//! When a new revision may start its run: the rollout queue (a cap on concurrent analyses,
//! cluster-wide and per namespace, served in detection order) and freeze windows (a schedule in
//! UTC and dated ranges). A shared ConfigMap changed at once would otherwise start every canary
//! that mounts it together, and a release merged on a Friday evening would roll out unattended.
//! Pure: the controller reads the caches and the clock, these functions decide.

use std::collections::BTreeMap;

use chrono::{
    DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Timelike, Utc, Weekday,
};

/// One window of a schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Window {
    /// On the given weekdays (Monday = 0), from `start` to `end` seconds after midnight UTC; an
    /// `end` not after `start` runs over midnight into the next day.
    Weekly {
        days: [bool; 7],
        start: u32,
        end: u32,
        text: String,
    },
    /// From one instant to another (the end excluded).
    Range {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        text: String,
    },
}

const DAY: u32 = 24 * 3600;

impl Window {
    /// The line it was read from, to name it in messages.
    pub fn text(&self) -> &str {
        match self {
            Window::Weekly { text, .. } | Window::Range { text, .. } => text,
        }
    }

    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        match self {
            Window::Range { from, to, .. } => *from <= t && t < *to,
            Window::Weekly {
                days, start, end, ..
            } => {
                let secs = t.num_seconds_from_midnight();
                let today = t.weekday().num_days_from_monday() as usize;
                let yesterday = (today + 6) % 7;
                if end > start {
                    days[today] && *start <= secs && secs < *end
                } else {
                    // Over midnight: the evening of a listed day, or the morning after one.
                    (days[today] && secs >= *start) || (days[yesterday] && secs < *end)
                }
            }
        }
    }

    /// The instants after `t` (within about eight days for weekly windows) where being inside
    /// this window can change.
    fn edges_after(&self, t: DateTime<Utc>, out: &mut Vec<DateTime<Utc>>) {
        match self {
            Window::Range { from, to, .. } => {
                out.extend([*from, *to].into_iter().filter(|e| *e > t))
            }
            Window::Weekly {
                days, start, end, ..
            } => {
                let midnight = Utc.from_utc_datetime(&t.date_naive().and_time(NaiveTime::MIN));
                for d in -1..=8i64 {
                    let day = midnight + Duration::days(d);
                    if !days[day.weekday().num_days_from_monday() as usize] {
                        continue;
                    }
                    let s = day + Duration::seconds(i64::from(*start));
                    let mut e = day + Duration::seconds(i64::from(*end));
                    if end <= start {
                        e += Duration::days(1);
                    }
                    out.extend([s, e].into_iter().filter(|x| *x > t));
                }
            }
        }
    }
}

/// What a run in progress does when a freeze begins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InProgress {
    /// It finishes (the default): a freeze stops new runs only.
    #[default]
    Finish,
    /// It holds where it is (traffic unchanged) until the freeze ends.
    Pause,
}

/// The schedule of a freeze ConfigMap: `allow` windows (a run may start only inside one; none
/// means always) and `freeze` windows (no run starts inside one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    pub allow: Vec<Window>,
    pub freeze: Vec<Window>,
    pub in_progress: InProgress,
}

/// Why nothing may start now, and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Freeze {
    /// Names the window or annotation that freezes.
    pub why: String,
    /// When the schedule next lets a run start; `None` when no end is known (an annotation, or
    /// no opening within the coming week).
    pub until: Option<DateTime<Utc>>,
    pub in_progress: InProgress,
}

/// The keys of the freeze ConfigMap.
pub const KEY_ALLOW: &str = "allow";
pub const KEY_FREEZE: &str = "freeze";
pub const KEY_IN_PROGRESS: &str = "inProgress";

/// A line of the freeze ConfigMap that cannot be read; the text names the key, the line and the
/// fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleError(pub String);

impl std::fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reads a freeze ConfigMap's data. Each of `allow` and `freeze` holds one window per line (`#`
/// starts a comment):
/// - `Mon-Fri 09:00-17:00`, `Sat,Sun 00:00-24:00`, `* 22:00-06:00` (weekdays, `*` for every day;
///   times `HH:MM` or `HH:MM:SS` in UTC; an end not after the start runs over midnight);
/// - `2026-12-24/2026-12-26` (whole days in UTC, both included);
/// - `2026-12-24T18:00:00Z/2026-12-27T06:00:00Z` (RFC 3339 instants, the end excluded).
///
/// `inProgress` is `finish` (the default) or `pause`.
pub fn parse_schedule(data: &BTreeMap<String, String>) -> Result<Schedule, ScheduleError> {
    let mut s = Schedule::default();
    for key in data.keys() {
        if ![KEY_ALLOW, KEY_FREEZE, KEY_IN_PROGRESS].contains(&key.as_str()) {
            return Err(ScheduleError(format!(
                "unknown key {key:?}; the keys are {KEY_ALLOW}, {KEY_FREEZE} and {KEY_IN_PROGRESS}"
            )));
        }
    }
    for (key, list) in [(KEY_ALLOW, &mut s.allow), (KEY_FREEZE, &mut s.freeze)] {
        let Some(text) = data.get(key) else { continue };
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let w = parse_window(line)
                .map_err(|e| ScheduleError(format!("{key} line {}: {line:?}: {e}", i + 1)))?;
            list.push(w);
        }
    }
    s.in_progress = match data.get(KEY_IN_PROGRESS).map(|v| v.trim()) {
        None | Some("" | "finish") => InProgress::Finish,
        Some("pause") => InProgress::Pause,
        Some(v) => {
            return Err(ScheduleError(format!(
                "{KEY_IN_PROGRESS}: {v:?} is neither \"finish\" nor \"pause\""
            )));
        }
    };
    Ok(s)
}

fn parse_window(line: &str) -> Result<Window, String> {
    let text = line.to_string();
    if let Some((a, b)) = line.split_once('/') {
        let (a, b) = (a.trim(), b.trim());
        let (from, to) = if let (Ok(a), Ok(b)) = (
            NaiveDate::parse_from_str(a, "%Y-%m-%d"),
            NaiveDate::parse_from_str(b, "%Y-%m-%d"),
        ) {
            let start = |d: NaiveDate| Utc.from_utc_datetime(&d.and_time(NaiveTime::MIN));
            (start(a), start(b) + Duration::days(1))
        } else {
            let instant = |s: &str| {
                DateTime::parse_from_rfc3339(s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| format!("{s:?} is neither a date (2026-12-24) nor an RFC 3339 time (2026-12-24T18:00:00Z)"))
            };
            (instant(a)?, instant(b)?)
        };
        if to <= from {
            return Err("the range ends before it starts".into());
        }
        return Ok(Window::Range { from, to, text });
    }
    let (days, times) = line
        .split_once(char::is_whitespace)
        .ok_or("expected `<days> HH:MM-HH:MM` or `<from>/<to>`")?;
    let days = parse_days(days.trim())?;
    let (a, b) = times
        .trim()
        .split_once('-')
        .ok_or("expected a time range HH:MM-HH:MM")?;
    let start = parse_time(a.trim())?;
    let end = parse_time(b.trim())?;
    if start >= DAY {
        return Err("a window cannot start at 24:00".into());
    }
    Ok(Window::Weekly {
        days,
        start,
        end: if end == DAY && start == 0 {
            DAY
        } else {
            end % DAY
        },
        text,
    })
}

fn weekday(s: &str) -> Result<usize, String> {
    s.parse::<Weekday>()
        .map(|d| d.num_days_from_monday() as usize)
        .map_err(|_| format!("{s:?} is not a weekday (Mon, Tue, ... Sun)"))
}

fn parse_days(s: &str) -> Result<[bool; 7], String> {
    let mut days = [false; 7];
    if s == "*" {
        return Ok([true; 7]);
    }
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (weekday(a.trim())?, weekday(b.trim())?);
                let mut d = a;
                loop {
                    days[d] = true;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => days[weekday(part.trim())?] = true,
        }
    }
    Ok(days)
}

fn parse_time(s: &str) -> Result<u32, String> {
    let bad = || format!("{s:?} is not a time HH:MM or HH:MM:SS (00:00 to 24:00)");
    let parts: Vec<&str> = s.split(':').collect();
    if !(2..=3).contains(&parts.len()) {
        return Err(bad());
    }
    let mut n = [0u32; 3];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return Err(bad());
        }
        n[i] = p.parse().map_err(|_| bad())?;
    }
    let secs = n[0] * 3600 + n[1] * 60 + n[2];
    if n[1] > 59 || n[2] > 59 || secs > DAY {
        return Err(bad());
    }
    Ok(secs)
}

impl Schedule {
    /// What holds a start at `t`, if anything.
    fn closed_by(&self, t: DateTime<Utc>) -> Option<String> {
        if let Some(w) = self.freeze.iter().find(|w| w.contains(t)) {
            return Some(format!("freeze window {:?}", w.text()));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|w| w.contains(t)) {
            let list: Vec<&str> = self.allow.iter().map(|w| w.text()).collect();
            return Some(format!("outside the allowed windows {list:?}"));
        }
        None
    }

    /// Whether a run may start at `t`; when not, why and until when.
    pub fn frozen_at(&self, t: DateTime<Utc>) -> Option<Freeze> {
        let why = self.closed_by(t)?;
        let mut edges = Vec::new();
        for w in self.allow.iter().chain(&self.freeze) {
            w.edges_after(t, &mut edges);
        }
        edges.sort();
        edges.dedup();
        let until = edges.into_iter().find(|e| self.closed_by(*e).is_none());
        Some(Freeze {
            why,
            until,
            in_progress: self.in_progress,
        })
    }
}

/// The annotation that freezes a Canary or every Canary of a Namespace.
pub const FREEZE_ANNOTATION: &str = "serin.dev/freeze";

/// Reads a `serin.dev/freeze` annotation: absent, `""` or `"false"` freeze nothing; `"pause"`
/// also holds a run in progress; any other value (`"true"`, or a reason such as
/// `"incident 4711"`) freezes new runs and is shown as the reason.
pub fn annotation_freeze(value: Option<&str>, on: &str) -> Option<Freeze> {
    let v = value?.trim();
    if v.is_empty() || v.eq_ignore_ascii_case("false") {
        return None;
    }
    let (in_progress, why) = if v == "pause" {
        (
            InProgress::Pause,
            format!("{FREEZE_ANNOTATION}=pause on {on}"),
        )
    } else {
        (
            InProgress::Finish,
            format!("{FREEZE_ANNOTATION}={v:?} on {on}"),
        )
    };
    Some(Freeze {
        why,
        until: None,
        in_progress,
    })
}

/// The rollout queue's limits: `None` is no limit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    pub cluster: Option<u32>,
    /// Per namespace; a namespace absent here has `default_namespace`.
    pub namespaces: BTreeMap<String, u32>,
    pub default_namespace: Option<u32>,
}

impl Caps {
    pub fn namespace(&self, ns: &str) -> Option<u32> {
        self.namespaces.get(ns).copied().or(self.default_namespace)
    }

    pub fn is_unlimited(&self) -> bool {
        self.cluster.is_none() && self.namespaces.is_empty() && self.default_namespace.is_none()
    }
}

/// A new revision waiting to start, in the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    /// Identifies the Canary (its uid).
    pub key: String,
    pub namespace: String,
    /// When its new revision was detected: the queue's order.
    pub since: DateTime<Utc>,
}

/// Where a waiting revision stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// It may start now.
    Start,
    /// It waits: `position` among the `of` that wait (1 is next), and which limit holds it.
    Queued {
        position: usize,
        of: usize,
        limit: Limit,
    },
}

/// The limit that holds a queued revision; `running` counts the runs going and those admitted
/// ahead of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Limit {
    /// The cluster-wide cap (and how many run).
    Cluster { cap: u32, running: usize },
    /// Its namespace's cap.
    Namespace { cap: u32, running: usize },
}

/// Serves the queue in detection order (ties by key): each waiting revision starts if the runs
/// already going plus those admitted ahead of it leave room under both caps; one held only by its
/// namespace's cap does not hold up others. `running` lists the namespace of each run in
/// progress. Returns the admission of every waiting revision, in `waiting`'s order.
pub fn admit(running: &[&str], waiting: &[Waiting], caps: &Caps) -> Vec<Admission> {
    let mut order: Vec<usize> = (0..waiting.len()).collect();
    order.sort_by(|a, b| {
        let (a, b) = (&waiting[*a], &waiting[*b]);
        (a.since, &a.key).cmp(&(b.since, &b.key))
    });
    let mut total = running.len();
    let mut per_ns: BTreeMap<&str, usize> = BTreeMap::new();
    for ns in running {
        *per_ns.entry(ns).or_default() += 1;
    }
    let mut out = vec![Admission::Start; waiting.len()];
    let mut queued = Vec::new();
    for i in order {
        let w = &waiting[i];
        let in_ns = per_ns.get(w.namespace.as_str()).copied().unwrap_or(0);
        let cluster_full = caps.cluster.is_some_and(|c| total >= c as usize);
        let ns_full = caps
            .namespace(&w.namespace)
            .is_some_and(|c| in_ns >= c as usize);
        if cluster_full || ns_full {
            let limit = if ns_full {
                Limit::Namespace {
                    cap: caps.namespace(&w.namespace).unwrap_or(0),
                    running: in_ns,
                }
            } else {
                Limit::Cluster {
                    cap: caps.cluster.unwrap_or(0),
                    running: total,
                }
            };
            queued.push((i, limit));
            continue;
        }
        total += 1;
        *per_ns.entry(w.namespace.as_str()).or_default() += 1;
    }
    let of = queued.len();
    for (position, (i, limit)) in queued.into_iter().enumerate() {
        out[i] = Admission::Queued {
            position: position + 1,
            of,
            limit,
        };
    }
    out
}

/// The text of a queued revision's condition and Event.
pub fn queued_message(target: &str, position: usize, of: usize, limit: &Limit) -> String {
    let why = match limit {
        Limit::Cluster { cap, running } => {
            format!("{running} of {cap} rollouts run cluster-wide (--max-concurrent-rollouts)")
        }
        Limit::Namespace { cap, running } => format!(
            "{running} of {cap} rollouts run in this namespace (serin.dev/max-concurrent-rollouts)"
        ),
    };
    format!(
        "New revision of {target} queued at position {position} of {of}: {why}; it starts when a slot frees, in detection order"
    )
}

/// The text of a frozen revision's condition and Event.
pub fn frozen_message(target: &str, f: &Freeze) -> String {
    let until = match f.until {
        Some(t) => format!(
            "until {}",
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        None => "until it is lifted".to_string(),
    };
    format!(
        "New revision of {target} waits: frozen by {} {until}",
        f.why
    )
}

/// The text when a run in progress is held by a freeze with `inProgress: pause`.
pub fn paused_message(target: &str, f: &Freeze) -> String {
    let until = match f.until {
        Some(t) => format!(
            "until {}",
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        None => "until it is lifted".to_string(),
    };
    format!(
        "Analysis of {target} paused: frozen by {} {until}; traffic stays where it is",
        f.why
    )
}

#[cfg(test)]
mod tests;
