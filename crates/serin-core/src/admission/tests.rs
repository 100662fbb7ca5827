use super::*;
use proptest::prelude::*;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn schedule(allow: &str, freeze: &str) -> Schedule {
    let mut data = BTreeMap::new();
    if !allow.is_empty() {
        data.insert(KEY_ALLOW.to_string(), allow.to_string());
    }
    if !freeze.is_empty() {
        data.insert(KEY_FREEZE.to_string(), freeze.to_string());
    }
    parse_schedule(&data).unwrap()
}

// 2026-12-04 is a Friday.
#[test]
fn windows_open_and_close_where_they_say() {
    let cases: &[(&str, &str, &str, Option<&str>)] = &[
        // (allow, freeze, at, frozen until)
        ("", "", "2026-12-04T12:00:00Z", None),
        ("Mon-Fri 09:00-17:00", "", "2026-12-04T12:00:00Z", None),
        (
            "Mon-Fri 09:00-17:00",
            "",
            "2026-12-04T17:00:00Z",
            Some("2026-12-07T09:00:00Z"),
        ),
        (
            "Mon-Fri 09:00-17:00",
            "",
            "2026-12-04T08:59:59Z",
            Some("2026-12-04T09:00:00Z"),
        ),
        (
            "Mon-Fri 09:00-17:00",
            "",
            "2026-12-05T12:00:00Z",
            Some("2026-12-07T09:00:00Z"),
        ),
        (
            "",
            "Fri 15:00-24:00",
            "2026-12-04T16:00:00Z",
            Some("2026-12-05T00:00:00Z"),
        ),
        ("", "Fri 15:00-24:00", "2026-12-04T14:59:59Z", None),
        // Over midnight: Friday 22:00 to Saturday 06:00.
        (
            "",
            "Fri 22:00-06:00",
            "2026-12-05T05:00:00Z",
            Some("2026-12-05T06:00:00Z"),
        ),
        ("", "Fri 22:00-06:00", "2026-12-04T05:00:00Z", None),
        ("* 00:00-24:00", "", "2026-12-04T05:00:00Z", None),
        // Whole days, both included.
        (
            "",
            "2026-12-24/2026-12-26",
            "2026-12-26T23:59:59Z",
            Some("2026-12-27T00:00:00Z"),
        ),
        ("", "2026-12-24/2026-12-26", "2026-12-27T00:00:00Z", None),
        (
            "",
            "2026-12-04T12:00:00Z/2026-12-04T12:00:08Z",
            "2026-12-04T12:00:03Z",
            Some("2026-12-04T12:00:08Z"),
        ),
        // A freeze that ends outside the allowed windows waits for the next allowed one.
        (
            "Mon-Fri 09:00-17:00",
            "2026-12-04/2026-12-04",
            "2026-12-04T10:00:00Z",
            Some("2026-12-07T09:00:00Z"),
        ),
        // Seconds.
        (
            "* 12:00:10-13:00",
            "",
            "2026-12-04T12:00:03Z",
            Some("2026-12-04T12:00:10Z"),
        ),
    ];
    for (i, (allow, freeze, t, until)) in cases.iter().enumerate() {
        let s = schedule(allow, freeze);
        let got = s.frozen_at(at(t));
        match until {
            None => assert_eq!(got, None, "case {i}"),
            Some(u) => {
                let f = got.unwrap_or_else(|| panic!("case {i}: not frozen"));
                assert_eq!(f.until, Some(at(u)), "case {i}: {f:?}");
            }
        }
    }
    // "* 00:00-24:00" as a freeze never opens within the week.
    let f = schedule("", "* 00:00-24:00")
        .frozen_at(at("2026-12-04T05:00:00Z"))
        .unwrap();
    assert_eq!(f.until, None);
    assert!(f.why.contains("* 00:00-24:00"), "{}", f.why);
}

#[test]
fn bad_lines_name_the_key_the_line_and_the_form() {
    let cases = [
        (KEY_FREEZE, "Fry 15:00-24:00", "freeze line 1"),
        (KEY_FREEZE, "# comment\nMon 25:00-26:00", "freeze line 2"),
        (KEY_ALLOW, "2026-12-26/2026-12-24", "ends before it starts"),
        (KEY_ALLOW, "tomorrow/later", "RFC 3339"),
        (KEY_ALLOW, "Mon", "expected"),
        ("freeeze", "", "unknown key"),
        (KEY_IN_PROGRESS, "stop", "neither"),
    ];
    for (key, value, want) in cases {
        let data = BTreeMap::from([(key.to_string(), value.to_string())]);
        let e = parse_schedule(&data).unwrap_err();
        assert!(e.0.contains(want), "{key}={value:?}: {e}");
    }
    let data = BTreeMap::from([
        (
            KEY_FREEZE.to_string(),
            "Sat,Sun 00:00-24:00 # weekends\n\n".to_string(),
        ),
        (KEY_IN_PROGRESS.to_string(), "pause".to_string()),
    ]);
    let s = parse_schedule(&data).unwrap();
    assert_eq!(s.in_progress, InProgress::Pause);
    assert_eq!(s.freeze.len(), 1);
}

#[test]
fn annotations_freeze_unless_empty_or_false() {
    let cases = [
        (None, None),
        (Some(""), None),
        (Some("false"), None),
        (Some("true"), Some(InProgress::Finish)),
        (Some("incident 4711"), Some(InProgress::Finish)),
        (Some("pause"), Some(InProgress::Pause)),
    ];
    for (v, want) in cases {
        let got = annotation_freeze(v, "Canary a.b");
        assert_eq!(got.as_ref().map(|f| f.in_progress), want, "{v:?}");
        if let Some(f) = got {
            assert!(f.why.contains("Canary a.b"), "{}", f.why);
        }
    }
}

fn w(key: &str, ns: &str, secs: i64) -> Waiting {
    Waiting {
        key: key.into(),
        namespace: ns.into(),
        since: at("2026-12-04T12:00:00Z") + Duration::seconds(secs),
    }
}

#[test]
fn the_queue_serves_detection_order_under_both_caps() {
    let caps = Caps {
        cluster: Some(3),
        namespaces: BTreeMap::from([("b".to_string(), 1)]),
        default_namespace: None,
    };
    // One runs in b; a1..a3 and b1 wait, b1 detected first.
    let waiting = [
        w("a3", "a", 3),
        w("a1", "a", 1),
        w("b1", "b", 0),
        w("a2", "a", 2),
    ];
    let got = admit(&["b"], &waiting, &caps);
    assert_eq!(
        got,
        vec![
            Admission::Queued {
                position: 2,
                of: 2,
                limit: Limit::Cluster { cap: 3, running: 3 }
            },
            Admission::Start,
            // b's own cap holds it, but not the others behind it.
            Admission::Queued {
                position: 1,
                of: 2,
                limit: Limit::Namespace { cap: 1, running: 1 }
            },
            Admission::Start,
        ]
    );
    assert!(
        admit(&[], &waiting, &Caps::default())
            .iter()
            .all(|a| *a == Admission::Start)
    );
    let msg = queued_message("podinfo.a", 2, 2, &Limit::Cluster { cap: 3, running: 3 });
    assert!(
        msg.contains("position 2 of 2") && msg.contains("3 of 3"),
        "{msg}"
    );
}

proptest! {
    #[test]
    fn the_queue_never_exceeds_a_cap_nor_lets_a_later_revision_overtake(
        running in proptest::collection::vec(0..3usize, 0..6),
        waiting in proptest::collection::vec((0..3usize, 0..20i64), 0..12),
        cluster in proptest::option::of(0..6u32),
        per_ns in proptest::option::of(0..3u32),
    ) {
        let names = ["a", "b", "c"];
        let running: Vec<&str> = running.iter().map(|i| names[*i]).collect();
        let waiting: Vec<Waiting> = waiting
            .iter()
            .enumerate()
            .map(|(i, (ns, s))| w(&format!("k{i:02}"), names[*ns], *s))
            .collect();
        let caps = Caps { cluster, namespaces: BTreeMap::new(), default_namespace: per_ns };
        let got = admit(&running, &waiting, &caps);
        prop_assert_eq!(got.len(), waiting.len());
        let started: Vec<&Waiting> = waiting.iter().zip(&got).filter(|(_, a)| **a == Admission::Start).map(|(w, _)| w).collect();
        let total = running.len() + started.len();
        if let Some(c) = cluster {
            prop_assert!(started.is_empty() || total <= c as usize);
        }
        for ns in names {
            let n = running.iter().filter(|r| **r == ns).count() + started.iter().filter(|w| w.namespace == ns).count();
            if let Some(c) = per_ns {
                prop_assert!(n <= (c as usize).max(running.iter().filter(|r| **r == ns).count()));
            }
        }
        let mut positions = Vec::new();
        for (q, a) in waiting.iter().zip(&got) {
            if let Admission::Queued { position, of, limit } = a {
                positions.push((q.since, &q.key, *position, *of));
                // A revision held by the cluster cap is not overtaken by a later one.
                if matches!(limit, Limit::Cluster { .. }) {
                    for s in &started {
                        prop_assert!((s.since, &s.key) < (q.since, &q.key));
                    }
                }
                // Work-conserving: something really holds it.
                let in_ns = running.iter().filter(|r| **r == q.namespace).count()
                    + started.iter().filter(|s| s.namespace == q.namespace).count();
                prop_assert!(
                    cluster.is_some_and(|c| total >= c as usize)
                        || per_ns.is_some_and(|c| in_ns >= c as usize)
                );
            }
        }
        positions.sort();
        for (i, (_, _, p, of)) in positions.iter().enumerate() {
            prop_assert_eq!(*p, i + 1);
            prop_assert_eq!(*of, positions.len());
        }
    }

    #[test]
    fn until_is_the_first_open_instant(secs in 0..(14 * 86400i64), h1 in 0..24u32, h2 in 0..24u32) {
        let s = schedule("", &format!("Mon-Fri {h1:02}:00-{h2:02}:30"));
        let t = at("2026-11-30T00:00:00Z") + Duration::seconds(secs);
        if let Some(u) = s.frozen_at(t).and_then(|f| f.until) {
            prop_assert!(u > t);
            prop_assert!(s.frozen_at(u).is_none());
            // Frozen until then (checked at a few points).
            for k in 1..4 {
                let mid = t + (u - t) * k / 4;
                prop_assert!(s.frozen_at(mid).is_some(), "open at {} before {}", mid, u);
            }
        }
    }
}
